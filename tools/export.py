"""Exports a PrimKD student or teacher to ONNX and checks the file with onnxruntime.

    python tools/export.py -c config/nyu_b2.py -e student.pth --out primkd_nyu_b2.onnx
    python tools/export.py -c config/demo.py -e log/demo/teacher/best.pth --out teacher.onnx --dynamic

The file (torch's ONNX exporter, opset engine.inference.ONNX_OPSET) takes the normalised `rgb` and,
for a student, `extra` (float32 N x 3 x H x W, prepared as dataloader.transforms.network_input does:
the config's channel order, (x / 255 - mean) / std) and gives the `logits` (N x C x H x W). H x W
is --height x --width (default: the config's eval_crop_size, the window val.py feeds the network);
--dynamic accepts any size (the export then runs on an example of --height x --width, at least 64
a side). tools/infer.py --onnx FILE runs it in the evaluator's pipeline.

The check: onnxruntime and torch run the same inputs, random ones at the export size (with
--dynamic at a second size too) and the first --check-images images of the config's validation
split (resized to the export size unless --dynamic); for each, the largest absolute logit
difference and the fraction of pixels whose arg-max class agrees are printed. Below
MIN_AGREEMENT on any input the export fails and no file is kept.
"""
import argparse
import os
import sys

import torch
import torch.nn.functional as F

from config import add_config_args, config_from_args
from dataloader.dataset import DatasetError, RGBXDataset
from dataloader.transforms import EvalTransform
from engine.inference import (MIN_DYNAMIC_EXAMPLE_SIDE, ONNX_OPSET, InferenceError, OnnxNetwork, checkpoint_model,
                              export_onnx, logit_agreement, require_onnx_packages)
from utils.constants import LAST_STAGE_STRIDE, MODES
from utils.io import check_output_file

MIN_AGREEMENT = 0.999
# The second size a --dynamic export is checked at: sides that are not multiples of the stride.
DYNAMIC_CHECK_GROWTH = (37, 19)


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_config_args(parser)
    parser.add_argument('-e', '--checkpoint', required=True, metavar='CHECKPOINT',
                        help='checkpoint file (project or official layout), run directory, or '
                             'last | best | N in <log_dir>/<mode>/')
    parser.add_argument('--out', required=True, metavar='FILE', help='the ONNX file to write')
    parser.add_argument('--mode', choices=MODES,
                        help="student (RGB + extra) or teacher (RGB); default: the checkpoint's own kind")
    parser.add_argument('--height', type=int, help="input height (default: the config's eval_crop_size)")
    parser.add_argument('--width', type=int, help="input width (default: the config's eval_crop_size)")
    parser.add_argument('--dynamic', action='store_true', help='accept any input height and width')
    parser.add_argument('--check-images', type=int, default=2, metavar='N',
                        help='validation images the check runs on (default: 2)')
    parser.add_argument('--random-only', action='store_true',
                        help='check on random inputs alone (no dataset at hand)')
    parser.add_argument('--overwrite', action='store_true', help='replace --out if it exists')
    return parser


def check_args(args, cfg):
    """(height, width); every bad flag as an InferenceError before any work."""
    height = cfg.eval_crop_size[0] if args.height is None else args.height
    width = cfg.eval_crop_size[1] if args.width is None else args.width
    if min(height, width) < LAST_STAGE_STRIDE:
        raise InferenceError(f'--height and --width must be at least {LAST_STAGE_STRIDE} (the stride of the '
                             f"encoder's last stage), got {height}x{width}")
    if args.dynamic and min(height, width) < MIN_DYNAMIC_EXAMPLE_SIDE:
        raise InferenceError(f'--dynamic: the example input must be at least {MIN_DYNAMIC_EXAMPLE_SIDE} pixels '
                             f'a side (the exporter would fix smaller feature maps), got {height}x{width}: '
                             f'give --height and --width')
    if args.check_images < 1:
        raise InferenceError(f'--check-images must be at least 1, got {args.check_images}')
    if os.path.isdir(args.out):
        raise InferenceError(f'--out {args.out}: is a folder; give the file to write')
    if os.path.exists(args.out) and not args.overwrite:
        raise InferenceError(f'--out {args.out}: exists; pass --overwrite to replace it')
    folder = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(folder):
        raise InferenceError(f'--out {args.out}: its folder {folder} does not exist')
    try:
        check_output_file(args.out)  # writes a probe file: os.access passes root on a read-only disk
    except OSError as e:
        raise InferenceError(f'--out {args.out}: {e}') from None
    return height, width


def random_inputs(mode, size, batch, seed):
    """Standard-normal inputs: the scale of normalised images."""
    generator = torch.Generator().manual_seed(seed)
    rgb = torch.randn(batch, 3, *size, generator=generator)
    return rgb, torch.randn(batch, 3, *size, generator=generator) if mode == 'student' else None


def check_inputs(args, cfg, mode, size):
    """[(description, rgb, extra or None)] the exported file is checked on."""
    inputs = [(f'random {size[0]}x{size[1]}', *random_inputs(mode, size, batch=2, seed=0))]
    if args.dynamic:
        other = (size[0] + DYNAMIC_CHECK_GROWTH[0], size[1] + DYNAMIC_CHECK_GROWTH[1])
        inputs.append((f'random {other[0]}x{other[1]}', *random_inputs(mode, other, batch=1, seed=1)))
    if args.random_only:
        return inputs
    try:
        dataset = RGBXDataset(cfg, 'val', EvalTransform(cfg))
    except DatasetError as e:
        raise InferenceError(f'{e}; the check runs on images of the validation split: pass --random-only '
                             f'to check on random inputs alone') from None
    for index in range(min(args.check_images, len(dataset))):
        item = dataset[index]
        rgb, extra = item['rgb'][None], item['extra'][None] if mode == 'student' else None
        if not args.dynamic and rgb.shape[-2:] != size:
            rgb, extra = (None if t is None else F.interpolate(t, size=size, mode='bilinear', align_corners=False)
                          for t in (rgb, extra))
        inputs.append((f"image {item['name']} ({rgb.shape[2]}x{rgb.shape[3]})", rgb, extra))
    return inputs


def compare(model, onnx_network, inputs):
    """[{input, max_abs_logit_diff, argmax_agreement}] of torch against onnxruntime."""
    results = []
    with torch.inference_mode():
        for description, rgb, extra in inputs:
            difference, agreement = logit_agreement(model(rgb, extra).logits, onnx_network(rgb, extra).logits)
            results.append({'input': description, 'max_abs_logit_diff': difference, 'argmax_agreement': agreement})
            print(f'  {description:<28} max |logit difference| {difference:.3g}, arg-max agreement '
                  f'{100 * agreement:.4f}%')
    return results


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    try:
        require_onnx_packages()
        size = check_args(args, cfg)
        model, mode, path = checkpoint_model(cfg, args.checkpoint, args.mode)
        inputs = check_inputs(args, cfg, mode, size)
    except InferenceError as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    shape = 'N x 3 x ' + ('H x W' if args.dynamic else f'{size[0]} x {size[1]}')
    print(f"exporting the {mode} ({cfg.backbone}, {path}) to {args.out}: opset {ONNX_OPSET}, inputs "
          f"{' and '.join(['rgb', 'extra'][:1 + (mode == 'student')])} ({shape}, channel order "
          f"{cfg.channel_order}, normalised), output logits")
    # Written beside --out and renamed over it only once the check has passed.
    folder, name = os.path.split(os.path.abspath(args.out))
    tmp = os.path.join(folder, f'.{name}.tmp-{os.getpid()}')
    try:
        export_onnx(model, mode, cfg, tmp, size, args.dynamic)
        print('onnxruntime against torch:')
        results = compare(model, OnnxNetwork(tmp), inputs)
        failed = [r for r in results if r['argmax_agreement'] < MIN_AGREEMENT]
        if failed:
            worst = min(failed, key=lambda r: r['argmax_agreement'])
            sys.exit(f"error: onnxruntime's arg-max agrees with torch on {100 * worst['argmax_agreement']:.3f}% of "
                     f"the pixels of {worst['input']}, below {100 * MIN_AGREEMENT:g}%: {args.out} not written")
        os.replace(tmp, args.out)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    print(f'wrote {args.out} ({os.path.getsize(args.out) / 2 ** 20:.1f} MB)')
    return {'out': args.out, 'mode': mode, 'opset': ONNX_OPSET, 'size': list(size), 'dynamic': args.dynamic,
            'checks': results}


if __name__ == '__main__':
    main()
