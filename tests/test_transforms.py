"""Transforms: normalisation against a hand computation, channel order, the crop/pad rule, the
geometric alignment of RGB, extra and label, and reproducibility for a seed."""
import os

import cv2
import numpy as np
import pytest
import torch

from config import REPO_ROOT, load_config
from dataloader.transforms import EvalTransform, TrainTransform, crop_pad, random_crop_position

MEAN = np.array([0.485, 0.456, 0.406])
STD = np.array([0.229, 0.224, 0.225])
# Distinct colours per class (BGR as read by OpenCV); extra gets another palette.
PALETTE = np.array([[200, 30, 30], [30, 200, 30], [30, 30, 200], [200, 200, 30],
                    [200, 30, 200], [30, 200, 200], [120, 60, 250], [250, 250, 250]], np.uint8)
PALETTE_EXTRA = np.roll(PALETTE, 3, axis=0)[:, ::-1].copy()


def make_cfg(**overrides):
    return load_config(os.path.join(REPO_ROOT, 'config', 'nyu_b4.py'), overrides)


def block_label(height, width, block=8, classes=8, seed=0):
    """Constant blocks of random classes: nearest-neighbour and linear resizing agree inside them."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, classes, (height // block + 1, width // block + 1)).astype(np.uint8)
    return np.kron(coarse, np.ones((block, block), np.uint8))[:height, :width]


def decode(tensor):
    """Normalised (3, H, W) -> uint8-scale (H, W, 3) colours, in float64."""
    image = tensor.numpy().transpose(1, 2, 0).astype(np.float64)
    return (image * STD + MEAN) * 255


def test_eval_normalisation_matches_hand_computation_in_both_channel_orders():
    rgb = np.zeros((2, 3, 3), np.uint8)
    rgb[0, 0] = (10, 20, 30)          # B, G, R as OpenCV reads it
    extra = np.full((2, 3, 3), 255, np.uint8)
    extra[1, 2] = (0, 128, 255)
    label = np.zeros((2, 3), np.uint8)

    out_rgb, out_extra, out_label = EvalTransform(make_cfg(channel_order='bgr'))(rgb, extra, label)
    # Official order: channel 0 holds blue, normalised with the red statistics.
    expected = [(10 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (30 / 255 - 0.406) / 0.225]
    assert out_rgb.dtype == torch.float32 and out_rgb.shape == (3, 2, 3)
    np.testing.assert_allclose(out_rgb[:, 0, 0].numpy(), expected, rtol=1e-6)
    expected_extra = [(0 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    np.testing.assert_allclose(out_extra[:, 1, 2].numpy(), expected_extra, rtol=1e-6)
    assert out_label.dtype == torch.int64 and out_label.shape == (2, 3)

    out_rgb, out_extra, _ = EvalTransform(make_cfg(channel_order='rgb'))(rgb, extra, label)
    expected = [(30 / 255 - 0.485) / 0.229, (20 / 255 - 0.456) / 0.224, (10 / 255 - 0.406) / 0.225]
    np.testing.assert_allclose(out_rgb[:, 0, 0].numpy(), expected, rtol=1e-6)
    expected_extra = [(1 - 0.485) / 0.229, (128 / 255 - 0.456) / 0.224, (0 - 0.406) / 0.225]
    np.testing.assert_allclose(out_extra[:, 1, 2].numpy(), expected_extra, rtol=1e-6)


def test_crop_pad_pads_evenly_with_the_extra_row_at_the_bottom():
    image = np.arange(12, dtype=np.uint8).reshape(3, 4)
    out = crop_pad(image, (0, 1), (6, 2), 255)
    expected = np.full((6, 2), 255, np.uint8)
    expected[1:4] = image[:, 1:3]     # 3 rows of padding: 1 on top, 2 at the bottom
    np.testing.assert_array_equal(out, expected)


def test_crop_positions_stay_inside_the_image():
    rng = np.random.default_rng(0)
    positions = {random_crop_position((10, 7), (8, 7), rng) for _ in range(200)}
    # Rows 0..2 (10 - 8), column 0 only: never a crop running past the border.
    assert positions == {(0, 0), (1, 0), (2, 0)}
    assert random_crop_position((5, 5), (8, 9), rng) == (0, 0)


def test_scale_then_pad_matches_opencv_and_pads_label_with_ignore():
    cfg = make_cfg(train_scale_array=[0.5], image_height=40, image_width=50, channel_order='bgr')
    label = block_label(48, 64)
    rgb, extra = PALETTE[label], PALETTE_EXTRA[label]
    out_rgb, out_extra, out_label = TrainTransform(cfg)(rgb, extra, label, np.random.default_rng(3))
    out_label = out_label.numpy()
    # 48x64 * 0.5 = 24x32 in a 40x50 crop: 16 rows of padding (8 + 8), 18 columns (9 + 9).
    # The flip comes first, so the content is the nearest-neighbour resize of label or its mirror.
    candidates = [cv2.resize(np.ascontiguousarray(source), (32, 24), interpolation=cv2.INTER_NEAREST)
                  for source in (label, label[:, ::-1])]
    assert any(np.array_equal(out_label[8:32, 9:41], candidate) for candidate in candidates)
    padding = np.ones((40, 50), bool)
    padding[8:32, 9:41] = False
    assert (out_label[padding] == 255).all()
    assert (out_rgb.numpy()[:, padding] == 0).all() and (out_extra.numpy()[:, padding] == 0).all()


def test_labels_are_resized_by_nearest_neighbour():
    cfg = make_cfg(train_scale_array=[0.75, 1.25, 1.75], image_height=48, image_width=64)
    label = np.where(block_label(48, 64, block=3, classes=2) == 1, 6, 1).astype(np.uint8)
    rgb, extra = PALETTE[label], PALETTE_EXTRA[label]
    for seed in range(6):
        out_label = TrainTransform(cfg)(rgb, extra, label, np.random.default_rng(seed))[2]
        # Linear interpolation would produce values between 1 and 6.
        assert set(torch.unique(out_label).tolist()) <= {1, 6, 255}


@pytest.mark.parametrize('seed', range(12))
def test_flip_scale_crop_keep_rgb_extra_and_label_aligned(seed):
    # Crop taller and narrower than some scales give: crop in one direction, pad in the other.
    cfg = make_cfg(train_scale_array=[0.5, 0.75, 1.25, 1.5, 1.75], image_height=56, image_width=60,
                   channel_order='bgr')
    label = block_label(48, 64, seed=seed)
    label[:8, :8] = 255                                # an ignored block
    rgb, extra = PALETTE[label % 8], PALETTE_EXTRA[label % 8]
    out_rgb, out_extra, out_label = TrainTransform(cfg)(rgb, extra, label, np.random.default_rng(seed))
    out_label = out_label.numpy()
    assert out_label.shape == (56, 60) and out_rgb.shape == out_extra.shape == (3, 56, 60)

    # Pixels whose 3x3 neighbourhood in the label is one class: linear interpolation cannot have
    # mixed colours there, so the colour must decode to exactly that class. The crop's border rows
    # and columns have neighbours outside the crop: they count as not uniform (value 254).
    kernel = np.ones((3, 3), np.uint8)
    label_u8 = cv2.copyMakeBorder(out_label.astype(np.uint8), 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=254)
    uniform = (cv2.dilate(label_u8, kernel) == cv2.erode(label_u8, kernel))[1:-1, 1:-1]
    check = uniform & (out_label != 255)
    assert check.sum() > 150
    np.testing.assert_allclose(decode(out_rgb)[check], PALETTE[out_label[check]], atol=0.01)
    np.testing.assert_allclose(decode(out_extra)[check], PALETTE_EXTRA[out_label[check]], atol=0.01)


def test_flip_happens_for_some_seeds_and_not_others():
    cfg = make_cfg(train_scale_array=[1], image_height=48, image_width=64)
    label = block_label(48, 64)
    rgb, extra = PALETTE[label], PALETTE_EXTRA[label]
    outcomes = set()
    for seed in range(20):
        out_label = TrainTransform(cfg)(rgb, extra, label, np.random.default_rng(seed))[2].numpy()
        if np.array_equal(out_label, label):
            outcomes.add('kept')
        elif np.array_equal(out_label, label[:, ::-1]):
            outcomes.add('flipped')
        else:
            outcomes.add('other')
    assert outcomes == {'kept', 'flipped'}


def test_same_seed_same_tensors_different_seeds_differ():
    cfg = make_cfg(train_scale_array=[0.75, 1, 1.25], image_height=40, image_width=40)
    label = block_label(48, 64)
    rgb, extra = PALETTE[label], PALETTE_EXTRA[label]
    transform = TrainTransform(cfg)
    first = transform(rgb, extra, label, np.random.default_rng(7))
    again = transform(rgb, extra, label, np.random.default_rng(7))
    for a, b in zip(first, again):
        assert torch.equal(a, b)
    others = [transform(rgb, extra, label, np.random.default_rng(s))[2] for s in range(8, 12)]
    assert any(not torch.equal(first[2], other) for other in others)
