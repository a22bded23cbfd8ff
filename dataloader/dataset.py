"""The RGB-X dataset in the official layout, checked before any training starts.

Layout: `<dataset_path>/<rgb_folder>/NAME<rgb_format>`, `<x_folder>/NAME<x_format>`,
`<label_folder>/NAME<label_format>`, and the split files `cfg.train_source` / `cfg.eval_source`
(relative to dataset_path). A split line is either a bare `NAME` or the official
`RGB/NAME.jpg Label/NAME.png`, of which the stem of the first path is the name; blank lines are
skipped.

Reading. Images are read with OpenCV, so they are BGR; the transform puts them in
`cfg.channel_order` ('bgr' reproduces the official loader, whose `cv2.imread(path,
cv2.COLOR_BGR2RGB)` is really IMREAD_ANYCOLOR: see dataloader/transforms.py). The extra modality is a
3-channel image (HHA), or with `cfg.x_is_single_channel` a 1-channel image replicated to 3 channels
as CMX does: 8-bit files are used as they are (a 3-channel file is converted to grey), 16-bit files
are taken as depth in millimetres and mapped linearly from 0..DEPTH_PNG_MAX_MM to 0..255 (clipped).
Labels: with `cfg.gt_transform` the file holds 0 = unlabeled and 1..C, and training sees label - 1
with 0 (and 255) -> 255, the ignore value; without it the file holds 0..C-1 and 255.

Epoch. As in the official code, the training split's length is `niters_per_epoch * batch_size`: the
names repeated `length // n` times plus `length % n` names taken from a permutation. The official
code draws that permutation anew on every item access (torch.randperm); here it is drawn once from
`cfg.seed`, so the epoch is a fixed list the sampler (dataloader/loader.py) shuffles.
"""
import copy
import os
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import cv2
import numpy as np
import torch

from config import derive_niters_per_epoch
from utils.constants import LAST_STAGE_STRIDE

from .corruptions import corrupt_images, frame_quantiles
from .transforms import EvalTransform, TrainTransform

DEPTH_PNG_MAX_MM = 10000        # 16-bit single-channel files: 0..10 m -> 0..255
IMAGE_EXTENSIONS = ('.jpg', '.jpeg', '.png', '.bmp', '.tif', '.tiff')
LISTED_PROBLEMS = 20            # how many offending files an error message lists
DATA_HELP = "see docs/data.md"
# Config keys holding the number of items of each split (None: the split file's length).
SIZE_KEYS = {'train': 'num_train_imgs', 'val': 'num_eval_imgs'}
# How a complete file of each format starts and ends: the JPEG end-of-image marker, the PNG IEND
# chunk (length 0, type, CRC).
JPEG_START, JPEG_END = b'\xff\xd8\xff', b'\xff\xd9'
PNG_START, PNG_END = b'\x89PNG\r\n\x1a\n', b'\x00\x00\x00\x00IEND\xaeB`\x82'


class DatasetError(ValueError):
    """A dataset folder, split file or data file is absent, unreadable or inconsistent."""


def split_file(cfg, split):
    if split not in ('train', 'val'):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    source = cfg.train_source if split == 'train' else cfg.eval_source
    return os.path.join(cfg.dataset_path, source)


def name_from_line(line):
    """'NAME' -> 'NAME'; 'RGB/NAME.jpg Label/NAME.png' -> 'NAME'."""
    first = line.split()[0]
    name = os.path.basename(first)
    stem, extension = os.path.splitext(name)
    return stem if extension.lower() in IMAGE_EXTENSIONS else name


def read_split(cfg, split):
    """The item names of a split, in file order. DatasetError if the dataset folder or the split file
    is absent, or the split file names nothing."""
    if not os.path.isdir(cfg.dataset_path):
        raise DatasetError(f"dataset folder '{cfg.dataset_path}' does not exist ({DATA_HELP})")
    path = split_file(cfg, split)
    if not os.path.isfile(path):
        raise DatasetError(f"split file '{path}' for the {split} split does not exist ({DATA_HELP})")
    with open(path) as f:
        names = [name_from_line(line) for line in f if line.strip()]
    if not names:
        raise DatasetError(f"split file '{path}' is empty: expected one item per line, "
                           f"'NAME' or 'RGB/NAME.jpg Label/NAME.png'")
    return names


def check_split_size(cfg, split, names, source):
    """The split's size in the config (num_train_imgs / num_eval_imgs), where set, must be the number
    of items the split file lists: the training epoch derives from it."""
    key = SIZE_KEYS[split]
    if cfg[key] is not None and cfg[key] != len(names):
        raise DatasetError(f"config key '{key}' is {cfg[key]}, but split file '{source}' lists {len(names)} "
                           f"items: set {key}={len(names)}, or None to take the split file's length")


def resolve_split_sizes(cfg):
    """Fills the split sizes the config leaves None (num_train_imgs, num_eval_imgs) from the split
    files, then niters_per_epoch from num_train_imgs: the one step that completes a training config,
    taken at the start of a run before the scheduler or a dataset reads them. A size that is set
    must be its split file's length (DatasetError). Returns cfg."""
    for split, key in SIZE_KEYS.items():
        names = read_split(cfg, split)
        check_split_size(cfg, split, names, split_file(cfg, split))
        if cfg[key] is None:
            cfg[key] = len(names)
    derive_niters_per_epoch(cfg)
    return cfg


def repeated_names(names):
    """{name: count} of the names a split lists more than once."""
    return {name: count for name, count in Counter(names).items() if count > 1}


def _warn_repeated_training_names(repeated, source):
    extra = sum(repeated.values()) - len(repeated)
    example = next(iter(repeated))
    warnings.warn(f"split file '{source}' lists {len(repeated)} name(s) more than once ({extra} extra "
                  f"line(s), e.g. '{example}' {repeated[example]} times): they are sampled that much more "
                  f"often in every epoch", stacklevel=3)


def item_paths(cfg, name, with_extra=True):
    """(rgb, extra, label) file paths of one item; extra is None without the extra modality."""
    return (os.path.join(cfg.dataset_path, cfg.rgb_folder, name + cfg.rgb_format),
            os.path.join(cfg.dataset_path, cfg.x_folder, name + cfg.x_format) if with_extra else None,
            os.path.join(cfg.dataset_path, cfg.label_folder, name + cfg.label_format))


def read_item(cfg, paths):
    """The arrays of an item as read (None for an absent extra path or an undecodable file)."""
    rgb_path, extra_path, label_path = paths
    return (read_rgb(rgb_path), None if extra_path is None else read_extra(extra_path, cfg.x_is_single_channel),
            read_label(label_path))


def read_rgb(path):
    """uint8 H x W x 3, BGR; None if OpenCV cannot decode the file."""
    return cv2.imread(path, cv2.IMREAD_COLOR)


def read_extra(path, single_channel):
    """uint8 H x W x 3 (BGR for a 3-channel file, the grey value replicated for a 1-channel one);
    None if OpenCV cannot decode the file."""
    if not single_channel:
        return cv2.imread(path, cv2.IMREAD_COLOR)
    image = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if image is None:
        return None
    if image.ndim == 3:
        image = cv2.cvtColor(image[..., :3], cv2.COLOR_BGR2GRAY)
    if image.dtype == np.uint16:
        scaled = image.astype(np.float32) * (255.0 / DEPTH_PNG_MAX_MM)
        image = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise DatasetError(f"'{path}': expected an 8- or 16-bit image, got {image.dtype}")
    return cv2.merge([image, image, image])


def read_label(path):
    """The label file's raw values, uint8 H x W; None if OpenCV cannot decode the file.
    DatasetError if it is not a single-channel 8-bit image."""
    label = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    if label is not None and (label.ndim != 2 or label.dtype != np.uint8):
        raise DatasetError(f"label file '{path}': expected a single-channel 8-bit image, got "
                           f"shape {label.shape} of {label.dtype}")
    return label


def transform_label(raw, gt_transform, ignore_label=255):
    """File values -> training values: with gt_transform, label - 1 with 0 (unlabeled) and
    ignore_label itself -> ignore_label; without it, the values as they are."""
    if not gt_transform:
        return raw
    ignored = (raw == 0) | (raw == ignore_label)
    return np.where(ignored, ignore_label, raw.astype(np.int16) - 1).astype(np.uint8)


def allowed_label_values(cfg):
    """The largest class value a label file may hold, and the ignore value it may also hold."""
    return (cfg.num_classes if cfg.gt_transform else cfg.num_classes - 1), cfg.background


def _describe(problems, what):
    shown = '\n  '.join(problems[:LISTED_PROBLEMS])
    hidden = len(problems) - LISTED_PROBLEMS
    more = f'\n  ... and {hidden} more' if hidden > 0 else ''
    return f'{what} ({len(problems)}):\n  {shown}{more}'


def incomplete_file(path):
    """Why a JPEG or PNG file is cut short, or None. OpenCV decodes a JPEG cut in half, with a grey
    tail and a warning that names no file, so the bytes are checked: a complete JPEG ends with its
    end-of-image marker, a PNG with its IEND chunk. Other formats are left to the decoder."""
    with open(path, 'rb') as f:
        start = f.read(len(PNG_START))
        size = f.seek(0, os.SEEK_END)
        f.seek(max(size - len(PNG_END), 0))
        end = f.read()
    if start.startswith(JPEG_START) and not end.endswith(JPEG_END):
        return f'{path}: truncated JPEG: it does not end with the end-of-image marker FFD9'
    if start == PNG_START and not end.endswith(PNG_END):
        return f'{path}: truncated PNG: it does not end with the IEND chunk'
    return None


def _too_small_to_evaluate(cfg, path, image):
    """Why the network cannot take an evaluation image at the smallest evaluation scale, or None."""
    scale = min(cfg.eval_scale_array)
    height, width = image.shape[:2]
    if min(round(height * scale), round(width * scale)) >= LAST_STAGE_STRIDE:
        return None
    return (f"{path}: {width}x{height} (width x height) is too small to evaluate: at scale {scale:g}, the "
            f"smallest of eval_scale_array, each side must keep at least {LAST_STAGE_STRIDE} pixels, the "
            f"stride of the encoder's last stage")


def _check_item(cfg, paths, evaluated):
    """(missing, unreadable, other problems) of one item, each a list of 'path: what'. An `evaluated`
    item must also be large enough for the network."""
    missing = [f'{path}: does not exist' for path in paths if path is not None and not os.path.isfile(path)]
    if missing:
        return missing, [], []
    incomplete = [problem for problem in map(incomplete_file, filter(None, paths)) if problem]
    if incomplete:
        return [], incomplete, []
    rgb_path, extra_path, label_path = paths
    try:
        images = read_item(cfg, paths)
    except DatasetError as e:
        return [], [], [str(e)]
    unreadable = [f'{path}: OpenCV cannot decode it'
                  for path, image in zip(paths, images) if path is not None and image is None]
    if unreadable:
        return [], unreadable, []
    rgb, extra, label = images
    problems = []
    if extra is None:
        if rgb.shape[:2] != label.shape:
            problems.append(f'{rgb_path}: size {rgb.shape[1]}x{rgb.shape[0]}, but {label_path} is '
                            f'{label.shape[1]}x{label.shape[0]} (width x height)')
    elif not rgb.shape[:2] == extra.shape[:2] == label.shape:
        problems.append(f'{rgb_path}: size {rgb.shape[1]}x{rgb.shape[0]}, but {extra_path} is '
                        f'{extra.shape[1]}x{extra.shape[0]} and {label_path} is '
                        f'{label.shape[1]}x{label.shape[0]} (width x height)')
    high, ignore = allowed_label_values(cfg)
    values = np.unique(label)
    bad = values[(values > high) & (values != ignore)]
    if bad.size:
        problems.append(f'{label_path}: label values {bad.tolist()} outside 0..{high} '
                        f'(num_classes={cfg.num_classes}, gt_transform={cfg.gt_transform}) '
                        f'and not the ignore value {ignore}')
    too_small = _too_small_to_evaluate(cfg, rgb_path, rgb) if evaluated else None
    if too_small:
        problems.append(too_small)
    return [], [], problems


def check_dataset(cfg, split, workers=4, with_extra=True):
    """Checks one split before training: the dataset folder and split file exist, the split's size
    in the config (where set) is the file's, every file the split names exists, is complete (JPEG and
    PNG) and OpenCV decodes it, the three images of an item have the same size, and label values are
    classes (0..C with gt_transform, where 0 is unlabeled; 0..C-1 without) or the ignore value;
    without `with_extra`, the extra modality's files are not needed. The evaluation split must list
    each name once, and its images must be large enough for the network at every evaluation scale;
    names the training split repeats get a warning. Every file is decoded once, by `workers`
    threads: about 3 s for the 795 training images of NYU Depth V2 (480x640), 0.1 s for 200
    synthetic 120x160 scenes. Returns the split's names; raises one DatasetError listing every
    problem found.
    """
    names = read_split(cfg, split)
    source = split_file(cfg, split)
    check_split_size(cfg, split, names, source)
    repeated = repeated_names(names)
    if repeated and split == 'train':
        _warn_repeated_training_names(repeated, source)
    all_paths = [item_paths(cfg, name, with_extra) for name in dict.fromkeys(names)]
    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(lambda paths: _check_item(cfg, paths, split == 'val'), all_paths))
    sections = []
    if repeated and split == 'val':
        sections.append(_describe([f'{name}: {count} times' for name, count in repeated.items()],
                                  'names listed more than once, which evaluation would count as often'))
    for position, what in enumerate(('files named by the split that do not exist',
                                     'files that cannot be read', 'inconsistent items')):
        found = [problem for result in results for problem in result[position]]
        if found:
            sections.append(_describe(found, what))
    if sections:
        raise DatasetError(f'dataset check of {source} failed ({DATA_HELP}):\n' + '\n'.join(sections))
    return names


def epoch_names(names, length, seed):
    """The official epoch of `length` items: the names repeated `length // n` times, then
    `length % n` of them in the order of a permutation drawn from `seed`."""
    repeats, remainder = divmod(length, len(names))
    permutation = np.random.default_rng(seed).permutation(len(names))
    return names * repeats + [names[i] for i in permutation[:remainder]]


class RGBXDataset(torch.utils.data.Dataset):
    """Items are dicts: 'rgb' and 'extra' float32 (3, H, W), 'label' int64 (H, W) with values
    0..C-1 or cfg.background, 'name' str. With `with_extra=False` (an RGB-only run) the extra
    modality is neither checked nor read, and items have no 'extra'.

    `split` 'train' has `cfg.niters_per_epoch * cfg.batch_size` items (see the module docstring),
    'val' one per line of the split file. `transform` defaults to TrainTransform for 'train' and
    EvalTransform for 'val'. An item is asked for by an int index or an `(index, sample_seed)` pair;
    the seed drives the item's random augmentation, so the result does not depend on which process
    loads it. A bare index uses the seed (cfg.seed, index).

    `corruption` (a dataloader.corruptions.CorruptionSetting, default None: the clean images) is
    applied to the images as read, before the transform; with_corruption gives a copy with another.
    """

    def __init__(self, cfg, split, transform=None, with_extra=True, corruption=None):
        self.cfg = cfg
        self.split = split
        self.with_extra = with_extra
        self.corruption = corruption
        if split == 'train' and cfg.niters_per_epoch is None:
            raise ValueError("config key 'niters_per_epoch' is None: resolve_split_sizes(cfg) derives it "
                             "from the training split before a training dataset is built")
        self.names = check_dataset(cfg, split, with_extra=with_extra)
        self.frame_quantiles = frame_quantiles(self.names) if corruption is not None else {}
        if split == 'train':
            self.items = epoch_names(self.names, cfg.niters_per_epoch * cfg.batch_size, cfg.seed)
        else:
            self.items = list(self.names)
        if transform is None:
            transform = TrainTransform(cfg) if split == 'train' else EvalTransform(cfg)
        self.transform = transform

    def __len__(self):
        return len(self.items)

    def with_corruption(self, corruption):
        """The same dataset (not checked again) with its images under `corruption`."""
        other = copy.copy(self)
        other.corruption = corruption
        other.frame_quantiles = frame_quantiles(self.names)
        return other

    def read(self, name):
        """The item's arrays as read: rgb and extra uint8 H x W x 3 (BGR; extra None without the
        extra modality), label uint8 H x W after the label transform."""
        paths = item_paths(self.cfg, name, self.with_extra)
        arrays = read_item(self.cfg, paths)
        for path, array in zip(paths, arrays):
            if path is not None and array is None:
                raise DatasetError(f"'{path}' cannot be read (it could when the dataset was checked)")
        rgb, extra = corrupt_images(*arrays[:2], self.corruption, key=name, quantile=self.frame_quantiles.get(name))
        return rgb, extra, transform_label(arrays[2], self.cfg.gt_transform, self.cfg.background)

    def __getitem__(self, item):
        index, sample_seed = item if isinstance(item, (tuple, list)) else (item, None)
        index = int(index)
        if sample_seed is None:
            sample_seed = (self.cfg.seed, index)
        name = self.items[index]
        rgb, extra, label = self.transform(*self.read(name), np.random.default_rng(sample_seed))
        item = {'rgb': rgb, 'label': label, 'name': name}
        if extra is not None:
            item['extra'] = extra
        return item
