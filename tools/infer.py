"""Runs a trained PrimKD student (RGB + depth or HHA) or teacher (RGB alone) on your own images.

    python tools/infer.py -c config/nyu_b2.py -e student.pth --rgb photos/ --depth depth/ \\
        --camera nyu --out results/
    python tools/infer.py -c config/nyu_b2.py -e student.pth --rgb 'photos/*.jpg' --hha hha/ --out results/
    python tools/infer.py -c config/nyu_b2.py -e teacher.pth --rgb photo.jpg --out results/
    python tools/infer.py -c config/nyu_b2.py --onnx student.onnx --rgb photos/ --depth depth/ \\
        --fx 518.9 --fy 519.5 --cx 325.6 --cy 253.7 --out results/

--rgb, --depth and --hha take a file, a folder (its image files) or a glob pattern; RGB and depth
(or HHA) files are paired by file name without extension. Depth is a 16-bit PNG (PNG value /
--depth-scale = metres; --depth-encoding sun-rgbd for SUN-RGBD's bit-rotated files); its holes (0)
are in-painted and it becomes HHA (utils.hha) with the camera of --camera or --fx --fy --cx --cy.
The model comes from a checkpoint (-e: this project's or an official PrimKD/CMX file; a teacher
checkpoint runs on RGB alone) or an ONNX file of tools/export.py (--onnx, run by onnxruntime).

An image goes through the evaluator as in val.py (engine.evaluator.predict_probabilities): sliding
window or whole image, --scales and --flip, the config's eval_max_batch windows per forward pass.
Outputs in --out: label/NAME.png (class index + 1, as val.py's pred/), color/NAME.png (the dataset
palette), overlay/NAME.jpg (the palette over the photo), with --side-by-side
side_by_side/NAME.png (RGB | depth or HHA | prediction), with --save-hha hha/NAME.png (the HHA the
network got, in the dataset's file layout), legend.png (the classes predicted) and summary.json
(per image: size, time and the pixel fraction of each class predicted). Every input and setting is
checked before the first output is written; existing outputs are kept unless --overwrite is given.

--corrupt NAME:SEVERITY ... applies corruptions of dataloader/corruptions.py to the inputs, in the
order given, to see a model under a failing sensor: RGB ones to the photo, depth ones to the depth in
metres before its holes are in-painted and HHA is made (or to the --hha image); a frame whose depth
is all missing gets an all-zero HHA image.
"""
import argparse
import datetime
import glob
import os
import time
from typing import NamedTuple, Optional

import cv2
import numpy as np
import torch
from tqdm import tqdm

from config import ConfigError, add_config_args, config_from_args
from dataloader.corruptions import CORRUPTIONS, DEPTH, corrupt_depth_metres, corrupt_images, corruption_arg
from dataloader.dataset import IMAGE_EXTENSIONS, read_extra, read_rgb
from dataloader.transforms import network_input
from engine import distributed as du
from engine.amp import AMP_DTYPES, autocast, resolve_amp
from engine.evaluator import predict_probabilities
from engine.inference import (InferenceError, OnnxNetwork, add_prediction_args, checkpoint_model, network_input_shapes,
                              prediction_options, require_onnx_packages)
from utils import conversion
from utils.constants import LAST_STAGE_STRIDE, MODES
from utils.depth_camera import CAMERA_FLAGS, Camera, camera_from_flags, check_camera_fits, check_png_header
from utils.hha import CAMERA_PRESETS, inpainted_hha
from utils.io import check_output_folder, write_json
from utils.visualize import (colorize, depth_colormap, hstack_panels, legend, overlay,
                             to_label_png)

DEFAULT_DEPTH_SCALE = 1000.0  # millimetres
SUMMARY_FILE = 'summary.json'
LEGEND_FILE = 'legend.png'
LISTED_NAMES = 10
JPEG_QUALITY = 95
# Per-image outputs, each in its own folder: {kind: file extension}; the last two are optional.
OUTPUT_KINDS = {'label': '.png', 'color': '.png', 'overlay': '.jpg', 'side_by_side': '.png', 'hha': '.png'}


class InputError(ValueError):
    """A bad flag, file or file pair; the message names it."""


class Sample(NamedTuple):
    name: str
    rgb: str
    extra: Optional[str]   # depth or HHA file; None for the teacher


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    add_config_args(parser)
    model = parser.add_mutually_exclusive_group(required=True)
    model.add_argument('-e', '--checkpoint', metavar='CHECKPOINT',
                       help='checkpoint file (project or official layout), run directory, or '
                            'last | best | N in <log_dir>/<mode>/')
    model.add_argument('--onnx', metavar='FILE', help='ONNX file of tools/export.py, run by onnxruntime')
    parser.add_argument('--mode', choices=MODES,
                        help="student (RGB + depth/HHA) or teacher (RGB); default: the model's own kind")
    parser.add_argument('--rgb', required=True, metavar='PATH', help='image file, folder or glob pattern')
    extra = parser.add_mutually_exclusive_group()
    extra.add_argument('--depth', metavar='PATH', help='16-bit depth PNG file, folder or glob pattern')
    extra.add_argument('--hha', metavar='PATH',
                       help="precomputed HHA file, folder or glob pattern (the dataset's extra-modality files)")
    parser.add_argument('--depth-scale', type=float, metavar='S',
                        help=f'PNG value / S = metres (default {DEFAULT_DEPTH_SCALE:g}: millimetres)')
    parser.add_argument('--depth-encoding', choices=conversion.DEPTH_ENCODINGS,
                        help='plain (default), or sun-rgbd: 16 bits rotated left by 3, as SUN-RGBD stores depth')
    parser.add_argument('--corrupt', nargs='+', metavar='NAME:SEVERITY', type=corruption_arg,
                        help=f"corrupt the inputs first: {', '.join(CORRUPTIONS)}; severity 1-5")
    parser.add_argument('--camera', choices=sorted(CAMERA_PRESETS),
                        help='named intrinsics, only for images of their size (nyu: 480x640)')
    for flag, what in zip(CAMERA_FLAGS, ('focal length x', 'focal length y', 'principal point x',
                                         'principal point y')):
        parser.add_argument(f'--{flag}', type=float, help=f'{what} in pixels (all four together)')
    add_prediction_args(parser)
    parser.add_argument('--out', required=True, metavar='DIR', help='output folder')
    parser.add_argument('--side-by-side', action='store_true',
                        help='also write side_by_side/NAME.png: RGB | depth or HHA | prediction')
    parser.add_argument('--save-hha', action='store_true',
                        help='also write hha/NAME.png, the HHA computed from --depth')
    parser.add_argument('--overwrite', action='store_true', help='replace outputs that exist')
    return parser


# --- flags -----------------------------------------------------------------------------------

def check_depth_flags(args):
    """The depth-only flags need --depth, and --depth needs a camera: a preset or all four values."""
    given = [f'--{flag}' for flag in CAMERA_FLAGS if getattr(args, flag) is not None]
    depth_only = given + [flag for flag, value in (('--camera', args.camera), ('--depth-scale', args.depth_scale),
                                                   ('--depth-encoding', args.depth_encoding),
                                                   ('--save-hha', args.save_hha or None))
                          if value is not None]
    if args.depth is None:
        if depth_only:
            raise InputError(f"{', '.join(depth_only)}: only used with --depth")
        return
    if args.camera is not None and given:
        raise InputError(f"--camera {args.camera} and {', '.join(given)}: give a preset or the four values, "
                         f"not both")
    if args.camera is None and len(given) != len(CAMERA_FLAGS):
        raise InputError('--depth needs the camera that took it: --camera '
                         f"{' | '.join(sorted(CAMERA_PRESETS))} or all of --fx --fy --cx --cy"
                         + (f" (got only {', '.join(given)})" if given else ''))
    for flag in ('depth_scale', 'fx', 'fy'):
        value = getattr(args, flag)
        if value is not None and not value > 0:
            raise InputError(f"--{flag.replace('_', '-')} must be positive, got {value:g}")


def camera_of(args) -> Camera:
    """The camera of --depth: a preset (for its own image size only) or the four intrinsics."""
    if args.camera is not None:
        return Camera(*CAMERA_PRESETS[args.camera], f'--camera {args.camera}')
    return camera_from_flags(args)


def check_corruptions(args, mode):
    """The --corrupt settings, each given with its severity and applicable to the model."""
    settings = []
    for group in args.corrupt or ():
        name = group[0].name
        if len(group) != 1:
            raise InputError(f'--corrupt {name}: give one severity, {name}:1 to {name}:5')
        if group[0].corruption.modality == DEPTH and mode == 'teacher':
            raise InputError(f'--corrupt {group[0]}: not applicable: the model is a teacher, which takes no depth')
        settings += group
    return settings


def corrupted_inputs(sample, rgb, hha, depth, settings):
    """(rgb, hha, depth) with the settings applied in order (depth ones to the depth in metres when
    there is one, else to the HHA image)."""
    for setting in settings:
        if setting.corruption.modality == DEPTH and depth is not None:
            depth = corrupt_depth_metres(depth, setting, sample.name)
        else:
            rgb, hha = corrupt_images(rgb, hha, setting, sample.name)
    return rgb, hha, depth


def hha_of_corrupted(depth, camera):
    """HHA of a (corrupted) depth map; an all-zero image where no depth is left (depth_missing)."""
    return hha_image(depth, camera) if depth.any() else np.zeros((*depth.shape, 3), dtype=np.uint8)


def prediction_settings(args, cfg, network):
    """The keyword arguments of predict_probabilities. A fixed-size ONNX model sees windows of its
    own size."""
    crop_size = tuple(cfg.eval_crop_size)
    fixed = getattr(network, 'input_shape', [None] * 4)[2:]
    if None not in fixed:
        crop_size = tuple(fixed)
    return dict(prediction_options(args, cfg), crop_size=crop_size, stride_rate=cfg.eval_stride_rate,
                max_batch=cfg.eval_max_batch)


# --- the model -------------------------------------------------------------------------------

def load_network(args, cfg, device):
    """(callable network, mode, description)."""
    if args.checkpoint is not None:
        model, mode, path = checkpoint_model(cfg, args.checkpoint, args.mode)
        return model.to(device), mode, path
    if not os.path.isfile(args.onnx):
        raise InputError(f'--onnx {args.onnx}: no such file')
    if device.type != 'cpu':
        raise InputError('--onnx runs on the CPU (onnxruntime); use --device cpu or auto')
    if args.amp != 'none':
        raise InputError(f'--amp {args.amp}: an ONNX model runs in the precision it was exported in')
    require_onnx_packages(('onnxruntime',))
    network = OnnxNetwork(args.onnx)
    if args.mode is not None and network.mode != args.mode:
        raise InputError(f'--onnx {args.onnx} is a {network.mode} model, but --mode {args.mode} asks for a '
                         f'{args.mode} one')
    mismatches = network.config_mismatches(cfg)
    if mismatches:
        raise InputError(f"--onnx {args.onnx} was exported with another config ({'; '.join(mismatches)})")
    if network.num_classes not in (None, cfg.num_classes):
        raise InputError(f'--onnx {args.onnx} predicts {network.num_classes} classes but the config has '
                         f'num_classes={cfg.num_classes}')
    return network, network.mode, os.path.abspath(args.onnx)


def check_mode_inputs(mode, args, cfg):
    extra_flag = '--depth' if args.depth is not None else '--hha' if args.hha is not None else None
    if mode == 'teacher' and extra_flag:
        raise InputError(f'{extra_flag}: the model is a teacher, which sees RGB alone; leave out '
                         f'--depth/--hha or give a student model')
    if mode == 'student' and extra_flag is None:
        raise InputError('the model is a student (RGB-D): give --depth or --hha for the images')
    if args.depth is not None and cfg.x_is_single_channel:
        raise InputError('--depth: the config feeds a raw depth image (x_is_single_channel), not HHA; '
                         'give those files with --hha')


# --- inputs ----------------------------------------------------------------------------------

def list_files(flag, value):
    """{name (file name without extension): path} of a file, a folder's images or a glob pattern."""
    if os.path.isfile(value):
        paths = [value]
    elif os.path.isdir(value):
        paths = sorted(os.path.join(value, n) for n in os.listdir(value)
                       if n.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(value, n)))
        if not paths:
            raise InputError(f"{flag} {value}: the folder holds no image files ({', '.join(IMAGE_EXTENSIONS)})")
    else:
        paths = sorted(p for p in glob.glob(value) if os.path.isfile(p))
        if not paths:
            raise InputError(f'{flag} {value}: no such file or folder, and no file matches it as a pattern')
    files = {}
    for path in paths:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in files:
            raise InputError(f"{flag}: two files are named '{name}' ({files[name]}, {path}); "
                             f"names must be unique, as they pair the inputs and name the outputs")
        files[name] = path
    return files


def listing(names):
    shown = ', '.join(names[:LISTED_NAMES])
    return shown + (f' and {len(names) - LISTED_NAMES} more' if len(names) > LISTED_NAMES else '')


def pair_files(args):
    """[Sample] in name order; InputError listing the names that have no partner."""
    rgb = list_files('--rgb', args.rgb)
    extra_flag, extra_value = ('--depth', args.depth) if args.depth is not None else ('--hha', args.hha)
    if extra_value is None:
        return [Sample(name, path, None) for name, path in sorted(rgb.items())]
    extra = list_files(extra_flag, extra_value)
    rgb_only, extra_only = sorted(set(rgb) - set(extra)), sorted(set(extra) - set(rgb))
    if rgb_only or extra_only:
        problems = ([f'--rgb files without {extra_flag}: {listing(rgb_only)}'] if rgb_only else []) + (
            [f'{extra_flag} files without --rgb: {listing(extra_only)}'] if extra_only else [])
        raise InputError(f"unpaired files (RGB and {extra_flag[2:]} are paired by name): {'; '.join(problems)}")
    return [Sample(name, rgb[name], extra[name]) for name in sorted(rgb)]


def read_depth_metres(path, args):
    """(H, W) float depth in metres of a 16-bit depth PNG (0 = hole)."""
    try:
        check_png_header(path)
        depth = conversion.read_depth_png(path, args.depth_encoding or 'plain')
    except conversion.ConversionError as e:
        raise InputError(f'--depth {e}') from None
    return depth / (args.depth_scale or DEFAULT_DEPTH_SCALE)


def read_inputs(sample, args, cfg):
    """(RGB image, HHA image or None, depth in metres or None) of one sample; images as OpenCV
    reads files (BGR). --hha files are read as the dataset reads its extra modality."""
    rgb = read_rgb(sample.rgb)
    if rgb is None:
        raise InputError(f'--rgb {sample.rgb}: cannot be read as an image')
    if sample.extra is None:
        return rgb, None, None
    if args.hha is not None:
        flag, hha, depth = '--hha', read_extra(sample.extra, cfg.x_is_single_channel), None
        if hha is None:
            raise InputError(f'--hha {sample.extra}: cannot be read as an image')
    else:
        flag, hha, depth = '--depth', None, read_depth_metres(sample.extra, args)
    size = (depth if depth is not None else hha).shape[:2]
    if size != rgb.shape[:2]:
        raise InputError(f'{flag} {sample.extra} is {size[0]}x{size[1]} but its RGB image {sample.rgb} is '
                         f'{rgb.shape[0]}x{rgb.shape[1]}')
    return rgb, hha, depth


def check_depth(sample, depth, camera):
    """The camera must fit the depth image (as tools/depth2hha.py checks it), and HHA needs some
    measured depth."""
    try:
        check_camera_fits(camera, sample.extra, depth.shape)
    except conversion.ConversionError as e:
        raise InputError(f'--depth {e}') from None
    if not (depth > 0).any():
        raise InputError(f'--depth {sample.extra}: no pixel has a depth (all 0)')


def hha_image(depth, camera):
    """The HHA of a depth map, as OpenCV reads the dataset's HHA files (BGR of the HHA channels)."""
    return np.ascontiguousarray(inpainted_hha(depth, camera.matrix)[..., ::-1])


def check_image_size(sample, size, network, mode, prediction):
    """The network must be able to take every input this image gives it (see network_input_shapes)."""
    shapes = network_input_shapes(*size, mode == 'student', **prediction)
    small = [s for s in shapes if min(s[-2:]) < LAST_STAGE_STRIDE]
    if small:
        raise InputError(f'{sample.rgb}: at --scales {prediction["scales"]} the network would get a '
                         f'{small[0][2]}x{small[0][3]} input; every side must be at least {LAST_STAGE_STRIDE}, '
                         f"the stride of the encoder's last stage")
    fixed = getattr(network, 'input_shape', None)
    for shape in shapes if fixed else ():
        if any(f is not None and f != s for f, s in zip(fixed, shape)):
            raise InputError(f'{sample.rgb}: the network would get a {shape[2]}x{shape[3]} input, but --onnx '
                             f'takes {fixed[2]}x{fixed[3]} only; export it with --dynamic, or use --sliding')


# --- outputs ---------------------------------------------------------------------------------

def output_kinds(args):
    """The per-image outputs asked for: {kind (also its folder): file extension}."""
    optional = {'side_by_side': args.side_by_side, 'hha': args.save_hha}
    return {kind: extension for kind, extension in OUTPUT_KINDS.items() if optional.get(kind, True)}


def output_files(out, name, kinds):
    """{kind: path} of one image's outputs."""
    return {kind: os.path.join(out, kind, name + extension) for kind, extension in kinds.items()}


def check_outputs(args, samples):
    """Existing outputs are not replaced unless --overwrite; the folder must be one we can write."""
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError(f'--out {args.out}: exists and is not a folder')
    kinds = output_kinds(args)
    planned = [p for s in samples for p in output_files(args.out, s.name, kinds).values()]
    planned += [os.path.join(args.out, SUMMARY_FILE), os.path.join(args.out, LEGEND_FILE)]
    existing = [os.path.relpath(p, args.out) for p in planned if os.path.exists(p)]
    if existing and not args.overwrite:
        raise InputError(f'--out {args.out} already holds {len(existing)} of the outputs ({listing(existing)}); '
                         f'pass --overwrite to replace them, or choose another folder')
    parent = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(parent):
        raise InputError(f'--out {args.out}: its folder {parent} does not exist')
    try:
        check_output_folder(args.out)  # the last check: creates --out and writes a probe file in it
    except OSError as e:
        raise InputError(f'--out {args.out}: {e}') from None


def write_rgb(path, image):
    """An (H, W) or RGB (H, W, 3) uint8 image as the file `path`, written atomically."""
    pixels = image[..., ::-1] if image.ndim == 3 else image  # OpenCV writes BGR
    params = (cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY) if path.endswith('.jpg') else ()
    conversion.write_image(path, pixels, params)


def write_outputs(files, rgb, extra_panel, label_png, num_classes):
    colour = colorize(label_png, num_classes)
    images = {'label': label_png, 'color': colour, 'overlay': overlay(rgb, colour)}
    if 'side_by_side' in files:
        images['side_by_side'] = hstack_panels(*([rgb] if extra_panel is None else [rgb, extra_panel]), colour)
    for kind, path in files.items():
        if kind in images:
            write_rgb(path, images[kind])


def class_fractions(pred, class_names):
    """{class name: fraction of the image's pixels} of the classes predicted, largest first."""
    counts = np.bincount(pred.ravel(), minlength=len(class_names))
    order = np.argsort(-counts, kind='stable')
    return {class_names[i]: float(counts[i] / pred.size) for i in order if counts[i]}


# --- main ------------------------------------------------------------------------------------

def prepare(args, cfg):
    """Every check before the first output: (network, mode, model file, device, amp dtype, samples,
    camera, prediction settings, corruptions)."""
    check_depth_flags(args)
    try:
        device = du.init_distributed(args.device).device
        amp_dtype = AMP_DTYPES[resolve_amp(args.amp, device)]
    except ConfigError as e:
        raise InputError(f'--amp {args.amp}: {e}') from None
    except ValueError as e:
        raise InputError(str(e)) from None
    network, mode, model_file = load_network(args, cfg, device)
    check_mode_inputs(mode, args, cfg)
    corruptions = check_corruptions(args, mode)
    prediction = prediction_settings(args, cfg, network)
    samples = pair_files(args)
    camera = camera_of(args) if args.depth is not None else None
    for sample in tqdm(samples, desc='checking inputs', unit='img', leave=False, disable=len(samples) < 20):
        rgb, _, depth = read_inputs(sample, args, cfg)
        if depth is not None:
            check_depth(sample, depth, camera)
        check_image_size(sample, rgb.shape[:2], network, mode, prediction)
    check_outputs(args, samples)
    return network, mode, model_file, device, amp_dtype, samples, camera, prediction, corruptions


def predict(network, rgb, extra, cfg, device, amp_dtype, prediction):
    """(H, W) int64 class indices, as evaluate() computes them."""
    rgb = network_input(rgb, cfg.channel_order, cfg.norm_mean, cfg.norm_std)[None].to(device)
    if extra is not None:
        extra = network_input(extra, cfg.channel_order, cfg.norm_mean, cfg.norm_std)[None].to(device)
    with torch.inference_mode(), autocast(device, amp_dtype):
        probabilities = predict_probabilities(network, rgb, extra, **prediction)
    return probabilities.argmax(dim=1)[0].cpu().numpy()


def extra_panel(hha, depth):
    """The middle panel of --side-by-side (RGB): the depth map, the HHA file, or none (teacher)."""
    if depth is not None:
        return depth_colormap(depth)
    return None if hha is None else hha[..., ::-1]


def main(argv=None):
    parser = get_args_parser()
    args = parser.parse_args(argv)
    cfg = config_from_args(args, parser)
    try:
        network, mode, model_file, device, amp_dtype, samples, camera, prediction, corruptions = prepare(args, cfg)
    except (InputError, InferenceError) as e:
        parser.exit(2, f'{parser.prog}: error: {e}\n')
    print(f"{mode} {'(onnxruntime)' if args.onnx else cfg.backbone} from {model_file}: {len(samples)} image(s), "
          f"{prediction['eval_mode']}" + (f" (crop {list(prediction['crop_size'])})" if prediction['eval_mode'] == 'sliding'
                                     else '')
          + f", scales {prediction['scales']}, flip {prediction['flip']}, amp {args.amp}, {device.type}")
    kinds = output_kinds(args)
    for kind in kinds:
        os.makedirs(os.path.join(args.out, kind), exist_ok=True)

    images, predicted = [], set()
    for sample in tqdm(samples, desc=f'infer {mode}', unit='img', dynamic_ncols=True):
        start = time.perf_counter()
        rgb, hha, depth = corrupted_inputs(sample, *read_inputs(sample, args, cfg), corruptions)
        if depth is not None:
            hha = hha_of_corrupted(depth, camera)
        input_seconds = time.perf_counter() - start
        start = time.perf_counter()
        pred = predict(network, rgb, hha, cfg, device, amp_dtype, prediction)
        seconds = time.perf_counter() - start
        files = output_files(args.out, sample.name, kinds)
        if 'hha' in files:
            write_rgb(files['hha'], hha[..., ::-1])
        write_outputs(files, rgb[..., ::-1], extra_panel(hha, depth) if args.side_by_side else None,
                      to_label_png(pred, cfg.background), cfg.num_classes)
        predicted.update(np.unique(pred).tolist())
        images.append({'name': sample.name, 'rgb': os.path.abspath(sample.rgb),
                       'extra': sample.extra and os.path.abspath(sample.extra),
                       'height': int(pred.shape[0]), 'width': int(pred.shape[1]),
                       'input_seconds': input_seconds, 'seconds': seconds,
                       'class_fractions': class_fractions(pred, cfg.class_names)})
    write_rgb(os.path.join(args.out, LEGEND_FILE), legend(sorted(predicted), cfg.class_names, cfg.num_classes))
    summary = {'tool': 'tools/infer.py', 'date': datetime.datetime.now().isoformat(timespec='seconds'),
               'config': os.path.abspath(args.config), 'model': model_file, 'runtime': 'onnxruntime' if args.onnx
               else 'torch', 'mode': mode, 'extra': 'depth' if args.depth else 'hha' if args.hha else None,
               'camera': None if camera is None else camera.matrix.tolist(),
               'depth_scale': args.depth_scale or DEFAULT_DEPTH_SCALE if args.depth else None,
               'depth_encoding': args.depth_encoding or 'plain' if args.depth else None,
               **{k: list(v) if isinstance(v, tuple) else v for k, v in prediction.items()},
               'corruptions': [str(s) for s in corruptions], 'amp': args.amp, 'device': device.type, 'class_names': cfg.class_names, 'images': images}
    write_json(os.path.join(args.out, SUMMARY_FILE), summary)
    print(f'wrote {len(images)} prediction(s) to {args.out}')
    return summary


if __name__ == '__main__':
    main()
