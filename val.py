"""Evaluate PrimKD student (RGB-D) or teacher (RGB) checkpoints on the validation split.

One process on a CPU or GPU, or several under torchrun (`bash val.sh` starts one per visible GPU);
each process evaluates every world_size-th image. Examples:

    python val.py --config config/nyu_b4.py -e pretrained/primkd/nyu_b4.pth
    python val.py -e best --scales 0.75 1 1.25 --flip            # multi-scale + flip
    python val.py -e 100-500 --mode teacher                      # every epoch-N.pth in the range

-e takes checkpoint files (this project's or the official PrimKD/CMX layout), run directories (their
best.pth, else last.pth), or names inside the run directory <log_dir>/<mode>/: last, best, an epoch N
(epoch-N.pth) or an epoch range START-END / START- ; several, comma- or space-separated. Every
checkpoint is found and checked against the model before the first image is evaluated.

Outputs: a per-class table and a summary line per checkpoint (console and val.log), a JSON file of
all figures (--json, default <save_path or the checkpoint's folder>/eval_<name>.json), and with
--save_path the predictions: pred/NAME.png holds prediction + 1 (the datasets' label convention,
0 = unlabeled), color/NAME.png the same in the dataset palette. No earlier result is replaced
unless --overwrite is given: a default JSON name that exists becomes eval_<name>-2.json (-3, ...),
and an existing --json file or a --save_path holding predictions is refused.

--corrupt NAME[:SEVERITY] ... also evaluates every checkpoint on corrupted test inputs (a failing depth
sensor, a bad exposure: dataloader/corruptions.py, docs/robustness.md); NAME alone means its five
severities. The JSON file then holds a row per corruption and severity, and beside it
<json name>_robustness.md and .png hold the table and the plot of mIoU against severity.
"""
import argparse
import math
import os
import sys
import time

from config import ConfigError, add_config_args, config_from_args
from dataloader.corruptions import CORRUPTIONS, corruption_arg, unique_settings
from dataloader.dataset import DatasetError
from dataloader.transforms import EvalTransform
from engine import distributed as du
from engine import robustness
from engine import run_dir as rd
from engine.amp import resolve_amp
from engine.evaluator import evaluate, saved_predictions
from engine.inference import InferenceError, add_prediction_args, prediction_options
from engine.run_spec import RunSpec
from models.weight_layouts import CheckpointError, load_checkpoint
from utils.constants import LAST_STAGE_STRIDE, MODES, STUDENT
from utils.io import check_output_file, check_output_folder, write_json
from utils.metrics import format_metrics_table

def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_config_args(parser)
    parser.add_argument('-e', '--epochs', dest='checkpoints', nargs='+', required=True,
                        metavar='CHECKPOINT',
                        help='checkpoint file, run directory, or last | best | N | START-END | START- '
                             'in <log_dir>/<mode>/ (comma- or space-separated)')
    parser.add_argument('--mode', choices=MODES, default=STUDENT,
                        help='student: RGB-D model (default); teacher: RGB-only model')
    add_prediction_args(parser)
    parser.add_argument('-p', '--save_path', metavar='DIR',
                        help='write DIR/pred/NAME.png and DIR/color/NAME.png (one sub-folder per '
                             'checkpoint when there are several)')
    parser.add_argument('--side-by-side', action='store_true',
                        help='colour images show input | prediction | ground truth')
    parser.add_argument('--json', metavar='OUT',
                        help='JSON file of the figures (a folder for eval_<name>.json files when '
                             'several checkpoints are evaluated or OUT is a folder)')
    parser.add_argument('--overwrite', action='store_true',
                        help='replace an existing JSON file or predictions (default: a new name for the '
                             'JSON, eval_<name>-2.json, ...; existing predictions or --json OUT are refused)')
    parser.add_argument('--corrupt', nargs='+', metavar='NAME[:SEVERITY]', type=corruption_arg,
                        help=f"also evaluate on corrupted inputs: {', '.join(CORRUPTIONS)}; severity 1-5 "
                             f"(default: all five)")
    parser.add_argument('-d', '--devices',
                        help='accepted for compatibility and ignored: choose GPUs with '
                             'CUDA_VISIBLE_DEVICES (val.sh starts one process per visible GPU)')
    return parser


def free_name(path: str, taken=()) -> str:
    """`path` if no file has it (nor `taken`), else the first free NAME-2.EXT, NAME-3.EXT, ..."""
    stem, ext = os.path.splitext(path)
    candidate, number = path, 1
    while os.path.exists(candidate) or candidate in taken:
        number += 1
        candidate = f'{stem}-{number}{ext}'
    return candidate


def output_paths(checkpoints, save_path, json_out, overwrite=False):
    """{checkpoint: (json file, prediction folder or None)}. A result never replaces an earlier one
    unless `overwrite`: a default JSON name that exists becomes the next free one (eval_best-2.json),
    and ValueError names an explicit --json file that exists, a prediction folder that holds
    predictions, or two checkpoints that would write the same file."""
    several = len(checkpoints) > 1
    json_is_folder = json_out is not None and (several or os.path.isdir(json_out))
    outputs = {}
    for path in checkpoints:
        name = rd.checkpoint_name(path)
        if json_out is not None and not json_is_folder:
            json_path = os.path.abspath(json_out)
            if os.path.exists(json_path) and not overwrite:
                raise ValueError(f"--json '{json_out}' exists: choose another name, or pass --overwrite to replace it")
        else:
            json_path = os.path.abspath(os.path.join(json_out or save_path or os.path.dirname(path),
                                                     f'eval_{name}.json'))
            if not overwrite:
                json_path = free_name(json_path, taken={j for j, _ in outputs.values()})
        prediction_dir = None if save_path is None else (
            os.path.join(save_path, name) if several else save_path)
        if prediction_dir is not None and not overwrite and saved_predictions(prediction_dir):
            raise ValueError(f"--save_path: '{prediction_dir}' already holds predictions: choose another "
                             f"folder, or pass --overwrite to replace them")
        outputs[path] = (json_path, prediction_dir)
    for index, (json_path, prediction_dir) in enumerate(outputs.values()):
        for other, (other_json, other_dir) in list(outputs.items())[index + 1:]:
            if json_path == other_json or (prediction_dir is not None and prediction_dir == other_dir):
                raise ValueError(f"two checkpoints (one is {other}) would write the same "
                                 f"'{json_path if json_path == other_json else prediction_dir}'; "
                                 f"evaluate them in separate runs")
    return outputs


def json_ready(value):
    """NaN (an undefined per-class figure) -> None, so the file is standard JSON."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, list):
        return [json_ready(v) for v in value]
    return value


def summary_table(rows):
    width = max(len('checkpoint'), *(len(path) for path, _ in rows))
    lines = [f'{"checkpoint":<{width}}    mIoU    mAcc  pixacc   fwIoU   img/s']
    for path, result in rows:
        figures = ''.join(f'  {100 * result[k]:6.2f}' for k in ('miou', 'macc', 'pixel_acc', 'fwiou'))
        lines.append(f'{path:<{width}}{figures}  {result["num_images"] / result["seconds"]:6.1f}')
    return '\n'.join(lines)


def report(result, settings, class_names, json_path, overwrite=False, corrupted=None):
    """The per-class table to the console and to val.log beside the JSON file of all figures (with
    `corrupted`, the rows of evaluate_corruptions, also its table and plot). A JSON file another
    process wrote since the start is not replaced (unless `overwrite`): the figures go to the next
    free name."""
    table = format_metrics_table(result, class_names)
    record = {**settings, 'num_images': result['num_images'], 'seconds': result['seconds'],
              'class_names': class_names,
              **{k: json_ready(result[k]) for k in ('miou', 'macc', 'pixel_acc', 'fwiou', 'iou', 'acc')},
              'hist': result['hist'].tolist()}
    if corrupted is not None:
        record['corruptions'] = corrupted
    if not overwrite:
        json_path = free_name(json_path)
    write_json(json_path, record, indent=1)
    print(f'\n{settings["checkpoint"]}\n{table}\nfigures: {json_path}')
    if corrupted is not None:
        models = {rd.checkpoint_name(settings['checkpoint']): (result['miou'], robustness.summarize(result['miou'], corrupted))}
        stem = os.path.splitext(json_path)[0] + '_robustness'
        tables = robustness.markdown_tables(models)
        with open(stem + '.md', 'w') as f:
            f.write(f"# Robustness of {settings['checkpoint']}\n\n{tables}")
        robustness.plot(models, stem + '.png', title=f"{settings['mode']} {settings['backbone']} on {settings['dataset']}")
        print(f'{tables}robustness: {stem}.md, {stem}.png')
    with open(os.path.join(os.path.dirname(json_path), 'val.log'), 'a') as f:
        options = ', '.join(f'{k} {settings[k]}' for k in ('mode', 'eval_mode', 'scales', 'flip', 'amp'))
        f.write(f'{time.strftime("%Y-%m-%d %H:%M:%S")} {settings["checkpoint"]} ({options})\n'
                f'{table}\n\n')


def main(args, parser):
    """Evaluates every checkpoint of -e; returns [(path, result dict)] (the same on every process)."""
    cfg = config_from_args(args, parser)
    try:
        dist_info = du.init_distributed(args.device, cfg.dist_timeout_minutes)
    except ValueError as e:
        parser.error(str(e))
    spec = RunSpec.for_evaluation(args.mode)

    def fail(message):
        """One line on the main process and exit status 2 on every process, before any image."""
        if dist_info.is_main:
            parser.exit(2, f'{parser.prog}: error: {message}\n')
        sys.exit(2)

    if args.devices is not None and dist_info.is_main:
        print('note: -d/--devices is ignored; choose GPUs with CUDA_VISIBLE_DEVICES '
              '(val.sh starts one process per visible GPU)', file=sys.stderr)
    try:
        prediction = prediction_options(args, cfg)
    except InferenceError as e:
        fail(str(e))
    eval_mode, scales, flip = prediction['eval_mode'], prediction['scales'], prediction['flip']
    corruptions = unique_settings(args.corrupt or ())
    # Inputs smaller than the encoder's last stride cannot go through it.
    if any(round(min(cfg.image_height, cfg.image_width) * s) < LAST_STAGE_STRIDE for s in scales):
        fail(f'--scales {scales}: each scale must keep the image ({cfg.image_height}x{cfg.image_width}) '
             f'at least {LAST_STAGE_STRIDE} pixels on its shorter side')
    try:
        resolve_amp(args.amp, dist_info.device)
    except ConfigError as e:
        fail(f'--amp {args.amp}: {e}')
    try:
        checkpoints = rd.resolve_checkpoints(args.checkpoints, rd.run_dir(cfg.log_dir, args.mode), args.mode)
        outputs = output_paths(checkpoints, args.save_path, args.json, args.overwrite)
    except ValueError as e:
        fail(str(e))
    try:
        dataset = spec.dataset(cfg, 'val', EvalTransform(cfg))
    except DatasetError as e:
        fail(str(e))
    model = spec.build_model(cfg)
    try:
        for path in checkpoints:
            load_checkpoint(model, path, mmap=True)
    except CheckpointError as e:
        fail(str(e))
    for json_path, prediction_dir in outputs.values():  # last, as it creates the output folders
        try:
            check_output_file(json_path)
        except OSError as e:
            fail(f"cannot write '{json_path}': {e}")
        try:
            if prediction_dir is not None:
                check_output_folder(prediction_dir)
        except OSError as e:
            fail(f"--save_path: cannot write predictions in '{prediction_dir}': {e}")
    model.to(dist_info.device)

    if dist_info.is_main:
        print(f'{args.mode} {cfg.backbone} on {cfg.dataset_name} ({len(dataset)} images of '
              f'{cfg.eval_source}): {eval_mode}'
              + (f' (crop {cfg.eval_crop_size}, stride rate {cfg.eval_stride_rate:.3g})'
                 if eval_mode == 'sliding' else '')
              + f', scales {scales}, flip {flip}, amp {args.amp}, {dist_info.world_size} '
              f'process(es) on {dist_info.device.type}; {len(checkpoints)} checkpoint(s)')
    results = []
    loaded = checkpoints[-1]   # the model holds the last checkpoint checked
    for path in checkpoints:
        json_path, prediction_dir = outputs[path]
        if path != loaded:
            load_checkpoint(model, path, mmap=True)
            loaded = path
        result = evaluate(model, cfg, dist_info, dataset, **prediction,
                          save_path=prediction_dir, amp=args.amp, side_by_side=args.side_by_side)
        corrupted = None if not args.corrupt else robustness.evaluate_corruptions(
            model, cfg, dist_info, dataset, corruptions, **prediction, amp=args.amp)
        results.append((path, result))
        if dist_info.is_main:
            settings = {'checkpoint': path, 'mode': args.mode, 'config': os.path.abspath(args.config),
                        'backbone': cfg.backbone, 'dataset': cfg.dataset_name,
                        'eval_source': os.path.join(cfg.dataset_path, cfg.eval_source),
                        'eval_mode': eval_mode, 'crop_size': cfg.eval_crop_size,
                        'stride_rate': cfg.eval_stride_rate, 'scales': scales, 'flip': flip,
                        'amp': args.amp, 'processes': dist_info.world_size}
            report(result, settings, cfg.class_names, json_path, args.overwrite, corrupted)
    if dist_info.is_main:
        print(f'\nsummary ({args.mode}, {eval_mode}, scales {scales}, flip {flip})\n{summary_table(results)}')
    du.cleanup()
    return results


if __name__ == '__main__':
    parser = get_args_parser()
    main(parser.parse_args(), parser)
