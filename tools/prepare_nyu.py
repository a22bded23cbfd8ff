"""Converts the NYU Depth V2 release into the official layout PrimKD/CMX train on.

    python tools/prepare_nyu.py --mat nyu_depth_v2_labeled.mat --splits splits.mat \\
        --mapping class13Mapping/classMapping40.mat --out datasets/NYUDepthv2

Inputs: `nyu_depth_v2_labeled.mat` (MATLAB v7.3 = HDF5; MATLAB's column-major arrays appear
transposed: `images` N x 3 x W x H uint8, `depths` and `rawDepths` N x W x H metres, `labels`
N x W x H with the 894 raw classes, 0 = unlabeled), `splits.mat` (`trainNdxs`, `testNdxs`, 1-based)
and the 894 -> 40 class mapping of Gupta et al. (`mapClass`, 894 values in 1..40; 0 stays 0).

Outputs under --out, named by NYU's own 1-based image index zero-padded to 4 digits (0001..1449):
    RGB/NNNN.jpg    colour image, JPEG quality --quality (default 95)
    Depth/NNNN.png  the in-painted depth (`depths`), uint16 millimetres
    HHA/NNNN.jpg    utils.hha.depth_to_hha of that depth with the NYU camera; JPEG quality --quality.
                    As the MATLAB run behind the reference HHA, the in-painted depth alone is used
                    (it reproduces that HHA exactly); --raw-mask also marks the raw depth's holes.
    Label/NNNN.png  uint8 0..40 (0 = unlabeled)
    train.txt / test.txt  one bare name a line, in the order of splits.mat (795 / 654)

Every file is written to a temporary name and renamed, so an interrupted run leaves no partial file;
a second run skips the images whose four outputs exist.
"""
import argparse
import os
import sys

import cv2
import h5py
import numpy as np

from utils.conversion import ConversionError, load_mat_variable, run_parallel, unfinished, write_image, write_split
from utils.hha import NYU_CAMERA, depth_to_hha

ARRAYS = ('images', 'depths', 'rawDepths', 'labels')
FOLDERS = {'RGB': '.jpg', 'Depth': '.png', 'HHA': '.jpg', 'Label': '.png'}


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--mat', required=True, help='nyu_depth_v2_labeled.mat')
    parser.add_argument('--splits', required=True, help='splits.mat (trainNdxs, testNdxs)')
    parser.add_argument('--mapping', required=True, help='classMapping40.mat (mapClass: 894 -> 40)')
    parser.add_argument('--out', default='datasets/NYUDepthv2',
                        help='output folder (default: %(default)s)')
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='processes (default: %(default)s)')
    parser.add_argument('--quality', type=int, default=95,
                        help='JPEG quality of RGB and HHA (default: %(default)s)')
    parser.add_argument('--raw-mask', action='store_true',
                        help="HHA: leave pixels where rawDepths == 0 out of the normals (the published "
                             "HHA were made without this)")
    return parser


def item_name(index):
    """NYU's 1-based image index -> file name stem."""
    return f'{index:04d}'


def output_paths(out, index):
    return {folder: os.path.join(out, folder, item_name(index) + ext) for folder, ext in FOLDERS.items()}


def check_release(path):
    """The number of images, and (height, width), of the labeled .mat; ConversionError if it is not the
    NYU release's layout."""
    if not os.path.isfile(path):
        raise ConversionError(f"'{path}' does not exist")
    if not h5py.is_hdf5(path):
        raise ConversionError(f"'{path}' is not an HDF5 (MATLAB v7.3) file as nyu_depth_v2_labeled.mat is")
    with h5py.File(path, 'r') as f:
        absent = [name for name in ARRAYS if name not in f]
        if absent:
            raise ConversionError(f"'{path}' lacks the arrays {absent} (expected {list(ARRAYS)})")
        images = f['images'].shape
        if len(images) != 4 or images[1] != 3:
            raise ConversionError(f"'{path}': 'images' has shape {images}, expected N x 3 x W x H")
        count, _, width, height = images
        for name in ARRAYS[1:]:
            if f[name].shape != (count, width, height):
                raise ConversionError(f"'{path}': '{name}' has shape {f[name].shape}, expected "
                                      f"{(count, width, height)} to match 'images'")
    return count, (height, width)


def check_splits(path, count):
    """(train, test) 1-based indices from splits.mat, checked against the number of images."""
    splits = []
    for name in ('trainNdxs', 'testNdxs'):
        indices = load_mat_variable(path, name)
        integral = np.all(indices == np.round(indices))
        if indices.size == 0 or indices.min() < 1 or indices.max() > count or not integral:
            raise ConversionError(f"'{path}': '{name}' must hold 1-based image indices in 1..{count}")
        splits.append([int(i) for i in indices])
    overlap = sorted(set(splits[0]) & set(splits[1]))
    if overlap:
        raise ConversionError(f"'{path}': {len(overlap)} indices are in both trainNdxs and testNdxs, "
                              f"e.g. {overlap[:5]}")
    return splits


def check_mapping(path):
    """The lookup table raw class -> output class (entry 0: unlabeled -> 0)."""
    mapping = load_mat_variable(path, 'mapClass')
    integral = np.all(mapping == np.round(mapping))
    if mapping.size == 0 or mapping.min() < 0 or mapping.max() > 254 or not integral:
        raise ConversionError(f"'{path}': 'mapClass' must hold integer classes in 0..254 "
                              f"(1..40 for NYU-40)")
    return np.concatenate([[0], mapping]).astype(np.uint8)


def convert(images, depths, raw_depths, labels, index, mapping, raw_mask=False):
    """The four output arrays of 1-based image `index`: rgb (H, W, 3) RGB, depth uint16 mm,
    hha (H, W, 3) in utils.hha's channel order, label uint8."""
    rgb = images[index - 1].transpose(2, 1, 0)
    depth = depths[index - 1].T.astype(np.float64)
    missing = raw_depths[index - 1].T == 0 if raw_mask else None
    raw_label = labels[index - 1].T
    if raw_label.max() >= len(mapping):
        raise ConversionError(f'image {index}: raw class {int(raw_label.max())} is beyond the '
                              f'{len(mapping) - 1} classes of the mapping')
    depth_mm = np.clip(np.rint(depth * 1000), 0, 65535).astype(np.uint16)
    return rgb, depth_mm, depth_to_hha(depth, missing=missing, camera=NYU_CAMERA), mapping[raw_label]


_worker = {}


def init_worker(mat, out, mapping, quality, raw_mask):
    """Opens the .mat once per process."""
    _worker.update(file=h5py.File(mat, 'r'), out=out, mapping=mapping, quality=quality, raw_mask=raw_mask)


def convert_and_write(index):
    arrays = [_worker['file'][name] for name in ARRAYS]
    rgb, depth_mm, hha, label = convert(*arrays, index, _worker['mapping'], _worker['raw_mask'])
    paths = output_paths(_worker['out'], index)
    jpeg = (cv2.IMWRITE_JPEG_QUALITY, _worker['quality'])
    write_image(paths['RGB'], rgb[..., ::-1], jpeg)
    write_image(paths['Depth'], depth_mm)
    write_image(paths['HHA'], hha[..., ::-1], jpeg)
    write_image(paths['Label'], label)
    return index


def main(args):
    if args.workers < 1 or not 0 <= args.quality <= 100:
        sys.exit(f'--workers must be >= 1 and --quality in 0..100, '
                 f'got {args.workers} and {args.quality}')
    try:
        count, (height, width) = check_release(args.mat)
        train, test = check_splits(args.splits, count)
        mapping = check_mapping(args.mapping)
    except ConversionError as e:
        sys.exit(f'error: {e}')
    for folder in FOLDERS:
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    indices = train + test
    todo = unfinished(indices, lambda i: output_paths(args.out, i).values())
    print(f'{count} images of {width}x{height} in {args.mat}; {len(indices)} in the splits, '
          f'{len(indices) - len(todo)} already written, {len(todo)} to convert')
    state = (args.mat, args.out, mapping, args.quality, args.raw_mask)
    try:
        run_parallel(convert_and_write, todo, args.workers, init_worker, state, desc='images')
    except ConversionError as e:
        sys.exit(f'error: {e}')
    write_split(os.path.join(args.out, 'train.txt'), map(item_name, train))
    write_split(os.path.join(args.out, 'test.txt'), map(item_name, test))
    print(f'wrote {args.out}: train.txt ({len(train)}), test.txt ({len(test)})')


if __name__ == '__main__':
    main(get_args_parser().parse_args())
