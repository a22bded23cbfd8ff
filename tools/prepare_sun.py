"""Converts the SUN RGB-D release into the layout that config/sun_b2.py and config/sun_b4.py read.

    python tools/prepare_sun.py --sunrgbd SUNRGBD --toolbox SUNRGBDtoolbox --out datasets/SUNRGBD

Inputs, both from the SUN RGB-D page (rgbd.cs.princeton.edu):
  --sunrgbd  the SUNRGBD folder of SUNRGBD.zip, holding kv1/ kv2/ realsense/ xtion/ (the sensors).
             Each image is a folder, e.g. kv1/NYUdata/NYU0001/ or kv2/kinect2data/000002_..-resize/,
             with image/NAME.jpg, depth/NAME.png (raw), depth_bfx/NAME.png (in-filled),
             intrinsics.txt, and annotation files this tool does not need.
  --toolbox  the SUNRGBDtoolbox folder of SUNRGBDtoolbox.zip, of which three files are read:
    Metadata/SUNRGBDMeta.mat    MATLAB v5 format (scipy.io reads it): SUNRGBDMeta, a 1 x 10335
        struct array; its order defines the image index 1..10335. Of the fields readframeSUNRGBD.m
        fills (sequenceName, groundtruth3DBB, Rtilt, K, depthpath, rgbpath, anno_extrinsics,
        depthname, rgbname, sensorType, valid, gtCorner3D) this tool reads rgbpath and depthpath,
        built as [folder '/image/' rgbname] and [folder '/depth/' depthname] with the folder under
        /n/fs/sun3d/data/; folders that end in '/' give paths with '//'.
    Metadata/SUNRGBD2Dseg.mat   MATLAB v7.3 (HDF5): SUNRGBD2Dseg(i).seglabel is image i's label,
        0 = unlabeled and 1..37 the classes named by seg37list (config/sun.py's class_names, in
        that order); seglabelall indexes the full list seglistall (not used). In HDF5,
        SUNRGBD2Dseg/seglabel holds 10335 x 1 object references, each to a W x H array (MATLAB's
        column-major H x W seen transposed).
    traintestSUNRGBD/allsplit.mat   MATLAB v5: alltrain (1 x 5285 cell) and alltest (1 x 5050
        cell), the image folders of the official split as /n/fs/sun3d/data/SUNRGBD/<sensor>/...,
        many with a trailing '/'; trainvalsplit (alltrain halved) is not used.
  A path of the metadata or the split is taken relative to its SUNRGBD/ component, with empty
  components ('//', a trailing '/') dropped, and found there under --sunrgbd. (The separate
  downloads SUNRGBDMeta2DBB_v2.mat and SUNRGBDMeta3DBB_v2.mat hold revised boxes: not needed.)

Depth is the in-filled depth_bfx/NAME.png (read3dPoints_bfx.m: the depth path with '/depth/'
replaced by '/depth_bfx/'), decoded as read3dPoints.m does: bitor(bitshift(v, -3),
bitshift(v, 16 - 3)) is millimetres (the 16 bits rotated right by 3), and depth beyond 8 m is set
to 8 m. The camera matrix is intrinsics.txt read as readframeSUNRGBD.m does: 9 numbers, row by row
(reshape(fscanf(f, '%f'), [3, 3])').

Outputs under --out, named by the 1-based SUNRGBDMeta index, 5 digits (00001..10335):
    RGB/NNNNN.jpg     the release's image/NAME.jpg, byte for byte
    Depth/NNNNN.png   that depth, uint16 millimetres
    HHA/NNNNN.jpg     utils.hha.depth_to_hha of that depth with the image's own intrinsics, JPEG
                      quality --quality (default 95)
    labels/NNNNN.png  uint8 0..37 (0 = unlabeled)
    train.txt / test.txt  one bare name a line, in the order of alltrain / alltest (5285 / 5050)

Sources: the toolbox's README.txt, readframeSUNRGBD.m, read3dPoints.m and read3dPoints_bfx.m, and
public readers of its files (the SUN RGB-D preparation scripts of ESANet and of
nicr-scene-analysis-datasets: v5 metadata through scipy, labels through h5py references, then
transposed).

Before the first image is converted, missing toolbox files, image folders, images, in-filled
depth or intrinsics, and malformed intrinsics each stop the tool with one line naming them; a
label outside 0..37 or an image whose parts differ in size stops it at that image. Every file is
written to a temporary name and renamed, so an interrupted run leaves no partial file; a second
run skips the images whose four outputs exist.
"""
import argparse
import os
import sys
from collections import Counter
from typing import NamedTuple

import cv2
import h5py
import numpy as np

from utils.conversion import (ConversionError, load_mat_variable, read_depth_png, run_parallel, unfinished,
                              write_image, write_split)
from utils.hha import depth_to_hha
from utils.io import atomic_write

META_FILE = os.path.join('Metadata', 'SUNRGBDMeta.mat')
SEGMENTATION_FILE = os.path.join('Metadata', 'SUNRGBD2Dseg.mat')
SPLIT_FILE = os.path.join('traintestSUNRGBD', 'allsplit.mat')
LABEL_REFERENCES = 'SUNRGBD2Dseg/seglabel'
RELEASE_ROOT = 'SUNRGBD'
FOLDERS = {'RGB': '.jpg', 'Depth': '.png', 'HHA': '.jpg', 'labels': '.png'}
NUM_CLASSES = 37
MAX_DEPTH_MM = 8000  # read3dPoints.m: depthInpaint(depthInpaint > 8) = 8 (metres)


class Image(NamedTuple):
    """One image to convert: its output name, where it is in the toolbox's files, and its files."""
    name: str
    index: int              # 0-based position in SUNRGBDMeta and SUNRGBD2Dseg
    folder: str             # e.g. kv1/NYUdata/NYU0001, relative to --sunrgbd
    rgb: str
    depth: str              # the in-filled depth_bfx file
    intrinsics: str


def get_args_parser():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('--sunrgbd', required=True,
                        help='the SUNRGBD folder of SUNRGBD.zip (kv1/ kv2/ realsense/ xtion/)')
    parser.add_argument('--toolbox', required=True,
                        help='the SUNRGBDtoolbox folder (Metadata/, traintestSUNRGBD/)')
    parser.add_argument('--out', default='datasets/SUNRGBD', help='output folder (default: %(default)s)')
    parser.add_argument('--workers', type=int, default=min(4, os.cpu_count() or 1),
                        help='processes (default: %(default)s)')
    parser.add_argument('--quality', type=int, default=95, help='JPEG quality of HHA (default: %(default)s)')
    return parser


def item_name(index):
    """0-based SUNRGBDMeta position -> file name stem (the 1-based index, 5 digits)."""
    return f'{index + 1:05d}'


def output_paths(out, name):
    return {folder: os.path.join(out, folder, name + ext) for folder, ext in FOLDERS.items()}


def mat_text(value):
    """A MATLAB char array as scipy loads it (a one-element str array; empty for '') -> str."""
    value = np.asarray(value)
    return str(value.item()) if value.size == 1 else ''


def release_parts(path, source):
    """'/n/fs/sun3d/data/SUNRGBD/kv1/NYUdata/NYU0001//image/NYU0001.jpg' ->
    ['kv1', 'NYUdata', 'NYU0001', 'image', 'NYU0001.jpg']: the components below SUNRGBD/."""
    parts = [part for part in path.split('/') if part]
    if RELEASE_ROOT not in parts:
        raise ConversionError(f"'{source}': path {path!r} has no {RELEASE_ROOT}/ component")
    return parts[parts.index(RELEASE_ROOT) + 1:]


def check_toolbox(toolbox):
    """The three toolbox files; ConversionError naming every one that is absent."""
    paths = [os.path.join(toolbox, name) for name in (META_FILE, SEGMENTATION_FILE, SPLIT_FILE)]
    absent = [os.path.relpath(path, toolbox) for path in paths if not os.path.isfile(path)]
    if absent:
        raise ConversionError(f"--toolbox '{toolbox}' lacks {', '.join(absent)} (expected the "
                              f"SUNRGBDtoolbox folder of SUNRGBDtoolbox.zip)")
    return paths


def read_metadata(path):
    """Per SUNRGBDMeta entry, in order: (image folder, image file, depth file) relative to the
    release, the depth being the in-filled depth_bfx file."""
    meta = load_mat_variable(path, 'SUNRGBDMeta')
    fields = meta.dtype.names or ()
    if 'rgbpath' not in fields or 'depthpath' not in fields:
        raise ConversionError(f"'{path}': 'SUNRGBDMeta' has no fields rgbpath and depthpath "
                              f"(has {list(fields)}); expected the toolbox's struct array")
    entries = []
    for rgb_path, depth_path in zip(meta['rgbpath'], meta['depthpath']):
        rgb = release_parts(mat_text(rgb_path), path)
        depth = release_parts(mat_text(depth_path), path)
        if rgb[-2:-1] != ['image'] or depth[-2:-1] != ['depth'] or rgb[:-2] != depth[:-2]:
            raise ConversionError(f"'{path}': entry {len(entries) + 1} has rgbpath {mat_text(rgb_path)!r} and "
                                  f"depthpath {mat_text(depth_path)!r}; expected FOLDER/image/NAME and "
                                  f"FOLDER/depth/NAME")
        folder = '/'.join(rgb[:-2])
        entries.append((folder, f'{folder}/image/{rgb[-1]}', f'{folder}/depth_bfx/{depth[-1]}'))
    return entries


def read_split(path):
    """(train, test) image folders relative to the release, in allsplit.mat's order."""
    splits = []
    for name in ('alltrain', 'alltest'):
        folders = ['/'.join(release_parts(mat_text(cell), path)) for cell in load_mat_variable(path, name)]
        if not folders:
            raise ConversionError(f"'{path}': '{name}' is empty")
        splits.append(folders)
    both = sorted(set(splits[0]) & set(splits[1]))
    if both:
        raise ConversionError(f"'{path}': {len(both)} folders are in both alltrain and alltest, e.g. '{both[0]}'")
    return splits


def check_labels(path, count):
    """ConversionError unless the file holds SUNRGBD2Dseg/seglabel with one reference per image."""
    if not h5py.is_hdf5(path):
        raise ConversionError(f"'{path}' is not an HDF5 (MATLAB v7.3) file as the toolbox's SUNRGBD2Dseg.mat is")
    with h5py.File(path, 'r') as f:
        references = f.get(LABEL_REFERENCES)
        if not isinstance(references, h5py.Dataset) or h5py.check_dtype(ref=references.dtype) is not h5py.Reference:
            raise ConversionError(f"'{path}' has no '{LABEL_REFERENCES}' (object references to the labels)")
        if references.size != count:
            raise ConversionError(f"'{path}': '{LABEL_REFERENCES}' has {references.size} labels, but "
                                  f"SUNRGBDMeta.mat {count} images")


def read_intrinsics(path):
    """The 3x3 camera matrix of an intrinsics.txt: 9 numbers, row by row."""
    with open(path) as f:
        text = f.read()
    try:
        values = [float(value) for value in text.split()]
    except ValueError:
        values = []
    camera = np.array(values).reshape(3, 3) if len(values) == 9 else None
    if camera is None or not (np.isfinite(camera).all() and camera[0, 0] > 0 and camera[1, 1] > 0
                              and np.array_equal(camera[2], [0, 0, 1])):
        shown = ' '.join(text.split())
        raise ConversionError(f"'{path}': expected the camera matrix as 9 numbers 'fx 0 cx 0 fy cy 0 0 1' "
                              f"with fx, fy > 0, got {shown[:80]!r}")
    return camera


def plan_images(release, entries, train, test):
    """The Image records of the train and test folders, in split order; ConversionError if the split
    names a folder that the metadata lacks, or an image of the metadata is in neither split."""
    position = {folder: index for index, (folder, _, _) in enumerate(entries)}
    if len(position) != len(entries):
        raise ConversionError(f"{META_FILE} lists {len(entries) - len(position)} image folders more than once")
    unknown = [folder for folder in train + test if folder not in position]
    if unknown:
        raise ConversionError(f"{SPLIT_FILE} names {len(unknown)} folders that {META_FILE} lacks, "
                              f"e.g. '{unknown[0]}'")
    unsplit = sorted(set(position) - set(train) - set(test))
    if unsplit:
        raise ConversionError(f"{len(unsplit)} images of {META_FILE} are in neither alltrain nor alltest "
                              f"of {SPLIT_FILE}, e.g. '{unsplit[0]}'")

    def image(folder):
        index = position[folder]
        _, rgb, depth = entries[index]
        return Image(item_name(index), index, folder, os.path.join(release, rgb),
                     os.path.join(release, depth), os.path.join(release, folder, 'intrinsics.txt'))
    return [image(folder) for folder in train], [image(folder) for folder in test]


def check_release_files(release, images):
    """ConversionError (one line) for the first kind of problem found: missing image folders, images,
    in-filled depth or intrinsics, or a malformed intrinsics.txt. Returns {name: camera matrix}."""
    absent = [image.folder for image in images if not os.path.isdir(os.path.join(release, image.folder))]
    if absent and len(absent) == len(images):
        raise ConversionError(f"--sunrgbd '{release}' holds none of the image folders of {META_FILE}, "
                              f"e.g. '{absent[0]}': expected the SUNRGBD folder of SUNRGBD.zip "
                              f"(kv1/ kv2/ realsense/ xtion/)")
    if absent:
        raise ConversionError(f"{len(absent)} of {len(images)} image folders are missing from --sunrgbd "
                              f"'{release}', e.g. '{absent[0]}'")
    for field, what in (('rgb', 'image'), ('depth', 'in-filled depth'), ('intrinsics', 'intrinsics.txt')):
        absent = [getattr(image, field) for image in images if not os.path.isfile(getattr(image, field))]
        if absent:
            raise ConversionError(f"{len(absent)} of {len(images)} images have no {what}: '{absent[0]}' does not exist")
    return {image.name: read_intrinsics(image.intrinsics) for image in images}


def read_label(labels_file, references, image):
    """The image's 37-class label as uint8 H x W; ConversionError if it is not one."""
    label = labels_file[references[image.index]][()].T
    if label.ndim != 2 or not np.all((label >= 0) & (label <= NUM_CLASSES) & (label == np.round(label))):
        raise ConversionError(f"{LABEL_REFERENCES}[{image.index}] (image {image.name}, '{image.folder}'): "
                              f"expected a 2-D label of integers in 0..{NUM_CLASSES}")
    return label.astype(np.uint8)


def convert(image, camera, labels_file, references):
    """The release's JPEG bytes, depth uint16 mm, HHA (utils.hha's channel order) and label of one image."""
    with open(image.rgb, 'rb') as f:
        jpeg = f.read()
    rgb = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if rgb is None:
        raise ConversionError(f"'{image.rgb}' cannot be decoded as an image")
    depth_mm = np.minimum(read_depth_png(image.depth, 'sun-rgbd'), MAX_DEPTH_MM)
    label = read_label(labels_file, references, image)
    if not rgb.shape[:2] == depth_mm.shape == label.shape:
        raise ConversionError(f"image {image.name} ('{image.folder}'): image {rgb.shape[:2]}, depth "
                              f"{depth_mm.shape} and label {label.shape} differ in size (height, width)")
    hha = depth_to_hha(depth_mm / 1000.0, camera=camera)
    return jpeg, depth_mm, hha, label


_worker = {}


def init_worker(labels_path, out, cameras, quality):
    """Opens SUNRGBD2Dseg.mat once per process."""
    labels_file = h5py.File(labels_path, 'r')
    _worker.update(labels_file=labels_file, references=labels_file[LABEL_REFERENCES][()].ravel(), out=out,
                   cameras=cameras, quality=quality)


def convert_and_write(image):
    jpeg, depth_mm, hha, label = convert(image, _worker['cameras'][image.name], _worker['labels_file'],
                                         _worker['references'])
    paths = output_paths(_worker['out'], image.name)
    atomic_write(paths['RGB'], jpeg, durable=False)
    write_image(paths['Depth'], depth_mm)
    write_image(paths['HHA'], hha[..., ::-1], (cv2.IMWRITE_JPEG_QUALITY, _worker['quality']))
    write_image(paths['labels'], label)


def sensor_table(train, test):
    """Images per sensor (the first folder below SUNRGBD/, as readframeSUNRGBD.m derives
    sensorType) and split."""
    counts = [Counter(image.folder.split('/')[0] for image in split) for split in (train, test)]
    rows = [f"{'sensor':<12}{'train':>7}{'test':>7}"]
    rows += [f'{sensor:<12}{counts[0][sensor]:>7}{counts[1][sensor]:>7}'
             for sensor in sorted(counts[0] | counts[1])]
    rows.append(f"{'all':<12}{len(train):>7}{len(test):>7}")
    return '\n'.join(rows)


def prepare(args):
    """Every check before work: the (train, test) Image lists and {name: camera matrix}."""
    if args.workers < 1 or not 0 <= args.quality <= 100:
        raise ConversionError(f'--workers must be >= 1 and --quality in 0..100, got {args.workers} and {args.quality}')
    if not os.path.isdir(args.sunrgbd):
        raise ConversionError(f"--sunrgbd '{args.sunrgbd}' is not a folder "
                              f"(expected the SUNRGBD folder of SUNRGBD.zip)")
    meta_path, labels_path, split_path = check_toolbox(args.toolbox)
    entries = read_metadata(meta_path)
    check_labels(labels_path, len(entries))
    train, test = plan_images(args.sunrgbd, entries, *read_split(split_path))
    cameras = check_release_files(args.sunrgbd, train + test)
    return labels_path, train, test, cameras


def main(argv=None):
    args = get_args_parser().parse_args(argv)
    try:
        labels_path, train, test, cameras = prepare(args)
    except ConversionError as e:
        sys.exit(f'error: {e}')
    for folder in FOLDERS:
        os.makedirs(os.path.join(args.out, folder), exist_ok=True)
    images = train + test
    todo = unfinished(images, lambda image: output_paths(args.out, image.name).values())
    print(f'{len(images)} images in the split ({len(train)} train, {len(test)} test), '
          f'{len(images) - len(todo)} already written, {len(todo)} to convert')
    state = (labels_path, args.out, cameras, args.quality)
    try:
        run_parallel(convert_and_write, todo, args.workers, init_worker, state, desc='images')
    except ConversionError as e:
        sys.exit(f'error: {e}')
    write_split(os.path.join(args.out, 'train.txt'), [image.name for image in train])
    write_split(os.path.join(args.out, 'test.txt'), [image.name for image in test])
    print(f'wrote {args.out}: train.txt ({len(train)}), test.txt ({len(test)})\n{sensor_table(train, test)}')


if __name__ == '__main__':
    main()
