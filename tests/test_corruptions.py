"""dataloader/corruptions.py: what each corruption does to a known input, that it is the same twice and
nested over severities, that the clean setting returns the input unchanged, and its bad-input lines."""
import argparse

import numpy as np
import pytest

from dataloader.corruptions import (CORRUPTIONS, SEVERITIES, CorruptionError, CorruptionSetting, corrupt_depth_metres,
                                    corrupt_images, corruption_arg, frame_quantiles, markdown_table,
                                    parse_corruption, parse_corruptions, shift_right)

H, W = 120, 160


def images(seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.integers(20, 230, (H, W, 3), dtype=np.uint8)
    extra = rng.integers(1, 255, (H, W, 3), dtype=np.uint8)   # no 0: every 0 afterwards is a hole
    return rgb, extra


def depth_metres(seed=0):
    return np.random.default_rng(seed).uniform(0.5, 9.5, (H, W)).astype(np.float32)


def setting(name, severity):
    return CorruptionSetting(name, severity)


@pytest.mark.parametrize('name', CORRUPTIONS)
def test_the_clean_setting_returns_the_input_unchanged(name):
    rgb, extra = images()
    for clean in (None, setting(name, 0)):
        got_rgb, got_extra = corrupt_images(rgb, extra, clean, 'a')
        assert got_rgb is rgb and got_extra is extra
    if CORRUPTIONS[name].modality == 'depth':
        depth = depth_metres()
        assert corrupt_depth_metres(depth, setting(name, 0), 'a') is depth


@pytest.mark.parametrize('name', CORRUPTIONS)
def test_each_corruption_is_the_same_twice_and_changes_only_its_modality(name):
    rgb, extra = images()
    first = corrupt_images(rgb, extra, setting(name, 3), 'room_0001')
    second = corrupt_images(rgb.copy(), extra.copy(), setting(name, 3), 'room_0001')
    assert all(np.array_equal(a, b) for a, b in zip(first, second))
    changed = 0 if CORRUPTIONS[name].modality == 'rgb' else 1
    assert np.array_equal(first[1 - changed], (rgb, extra)[1 - changed])   # the other input untouched
    if name != 'depth_missing':   # a frame may keep its depth at severity 3
        assert not np.array_equal(first[changed], (rgb, extra)[changed])
    assert first[changed].dtype == np.uint8 and first[changed].shape == (H, W, 3)


@pytest.mark.parametrize('severity', SEVERITIES)
def test_holes_remove_the_severitys_share_of_pixels_in_blobs(severity):
    _, extra = images()
    fraction = CORRUPTIONS['depth_holes'].levels[severity - 1]
    _, holed = corrupt_images(None, extra, setting('depth_holes', severity), 'k')
    lost = (holed == 0).all(axis=-1)
    assert abs(lost.mean() - fraction) < 0.01
    assert np.array_equal(holed[~lost], extra[~lost])
    # blobs, not salt: most lost pixels have a lost right neighbour (about `fraction` for scattered ones)
    neighbours = lost[:, :-1] & lost[:, 1:]
    assert neighbours.sum() / lost[:, :-1].sum() > 0.8
    depth = corrupt_depth_metres(depth_metres(), setting('depth_holes', severity), 'k')
    assert abs((depth == 0).mean() - fraction) < 0.01


def test_holes_and_missing_frames_are_nested_over_severities():
    _, extra = images()
    masks = [(corrupt_images(None, extra, setting('depth_holes', s), 'k')[1] == 0).all(axis=-1) for s in SEVERITIES]
    assert all((low <= high).all() for low, high in zip(masks, masks[1:]))
    keys = [f'frame{i}' for i in range(2000)]
    missing = [{k for k in keys if not corrupt_images(None, extra, setting('depth_missing', s), k)[1].any()}
               for s in SEVERITIES]
    assert all(low <= high for low, high in zip(missing, missing[1:]))
    for s, dropped in zip(SEVERITIES, missing):
        assert abs(len(dropped) / len(keys) - CORRUPTIONS['depth_missing'].levels[s - 1]) < 0.03
    assert len(missing[-1]) == len(keys)


@pytest.mark.parametrize('severity', SEVERITIES)
def test_shift_moves_the_depth_by_exactly_n_pixels(severity):
    _, extra = images()
    n = CORRUPTIONS['depth_shift'].levels[severity - 1]
    _, shifted = corrupt_images(None, extra, setting('depth_shift', severity), 'k')
    assert np.array_equal(shifted[:, n:], extra[:, :W - n]) and not shifted[:, :n].any()
    depth = depth_metres()
    moved = corrupt_depth_metres(depth, setting('depth_shift', severity), 'k')
    assert np.array_equal(moved[:, n:], depth[:, :W - n]) and not moved[:, :n].any()
    assert np.array_equal(shift_right(np.arange(5)[None], 2), [[0, 0, 0, 1, 2]])


def test_noise_is_gaussian_with_the_relative_sd_and_keeps_holes():
    level = CORRUPTIONS['depth_noise'].levels[2]
    flat = np.full((H, W, 3), 100, dtype=np.uint8)
    _, noisy = corrupt_images(None, flat, setting('depth_noise', 3), 'k')
    relative = noisy[..., 0] / 100.0 - 1
    assert abs(relative.mean()) < 0.005 and abs(relative.std() - level) < 0.1 * level
    assert (noisy == noisy[..., :1]).all()   # one measurement per pixel: the channels move together
    depth = depth_metres()
    depth[:10] = 0
    noisy_depth = corrupt_depth_metres(depth, setting('depth_noise', 3), 'k')
    assert not noisy_depth[:10].any()
    ratio = noisy_depth[10:] / depth[10:] - 1
    assert abs(ratio.std() - level) < 0.1 * level


@pytest.mark.parametrize('severity', SEVERITIES)
def test_quantize_keeps_the_severitys_bits(severity):
    bits = CORRUPTIONS['depth_quantize'].levels[severity - 1]
    ramp = np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 3, axis=-1)
    _, quantized = corrupt_images(None, ramp, setting('depth_quantize', severity), 'k')
    step = 256 >> bits
    assert len(np.unique(quantized)) == 1 << bits
    assert (np.abs(quantized.astype(int) - ramp) <= step // 2).all()
    depth = depth_metres()
    q = corrupt_depth_metres(depth, setting('depth_quantize', severity), 'k')
    assert np.abs(q - depth).max() <= 10.0 / (1 << bits) / 2 + 1e-6


def test_rgb_corruptions_on_known_images():
    flat = np.full((H, W, 3), 100, dtype=np.uint8)
    factor, noise_sd = CORRUPTIONS['rgb_dark'].levels[1]
    dark, _ = corrupt_images(flat, None, setting('rgb_dark', 2), 'k')
    assert abs(dark.mean() - 100 * factor) < 0.5 and abs(dark.std() - noise_sd) < 0.1 * noise_sd
    gain = CORRUPTIONS['rgb_overexposed'].levels[2]
    bright, _ = corrupt_images(flat, None, setting('rgb_overexposed', 3), 'k')
    assert (bright == min(255, round(100 * gain))).all()
    assert np.array_equal(corrupt_images(flat, None, setting('rgb_blur', 5), 'k')[0], flat)  # a mean filter
    line = np.zeros((H, W, 3), dtype=np.uint8)
    line[:, W // 2] = 210
    length = CORRUPTIONS['rgb_blur'].levels[2]
    blurred, _ = corrupt_images(line, None, setting('rgb_blur', 3), 'k')
    row = blurred[H // 2, :, 0]
    assert (row > 0).sum() == length and abs(int(row.sum()) - 210) <= length   # spread over `length` pixels
    assert (blurred[:, :, 0] == row).all()   # horizontal only


def test_different_images_get_different_draws():
    _, extra = images()
    a = corrupt_images(None, extra, setting('depth_holes', 2), 'one')[1]
    b = corrupt_images(None, extra, setting('depth_holes', 2), 'two')[1]
    assert not np.array_equal(a, b)


def test_parsing_and_bad_input():
    assert parse_corruption('rgb_blur') == [setting('rgb_blur', s) for s in SEVERITIES]
    assert parse_corruption('depth_holes:3') == [setting('depth_holes', 3)]
    assert parse_corruptions(['depth_holes:3', 'depth_holes', 'rgb_dark:1'])[:2] == [
        setting('depth_holes', 3), setting('depth_holes', 1)]
    assert len(parse_corruptions(['depth_holes:3', 'depth_holes'])) == 5
    with pytest.raises(CorruptionError, match=r"--corrupt fog:2: unknown corruption 'fog'; known: depth_missing"):
        parse_corruption('fog:2')
    for bad in ('depth_holes:0', 'depth_holes:6', 'depth_holes:x', 'depth_holes:'):
        with pytest.raises(CorruptionError, match=rf'--corrupt {bad}: the severity must be one of 1, 2, 3, 4, 5'):
            parse_corruption(bad)
    with pytest.raises(argparse.ArgumentTypeError, match='^the severity must be one of'):
        corruption_arg('rgb_blur:9')
    with pytest.raises(CorruptionError, match='needs the extra modality'):
        corrupt_images(images()[0], None, setting('depth_noise', 1), 'k')


def test_the_table_of_the_docs_has_every_corruption_and_severity():
    table = markdown_table().splitlines()
    assert len(table) == 2 + len(CORRUPTIONS)
    for line, corruption in zip(table[2:], CORRUPTIONS.values()):
        assert f'`{corruption.name}`' in line and line.count('|') == 9


@pytest.mark.parametrize('count', [50, 7])
def test_on_a_split_depth_missing_drops_exactly_the_share_of_frames(count):
    _, extra = images()
    keys = [f'{i:04d}' for i in range(200, 200 + count)]
    quantiles = frame_quantiles(keys)
    assert sorted(quantiles.values()) == [(r + 0.5) / count for r in range(count)]
    for severity, share in zip(SEVERITIES, CORRUPTIONS['depth_missing'].levels):
        dropped = [k for k in keys if not corrupt_images(None, extra, setting('depth_missing', severity), k,
                                                         quantile=quantiles[k])[1].any()]
        assert abs(len(dropped) - share * count) <= 0.5   # the nearest count to the share
