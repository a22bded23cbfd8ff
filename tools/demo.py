"""The demo: synthetic RGB-D rooms, then an RGB teacher, the CMX baseline and a PrimKD student, each
evaluated on its last checkpoint.

`bash train.sh config/demo.py` runs this. The three runs are a one-seed grid of tools/ablate.py
(variants rgb_teacher, cmx, primkd, seed = the config's seed), whose cells are the project's own
command lines (train.sh, then val.sh -e last), so the demo shows exactly what a user would run by hand.
Running it again skips finished runs and continues unfinished ones.
"""
import argparse
import time

from config import add_config_args, config_from_args
from engine import ablation
from dataloader.synthetic_rooms import ensure_synthetic_dataset

# (variant, row name, input)
ROWS = (('rgb_teacher', 'RGB teacher', 'RGB'), ('cmx', 'CMX baseline', 'RGB-D'), ('primkd', 'PrimKD student', 'RGB-D'))


def what_the_data_favours(teacher, baseline, primkd):
    """One sentence on what the measured mIoUs (percent) say about depth and the teacher."""
    depth_gain = baseline - teacher   # what depth adds to RGB, both without a teacher
    distillation_gain = primkd - baseline
    if distillation_gain > 0:
        return (f'Distillation helps here: guided by the RGB teacher ({teacher:.1f}), the student ends '
                f'{distillation_gain:.1f} points above the same RGB-D network trained without it.')
    if depth_gain > 0:
        return (f'Depth matters on this data: the RGB-D baseline is {depth_gain:.1f} points above the RGB '
                f'teacher, and distilling the teacher\'s RGB-only view pulls the student towards the '
                f'teacher\'s mistakes ({-distillation_gain:.1f} points below the baseline).')
    return (f'RGB alone does about as well as RGB-D here (teacher {-depth_gain:+.1f} points against the baseline), '
            f'yet distilling it left the student {-distillation_gain:.1f} points below the baseline.')


def results_table(results, seconds, cfg):
    """The demo's summary: one row per run, the PrimKD - baseline difference and what it means."""
    miou = {variant: 100 * results[variant]['miou'] for variant, _, _ in ROWS}
    lines = [f'Demo results on {cfg.dataset_name} ({cfg.num_eval_imgs} test scenes, {cfg.backbone}, last '
             f'checkpoints, seed {cfg.seed}), {seconds:.0f} s in all',
             f'{"model":<18}{"input":<8}{"mIoU":>8}{"pixel acc":>11}']
    for variant, name, modality in ROWS:
        lines.append(f'{name:<18}{modality:<8}{miou[variant]:>7.1f}%{100 * results[variant]["pixel_acc"]:>10.1f}%')
    lines += [f'PrimKD - baseline = {miou["primkd"] - miou["cmx"]:+.1f} mIoU',
              what_the_data_favours(miou['rgb_teacher'], miou['cmx'], miou['primkd']),
              f'(one seed; tools/ablate.py compares variants over several. Chance level: mIoU about '
              f'{100 / cfg.num_classes:.1f}% for {cfg.num_classes} classes.)']
    return '\n'.join(lines)


def main():
    parser = add_config_args(argparse.ArgumentParser(description=__doc__.split('\n')[0]),
                             default='config/demo.py')
    args = parser.parse_args()
    cfg = config_from_args(args, parser)
    start = time.perf_counter()
    try:
        ensure_synthetic_dataset(cfg)
    except FileExistsError as error:
        parser.error(str(error))
    # The grid gives each run its own log_dir under the demo's, and the seed.
    opts = [o for o in args.opts if o.partition('=')[0].strip() not in ('log_dir', 'seed')]
    variants = [variant for variant, _, _ in ROWS]
    try:
        order, cells = ablation.plan_grid(args.config, variants, [cfg.seed], cfg.log_dir, opts)
        ablation.run_grid(cells)
    except ablation.GridError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    except ablation.CellFailed as e:
        parser.exit(e.status, f'{parser.prog}: error: {e}\n')
    ablation.write_report(cells, order, ablation.BUILT_IN_VARIANTS, 'cmx', cfg.log_dir,
                          ablation.grid_record(args.config, opts, [cfg.seed], None, cfg.log_dir))
    results = {variant: result for (variant, _), result in ablation.read_results(cells).items()}
    print('\n' + results_table(results, time.perf_counter() - start, cfg))
    print(f'(runs and figures in {cfg.log_dir})')


if __name__ == '__main__':
    main()
