"""Runs a grid of named variants over seeds and compares them with a reference variant.

    python tools/ablate.py -c config/demo.py --variants cmx primkd kl_only feat_only --seeds 1 2 3
    python tools/ablate.py -c config/nyu_b2.py --variants primkd --teacher pretrained/pre/nyu-rgb.pth

A variant is a mode (teacher or student), train.py flags, config overrides (--opts) and optionally the
variant whose same-seed cell is its teacher. Built in:

    rgb_teacher      teacher mode (the RGB-only SegFormer)
    rgb_teacher_b1   rgb_teacher with backbone=mit_b1
    cmx              student, --distillation_alpha 0 --distillation_beta 0 (the CMX baseline, no teacher)
    primkd           student with the paper's settings (the config's), teacher rgb_teacher
    kl_only          primkd with --distillation_beta 0
    feat_only        primkd with --distillation_alpha 0
    mask_hint        primkd with --mask_single mask_hint
    rgbx_teacher     student with teacher_modality=rgbx, teacher cmx
    wide_teacher     student with teacher_backbone=mit_b1, teacher rgb_teacher_b1
    kl_confident     primkd with distillation_kl_confidence=0.9 (not in the paper: KL only where the
                     teacher's top class probability is at least 0.9)
    kd, cwd, dist    the standard logit distillers in place of PrimKD's KL, without the feature term
                     (compare them with kl_only), each with its paper's weight and temperature
                     (models/distill.py, LOGIT_LOSSES): KD (Hinton, tau 4), CWD (Shu, tau 4, weight 3),
                     DIST (Huang, tau 1)

--variants-file FILE adds variants: a JSON file holding, or a Python file defining VARIANTS as, a dict
name -> {"mode": "teacher" | "student" (default student), "flags": [train.py flags], "opts":
["KEY=VALUE", ...], "teacher": variant name or null}, e.g.

    {"half_kl": {"flags": ["--distillation_alpha", "0.5"], "teacher": "rgb_teacher"}}

A cell is one variant and one seed: a real `bash train.sh CONFIG --mode M ... --resume auto --opts
seed=N log_dir=DIR/<variant>/seed<N>` run, then `bash val.sh CONFIG -e last --mode M --json ...` on
its final checkpoint (never the best one: the validation split is the test split). A student's teacher
is the last checkpoint of its teacher variant's cell of the same seed, or with --teacher PATH that file
for every variant taught by rgb_teacher (then no rgb_teacher cells are trained). Cells run seed by
seed, teachers first; the reference variant (--reference, default cmx) is always part of the grid.

Everything goes under --out DIR (default log/ablate/<config name>/): DIR/<variant>/seed<N>/ is a cell's
log_dir (its run directory is DIR/<variant>/seed<N>/<mode>/) and holds cell.json (what the cell is:
config, flags, opts, seed, resolved config, teacher) and result.json (val.py's figures).
DIR/table.md, DIR/results.json and DIR/curves.png hold the comparison (engine/ablation/report.py): per
variant the mean ± sd over the seeds of the test mIoU of the last checkpoint and of the best epoch on
the test split (the official code's selection; --opts eval_step=1 evaluates every epoch, as there),
best - last, the paired differences to the reference under both with 95% Student-t intervals over
seeds, with --bootstrap also a percentile bootstrap over the test images, the per-class IoU
differences, every cell's learning curve and confusion matrix, the schedule rule, and the commands
that reproduce each cell.

Running the same command again skips finished cells and continues unfinished ones; the same command
with --status says where each cell stands (also while the grid runs) and how much cell time is left. A cell whose
recorded cell.json differs from what the command asks for now is refused, naming the difference;
--rerun-changed deletes such cells and runs them again.

Side by side: --jobs N runs up to N cells at once, each with its own train.sh and val.sh, a student as
soon as its teacher cell has finished; each cell's output then goes to DIR/<variant>/seed<N>/cell.log,
and this tool prints when each cell starts and ends. The cells run the same commands as with --jobs 1.
It is meant for CPU cores: each cell uses OMP_NUM_THREADS threads, so
set N x OMP_NUM_THREADS to at most the cores (unset, a note says so). On GPUs every cell's train.sh takes all visible GPUs: keep
--jobs 1 there. After a failed cell no new cell starts; the running ones finish first.
"""
import argparse
import os
import sys

from config import REPO_ROOT, add_config_args
from dataloader.corruptions import corruption_arg, unique_settings
from engine.ablation import (BUILT_IN_VARIANTS, RGB_TEACHER, CellFailed, GridError, RESULTS_FILE, TABLE_FILE,
                             grid_record,
                             load_variants_file, plan_grid, run_grid, write_report)
from engine.ablation.bootstrap import image_hists
from engine.ablation.progress import status_table
from engine.ablation.robustness_grid import ROBUSTNESS_FILES, write_robustness


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(parser)
    parser.add_argument('--variants', nargs='+', default=['cmx', 'primkd'], metavar='NAME',
                        help='variants to compare (default: %(default)s)')
    parser.add_argument('--seeds', nargs='+', type=int, default=[1, 2, 3], metavar='N',
                        help='seeds, one cell per variant and seed (default: %(default)s)')
    parser.add_argument('--teacher', metavar='PATH',
                        help=f'teacher checkpoint for the variants taught by {RGB_TEACHER} (then no '
                             f'{RGB_TEACHER} cells are trained)')
    parser.add_argument('--out', metavar='DIR', help='output folder (default: log/ablate/<config name>/)')
    parser.add_argument('--reference', default='cmx', metavar='NAME',
                        help='the variant the others are compared with (default: %(default)s)')
    parser.add_argument('--variants-file', metavar='FILE', help='more variants (JSON or Python, see above)')
    parser.add_argument('--rerun-changed', action='store_true',
                        help='delete and rerun cells whose recorded settings differ from this command')
    parser.add_argument('--bootstrap', action='store_true',
                        help='add a bootstrap over the test images to the paired differences (evaluates each '
                             'finished cell once more, per image, in this process)')
    parser.add_argument('--corrupt', nargs='+', metavar='NAME[:SEVERITY]', type=corruption_arg,
                        help='also evaluate every finished cell on corrupted test inputs (as val.py --corrupt) '
                             'and write DIR/robustness.json, .md and .png with paired differences to the '
                             'reference per corruption')
    parser.add_argument('--jobs', type=int, default=1, metavar='N',
                        help='cells run at once (default: %(default)s); see "Side by side" above')
    parser.add_argument('--report-only', action='store_true',
                        help='write the figures of the finished cells without running any cell')
    parser.add_argument('--status', action='store_true',
                        help='print where each cell stands (finished, training, stopped, not started; epochs, '
                             'test mIoU so far, cell time left) and exit, running and writing nothing')
    return parser


def main(args, parser):
    config_name = os.path.splitext(os.path.basename(args.config))[0]
    out = os.path.abspath(args.out or os.path.join(REPO_ROOT, 'log', 'ablate', config_name))
    if args.jobs < 1:
        parser.exit(2, f'{parser.prog}: error: --jobs: expected an integer >= 1, got {args.jobs}\n')
    try:
        variants = {**BUILT_IN_VARIANTS, **(load_variants_file(args.variants_file) if args.variants_file else {})}
        order, cells = plan_grid(args.config, args.variants, args.seeds, out, args.opts, args.reference,
                                 args.teacher, variants)
    except GridError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    if args.status:
        print(status_table(cells), end='')
        return
    if args.report_only and not os.path.isdir(out):
        parser.exit(2, f"{parser.prog}: error: --out: '{out}' does not exist; --report-only reports the cells "
                       f"a grid has run there\n")
    grid = grid_record(args.config, args.opts, args.seeds, args.teacher, out)

    def report(bootstrap=False):
        return write_report(cells, order, variants, args.reference, out, grid,
                            image_hists=image_hists if bootstrap else None)
    if args.jobs > 1 and not args.report_only and 'OMP_NUM_THREADS' not in os.environ:
        cores = os.cpu_count() or 1
        print(f'note: --jobs {args.jobs} without OMP_NUM_THREADS: every cell may use all {cores} cores; '
              f'OMP_NUM_THREADS={max(1, cores // args.jobs)} shares them', file=sys.stderr, flush=True)
    try:
        if not args.report_only:
            run_grid(cells, args.rerun_changed, on_cell_done=report, jobs=args.jobs)
    except GridError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    except CellFailed as e:
        parser.exit(e.status, f'{parser.prog}: error: {e}\n')
    except KeyboardInterrupt:
        parser.exit(130, f'\n{parser.prog}: interrupted; run the same command again to continue\n')
    print('\n' + report(args.bootstrap))
    print(f'figures in {os.path.join(out, RESULTS_FILE)} and {os.path.join(out, TABLE_FILE)}')
    if args.corrupt:
        print('\n' + write_robustness(cells, order, args.reference, out, grid, unique_settings(args.corrupt)))
        print(f'robustness figures in {os.path.join(out, ROBUSTNESS_FILES[0])}, .md and .png')


if __name__ == '__main__':
    parser = get_args_parser()
    main(parser.parse_args(), parser)
