"""Converts a folder of 16-bit depth PNGs to HHA images (file channels R = disparity, G = height,
B = angle, as the MATLAB program of Gupta et al. writes them).

    python tools/depth2hha.py --depth-dir datasets/NYUDepthv2/Depth --out-dir datasets/NYUDepthv2/HHA \\
        --depth-scale 10000

Outputs are NAME.jpg by default (JPEG quality --quality), the official dataset layout that the
configs expect (x_format = '.jpg'); --format png writes lossless NAME.png instead, for a dataset
whose config sets x_format = '.png'.

SUN-RGBD stores depth in millimetres with its 16 bits rotated left by 3 (its toolbox reads them
back as (v >> 3) | (v << 13)): pass --depth-encoding sun-rgbd (millimetres are the default scale),
and run the tool once per camera with that camera's intrinsics (each SUN-RGBD image comes with
its own intrinsics file).

The camera is all four of --fx --fy --cx --cy, or none of them: the NYU colour camera, which is
refused for depth images of another size than 480x640. A principal point outside an image is
refused, and the camera used is printed. A depth image without any measured pixel is an error.

Depth values are PNG value / --depth-scale metres (default 1000: millimetres; the shared NYU
fixture frame uses 10000). With --raw-dir, pixels whose raw depth (same file name) is 0 are left
out of the normal estimation. The MATLAB HHA of the NYU fixture frame was made without such a mask
(its call passed the in-painted depth as the raw depth too), and this tool reproduces it exactly
without --raw-dir.
"""
import argparse
import functools
import multiprocessing
import os
import sys
from typing import NamedTuple

import cv2
import numpy as np
from tqdm import tqdm

from utils.conversion import DEPTH_ENCODINGS, ConversionError, read_depth_png
from utils.depth_camera import (CAMERA_FLAGS, Camera, camera_from_flags, check_camera_fits, check_png_header,
                                describe_camera, png_size)
from utils.hha import NYU_CAMERA, NYU_IMAGE_SIZE, depth_to_hha
from utils.io import atomic_write

def get_args_parser():
    parser = argparse.ArgumentParser(
        description='Depth PNGs -> HHA images; the camera defaults to the NYU Depth V2 colour camera',
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument('--depth-dir', required=True, help='folder of 16-bit depth PNGs')
    parser.add_argument('--out-dir', required=True, help='folder for the HHA images (same names)')
    parser.add_argument('--format', choices=('jpg', 'png'), default='jpg',
                        help="jpg: the official layout (configs' x_format '.jpg'); png: lossless")
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality (0..100)')
    parser.add_argument('--raw-dir', default=None,
                        help='optional folder of raw 16-bit depth PNGs with the same names; '
                             'their zeros mark pixels left out of the normal estimation')
    parser.add_argument('--depth-encoding', choices=DEPTH_ENCODINGS, default='plain',
                        help='plain: PNG value = depth x depth-scale; sun-rgbd: the value rotated '
                             'left by 3 bits, as SUN-RGBD stores it')
    parser.add_argument('--depth-scale', type=float, default=1000.0,
                        help='PNG value / depth-scale = metres (1000: millimetres; '
                             '10000 for the NYU reference frame the tests use)')
    camera = parser.add_argument_group('camera', 'all four intrinsics, or none: the NYU Depth V2 colour '
                                                 'camera, for 480x640 depth only')
    for flag, what in zip(CAMERA_FLAGS, ('focal length x', 'focal length y', 'principal point x',
                                         'principal point y')):
        camera.add_argument(f'--{flag}', type=float, help=f'{what} (px)')
    parser.add_argument('--workers', type=int, default=len(os.sched_getaffinity(0)),
                        help='worker processes (all available cores)')
    parser.add_argument('--overwrite', action='store_true', help='redo existing outputs')
    return parser


def camera_from_args(args):
    """All four of --fx --fy --cx --cy, or none of them for the NYU camera (480x640 images only).
    Half a camera is refused: the other values would silently be NYU's."""
    given = [f'--{flag}' for flag in CAMERA_FLAGS if getattr(args, flag) is not None]
    if not given:
        return Camera(NYU_CAMERA, NYU_IMAGE_SIZE, 'the default NYU Depth V2 camera')
    if len(given) < len(CAMERA_FLAGS):
        absent = [f'--{flag}' for flag in CAMERA_FLAGS if getattr(args, flag) is None]
        raise ConversionError(f"{' '.join(given)} without {' '.join(absent)}: give all four intrinsics, or none "
                              f"for the NYU Depth V2 camera (480x640 depth only)")
    return camera_from_flags(args)


class Settings(NamedTuple):
    depth_encoding: str
    depth_scale: float
    camera: np.ndarray
    quality: int


def plan_jobs(args, camera: Camera):
    """Checks every input before any work and returns the (depth, raw or None, out) path triples
    still to do, and how many outputs were skipped because they exist."""
    for flag, folder in (('--depth-dir', args.depth_dir), ('--raw-dir', args.raw_dir)):
        if folder is not None and not os.path.isdir(folder):
            raise ConversionError(f'{flag} {folder}: no such folder')
    if not args.depth_scale > 0:
        raise ConversionError(f'--depth-scale must be positive, got {args.depth_scale}')
    if args.workers < 1:
        raise ConversionError(f'--workers must be at least 1, got {args.workers}')
    if not 0 <= args.quality <= 100:
        raise ConversionError(f'--quality must be in 0..100, got {args.quality}')
    inputs = {os.path.realpath(args.depth_dir), os.path.realpath(args.raw_dir or args.depth_dir)}
    if os.path.realpath(args.out_dir) in inputs:
        raise ConversionError(f'--out-dir {args.out_dir} is an input folder: outputs would replace inputs')

    names = sorted(n for n in os.listdir(args.depth_dir) if n.lower().endswith('.png'))
    if not names:
        raise ConversionError(f'--depth-dir {args.depth_dir}: no .png files')
    jobs, skipped = [], 0
    for name in names:
        depth_path = os.path.join(args.depth_dir, name)
        raw_path = os.path.join(args.raw_dir, name) if args.raw_dir else None
        out_path = os.path.join(args.out_dir, os.path.splitext(name)[0] + '.' + args.format)
        check_png_header(depth_path)
        if raw_path is not None:
            if not os.path.isfile(raw_path):
                raise ConversionError(f'{raw_path}: raw depth for {depth_path} is missing')
            check_png_header(raw_path)
        check_camera_fits(camera, depth_path, png_size(depth_path))
        if os.path.exists(out_path) and not args.overwrite:
            skipped += 1
            continue
        jobs.append((depth_path, raw_path, out_path))
    return jobs, skipped


def convert(job, settings: Settings):
    depth_path, raw_path, out_path = job
    depth = read_depth_png(depth_path, settings.depth_encoding)
    missing = None
    if raw_path is not None:
        raw = read_depth_png(raw_path, settings.depth_encoding)
        if raw.shape != depth.shape:
            raise ConversionError(f'{raw_path}: shape {raw.shape} differs from {depth_path} {depth.shape}')
        missing = raw == 0
    hha = depth_to_hha(depth / settings.depth_scale, missing, settings.camera)
    extension = os.path.splitext(out_path)[1]
    ok, encoded = cv2.imencode(extension, np.ascontiguousarray(hha[..., ::-1]),
                               (cv2.IMWRITE_JPEG_QUALITY, settings.quality) if extension == '.jpg' else ())
    if not ok:
        raise ConversionError(f'{out_path}: {extension} encoding failed')
    # An interrupted run never leaves a truncated file.
    atomic_write(out_path, encoded.tobytes(), durable=False)


def _convert_in_worker(job, settings: Settings):
    # Errors come back as messages naming the file, so one bad file does not stop the others.
    try:
        convert(job, settings)
        return None
    except ConversionError as error:
        return str(error)
    except (ValueError, OSError) as error:
        return f'{job[0]}: {error}'


def _init_worker():
    cv2.setNumThreads(1)  # one process per core already


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        camera = camera_from_args(args)
        jobs, skipped = plan_jobs(args, camera)
    except ConversionError as error:
        sys.exit(f'error: {error}')
    settings = Settings(args.depth_encoding, args.depth_scale, camera.matrix, args.quality)
    os.makedirs(args.out_dir, exist_ok=True)
    print(describe_camera(camera))
    print(f'{len(jobs)} to convert, {skipped} existing skipped (--overwrite to redo them)')

    if not jobs:
        return
    workers = min(args.workers, len(jobs))
    progress = tqdm(total=len(jobs), desc='HHA', unit='img')
    if workers <= 1:
        results = (_convert_in_worker(job, settings) for job in jobs)
        errors = _collect(results, progress)
    else:
        with multiprocessing.Pool(workers, initializer=_init_worker) as pool:
            results = pool.imap_unordered(
                functools.partial(_convert_in_worker, settings=settings), jobs)
            errors = _collect(results, progress)
    progress.close()
    if errors:
        sys.exit(f'error: {len(errors)} of {len(jobs)} files failed:\n' + '\n'.join(errors))


def _collect(results, progress):
    errors = []
    for error in results:
        if error is not None:
            errors.append(error)
        progress.update()
    return errors


if __name__ == '__main__':
    main()
