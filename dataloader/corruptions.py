"""Corruptions of test inputs: a failing depth sensor, a misaligned depth camera, a bad exposure.

CORRUPTIONS is the one table of them: per corruption the modality it hits, what its severity sets and
that setting at severities 1..5 (severity 0 is the clean input, returned unchanged). They act on the
images as the dataset reads them (uint8 H x W x 3, BGR; the extra modality is the stored HHA, or a
1-channel depth image replicated to 3 channels): evaluation splits store HHA, and HHA cannot be
remade from a stored HHA image. tools/infer.py, which can get raw depth, corrupts the depth in metres
instead, before its holes are in-painted and HHA is made (corrupt_depth_metres), as a sensor would.

Every corruption is deterministic per image: its random draws come from (seed, corruption name,
image key) alone, not from the severity, so a hole at severity 2 is also a hole at severity 3 and
every model compared sees the same corrupted images. On a dataset split, depth_missing drops exactly
the severity's share of the frames (those first in the order of their draws: frame_quantiles); a
single image (tools/infer.py) loses its depth with that probability.
"""
import argparse
import zlib
from typing import NamedTuple, Optional

import cv2
import numpy as np

SEVERITIES = (1, 2, 3, 4, 5)
DEPTH, RGB = 'depth', 'rgb'
# The range over which depth in metres is quantized (NYU's Kinect reaches about 10 m).
DEPTH_RANGE_M = 10.0
# Holes are blobs about this fraction of the image's longer side across.
HOLE_BLOB_FRACTION = 1 / 24


class Corruption(NamedTuple):
    name: str
    modality: str          # DEPTH or RGB: the input it changes
    parameter: str         # what the severity sets
    levels: tuple          # that setting at severities 1..5


CORRUPTIONS = {c.name: c for c in (
    Corruption('depth_missing', DEPTH, 'share of frames whose depth is missing (extra image all 0)',
               (0.2, 0.4, 0.6, 0.8, 1.0)),
    Corruption('depth_holes', DEPTH, 'share of pixels lost (0), in blobs', (0.05, 0.1, 0.2, 0.35, 0.5)),
    Corruption('depth_noise', DEPTH, 'Gaussian noise, sd relative to the value', (0.02, 0.05, 0.1, 0.2, 0.3)),
    Corruption('depth_shift', DEPTH, 'depth moved right by N pixels (misaligned cameras; 0 enters)',
               (1, 2, 4, 8, 16)),
    Corruption('depth_quantize', DEPTH, 'bits kept of the 8-bit image (of 0-10 m for raw depth)',
               (6, 5, 4, 3, 2)),
    Corruption('rgb_dark', RGB, '(brightness factor, noise sd in grey levels)',
               ((0.5, 2.0), (0.35, 3.0), (0.25, 4.0), (0.15, 5.0), (0.08, 6.0))),
    Corruption('rgb_blur', RGB, 'horizontal motion-blur length in pixels', (3, 5, 9, 15, 21)),
    Corruption('rgb_overexposed', RGB, 'exposure gain (values clipped at 255)', (1.5, 2.0, 3.0, 4.0, 6.0)),
)}


class CorruptionError(ValueError):
    """An unknown corruption or a severity out of range; the message names it."""


class CorruptionSetting(NamedTuple):
    name: str
    severity: int

    @property
    def corruption(self) -> Corruption:
        return CORRUPTIONS[self.name]

    @property
    def level(self):
        """The setting of the table at this severity (None for severity 0, the clean input)."""
        return self.corruption.levels[self.severity - 1] if self.severity else None

    def __str__(self):
        return f'{self.name}:{self.severity}'


def parse_corruption(text: str) -> list:
    """'NAME' -> the five severities of NAME; 'NAME:S' -> that one (S in 1..5)."""
    name, separator, severity = text.partition(':')
    if name not in CORRUPTIONS:
        raise CorruptionError(f"--corrupt {text}: unknown corruption '{name}'; known: {', '.join(CORRUPTIONS)}")
    if not separator:
        return [CorruptionSetting(name, s) for s in SEVERITIES]
    if not severity.isdigit() or int(severity) not in SEVERITIES:
        raise CorruptionError(f'--corrupt {text}: the severity must be one of '
                              f'{", ".join(map(str, SEVERITIES))}, got {severity!r}')
    return [CorruptionSetting(name, int(severity))]


def corruption_arg(text: str) -> list:
    """parse_corruption as an argparse type: a bad value is argparse's one-line usage error."""
    try:
        return parse_corruption(text)
    except CorruptionError as e:
        raise argparse.ArgumentTypeError(str(e).removeprefix(f'--corrupt {text}: ')) from None


def unique_settings(groups) -> list:
    """The settings of several parsed --corrupt values (lists of settings), in order, each once."""
    return list(dict.fromkeys(setting for group in groups for setting in group))


def parse_corruptions(values) -> list:
    """The settings of several --corrupt values, in order, each once."""
    return unique_settings(parse_corruption(text) for text in values)


def image_rng(seed: int, name: str, key: str) -> np.random.Generator:
    """The generator of one corruption of one image: from the seed, corruption and image key alone."""
    return np.random.default_rng([seed, zlib.crc32(name.encode()), zlib.crc32(key.encode())])


def frame_quantiles(keys, seed: int = 0) -> dict:
    """{key: (rank + 0.5) / n} of the frames in the order of their depth_missing draws: the frames with a
    quantile below a share s are exactly round(s * n) of them."""
    order = sorted(keys, key=lambda key: image_rng(seed, 'depth_missing', key).random())
    return {key: (rank + 0.5) / len(order) for rank, key in enumerate(order)}


def hole_mask(shape, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Boolean mask of `fraction` of the pixels, in blobs: the lowest values of smoothed noise."""
    height, width = shape
    noise = rng.standard_normal((height, width)).astype(np.float32)
    sigma = max(1.0, HOLE_BLOB_FRACTION * max(height, width))
    field = cv2.GaussianBlur(noise, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    count = int(round(fraction * height * width))
    mask = np.zeros(height * width, dtype=bool)
    mask[np.argsort(field, axis=None, kind='stable')[:count]] = True
    return mask.reshape(height, width)


def shift_right(image: np.ndarray, pixels: int) -> np.ndarray:
    """The image moved right by `pixels`; the columns that enter are 0 (no measurement)."""
    out = np.zeros_like(image)
    out[:, pixels:] = image[:, :image.shape[1] - pixels]
    return out


def _to_uint8(values: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(values), 0, 255).astype(np.uint8)


def _frame_missing(level, rng, quantile) -> bool:
    return (rng.random() if quantile is None else quantile) < level


def _corrupt_depth_image(extra: np.ndarray, setting: CorruptionSetting, rng, quantile=None) -> np.ndarray:
    name, level = setting.name, setting.level
    if name == 'depth_missing':
        return np.zeros_like(extra) if _frame_missing(level, rng, quantile) else extra
    if name == 'depth_holes':
        out = extra.copy()
        out[hole_mask(extra.shape[:2], level, rng)] = 0
        return out
    if name == 'depth_noise':
        # one relative error per pixel, the same in the three channels: one depth measurement each
        factor = 1 + level * rng.standard_normal(extra.shape[:2])
        return _to_uint8(extra * factor[..., None])
    if name == 'depth_shift':
        return shift_right(extra, level)
    if name == 'depth_quantize':
        step = 1 << (8 - level)
        return ((extra // step) * step + step // 2).astype(np.uint8)
    raise AssertionError(name)


def _corrupt_rgb_image(rgb: np.ndarray, setting: CorruptionSetting, rng) -> np.ndarray:
    name, level = setting.name, setting.level
    if name == 'rgb_dark':
        factor, noise_sd = level
        return _to_uint8(rgb * factor + noise_sd * rng.standard_normal(rgb.shape))
    if name == 'rgb_blur':
        kernel = np.full((1, level), 1.0 / level, dtype=np.float32)
        return cv2.filter2D(rgb, -1, kernel, borderType=cv2.BORDER_REFLECT)
    if name == 'rgb_overexposed':
        return _to_uint8(rgb.astype(np.float32) * level)
    raise AssertionError(name)


def corrupt_images(rgb: np.ndarray, extra: Optional[np.ndarray], setting: Optional[CorruptionSetting],
                   key: str, seed: int = 0, quantile: Optional[float] = None):
    """(rgb, extra) with `setting` applied to the images of one item (key: its name; quantile: its
    frame_quantiles entry in a split, for depth_missing). The clean setting (None or severity 0) returns
    them unchanged; a depth corruption needs the extra image."""
    if setting is None or setting.severity == 0:
        return rgb, extra
    rng = image_rng(seed, setting.name, key)
    if setting.corruption.modality == RGB:
        return _corrupt_rgb_image(rgb, setting, rng), extra
    if extra is None:
        raise CorruptionError(f'{setting}: a depth corruption needs the extra modality, which this model '
                              f'does not take')
    return rgb, _corrupt_depth_image(extra, setting, rng, quantile)


def corrupt_depth_metres(depth: np.ndarray, setting: CorruptionSetting, key: str, seed: int = 0) -> np.ndarray:
    """Depth in metres (0 = no measurement) with a depth corruption applied, as a sensor would give it."""
    if setting.severity == 0:
        return depth
    name, level = setting.name, setting.level
    rng = image_rng(seed, name, key)
    measured = depth > 0
    if name == 'depth_missing':
        return np.zeros_like(depth) if _frame_missing(level, rng, None) else depth
    if name == 'depth_holes':
        out = depth.copy()
        out[hole_mask(depth.shape, level, rng)] = 0
        return out
    if name == 'depth_noise':
        return np.where(measured, depth * (1 + level * rng.standard_normal(depth.shape)), 0).clip(min=0)
    if name == 'depth_shift':
        return shift_right(depth, level)
    if name == 'depth_quantize':
        step = DEPTH_RANGE_M / (1 << level)
        return np.where(measured, (np.floor(depth / step) + 0.5) * step, 0).astype(depth.dtype)
    raise CorruptionError(f'{setting}: not a depth corruption')


def markdown_table() -> str:
    """The table of corruptions and their severities, as the docs show it."""
    lines = ['| corruption | input | severity sets | 1 | 2 | 3 | 4 | 5 |', '|---|---|---|---|---|---|---|---|']
    for c in CORRUPTIONS.values():
        levels = ' | '.join(str(level).replace(' ', '') for level in c.levels)
        lines.append(f'| `{c.name}` | {c.modality} | {c.parameter} | {levels} |')
    return '\n'.join(lines)
