"""Training and evaluation transforms for (RGB, extra modality, label) triples.

Both take the arrays as the dataset reads them with OpenCV (colour channels in BGR order, uint8
H x W x 3; label uint8 H x W, already 0..C-1 or 255) and return tensors: two float32 (3, H, W) and an
int64 (H, W) label. The extra modality may be None (an RGB-only run never reads it); it stays None.

Channel order. The official loader reads images with `cv2.imread(path, cv2.COLOR_BGR2RGB)`; that
constant is 4 = IMREAD_ANYCOLOR, not a conversion, so images *and* HHA reach the network in BGR
order, normalised with the ImageNet mean/std given in RGB order (channel 0 of a BGR image gets the
red statistics). The released PrimKD/CMX checkpoints were trained that way. `cfg.channel_order`
'bgr' (the default) reproduces it; 'rgb' converts both images to RGB before normalising.

Training follows the official order: random horizontal flip, random scale from
`cfg.train_scale_array` (size `int(side * scale)`, linear for images, nearest for the label),
normalise `(x / 255 - mean) / std`, then one random crop position for all three arrays and a centred
pad to (image_height, image_width): images padded with 0 (after normalisation), the label with
`cfg.background`. One deliberate difference: the official crop position is drawn with
`random.randint(0, side - crop + 1)`, inclusive at both ends, which sometimes crops one row/column
short and pads it with ignore; here the position is uniform in 0..side - crop.

All randomness comes from the `rng` argument (a `numpy.random.Generator`), drawn in a fixed order
(flip, scale, crop row, crop column), so one seed gives one result whatever process runs it.
"""
import cv2
import numpy as np
import torch


def to_channel_order(image_bgr, channel_order):
    """An OpenCV (BGR) image in the order the network gets: 'bgr' unchanged, 'rgb' converted."""
    if channel_order == 'rgb':
        return np.ascontiguousarray(image_bgr[..., ::-1])
    if channel_order == 'bgr':
        return image_bgr
    raise ValueError(f"channel_order must be 'bgr' or 'rgb', got {channel_order!r}")


def normalize(image_uint8, mean, std):
    """(image / 255 - mean) / std per channel, float32. `mean` and `std` are indexed by channel
    position, whatever the channel order (see the module docstring)."""
    mean = np.asarray(mean, dtype=np.float32)
    std = np.asarray(std, dtype=np.float32)
    return (image_uint8.astype(np.float32) / 255.0 - mean) / std


def network_input(image_bgr, channel_order, mean, std) -> torch.Tensor:
    """An OpenCV (BGR) uint8 H x W x 3 image as the network takes it: a float32 (3, H, W) tensor in
    `channel_order`, normalised. The one preparation of evaluation inputs (dataset or user files)."""
    image = normalize(to_channel_order(image_bgr, channel_order), mean, std)
    return torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def random_crop_position(size, crop_size, rng):
    """Top-left corner of a crop of `crop_size` in an image of `size` (both (h, w)): uniform where
    the image is larger than the crop, 0 where it is not (it is padded instead)."""
    return tuple(int(rng.integers(0, side - crop + 1)) if side > crop else 0
                 for side, crop in zip(size, crop_size))


def crop_pad(image, position, crop_size, pad_value):
    """The `crop_size` window at `position`, padded evenly (the extra row/column at the bottom/right,
    as the official code) with `pad_value` where the image is smaller than the crop."""
    (top, left), (crop_h, crop_w) = position, crop_size
    window = image[top:top + crop_h, left:left + crop_w]
    pad_h, pad_w = crop_h - window.shape[0], crop_w - window.shape[1]
    if pad_h == 0 and pad_w == 0:
        return window
    padding = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)]
    padding += [(0, 0)] * (image.ndim - 2)
    return np.pad(window, padding, mode='constant', constant_values=pad_value)


def _resize(image, size, interpolation):
    # Flipping leaves a negative-stride view, which OpenCV does not take.
    return cv2.resize(np.ascontiguousarray(image), size, interpolation=interpolation)


def _check_inputs(rgb, extra, label):
    images = {'rgb': rgb} if extra is None else {'rgb': rgb, 'extra': extra}
    if any(image.ndim != 3 or image.shape[2] != 3 for image in images.values()):
        raise ValueError('expected H x W x 3 images, got '
                         + ' and '.join(f'{k} {v.shape}' for k, v in images.items()))
    if label.ndim != 2 or any(image.shape[:2] != label.shape for image in images.values()):
        raise ValueError(', '.join(f'{k} {v.shape}' for k, v in images.items())
                         + f' and label {label.shape} must have the same height and width')


def _to_tensor(image):
    """H x W x C array -> (C, H, W) tensor; None stays None (a run without the extra modality)."""
    return None if image is None else torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))


def _each(function, image, *args):
    """`function(image, *args)`, or None for an absent extra modality."""
    return None if image is None else function(image, *args)


class EvalTransform:
    """Channel order and normalisation only; the image keeps its size."""

    def __init__(self, cfg):
        self.channel_order = cfg.channel_order
        self.mean, self.std = cfg.norm_mean, cfg.norm_std

    def __call__(self, rgb, extra, label, rng=None):
        _check_inputs(rgb, extra, label)
        rgb, extra = (_each(network_input, image, self.channel_order, self.mean, self.std)
                      for image in (rgb, extra))
        return rgb, extra, torch.from_numpy(label.astype(np.int64))


class TrainTransform:
    """Flip, scale, normalise, crop/pad to (cfg.image_height, cfg.image_width); the same geometric
    transform for RGB, extra and label."""

    def __init__(self, cfg):
        self.channel_order = cfg.channel_order
        self.mean, self.std = cfg.norm_mean, cfg.norm_std
        self.scales = [float(s) for s in cfg.train_scale_array]
        self.crop_size = (cfg.image_height, cfg.image_width)
        self.ignore_label = cfg.background

    def __call__(self, rgb, extra, label, rng):
        _check_inputs(rgb, extra, label)
        rgb, extra = (_each(to_channel_order, image, self.channel_order) for image in (rgb, extra))
        if rng.random() < 0.5:
            rgb, extra, label = rgb[:, ::-1], _each(lambda image: image[:, ::-1], extra), label[:, ::-1]

        scale = self.scales[int(rng.integers(len(self.scales)))]
        height, width = int(label.shape[0] * scale), int(label.shape[1] * scale)
        if (height, width) != label.shape:
            rgb = _resize(rgb, (width, height), cv2.INTER_LINEAR)
            extra = _each(_resize, extra, (width, height), cv2.INTER_LINEAR)
            label = _resize(label, (width, height), cv2.INTER_NEAREST)

        rgb, extra = normalize(rgb, self.mean, self.std), _each(normalize, extra, self.mean, self.std)

        position = random_crop_position((height, width), self.crop_size, rng)
        rgb = crop_pad(rgb, position, self.crop_size, 0.0)
        extra = _each(crop_pad, extra, position, self.crop_size, 0.0)
        label = crop_pad(label, position, self.crop_size, self.ignore_label)
        return _to_tensor(rgb), _to_tensor(extra), torch.from_numpy(label.astype(np.int64))
