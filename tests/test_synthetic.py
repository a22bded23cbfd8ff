"""The synthetic RGB-D rooms: determinism, loading with config/demo.py, and the two class pairs
that only one modality tells apart.

"Separable" is measured on per-instance statistics of 100 scenes: a 1-D threshold (and its
direction) is chosen on the instances of the first 50 scenes and its accuracy measured on those of
the last 50. Separable: >= 90 %. Not separable: <= 65 % for every statistic tried.
"""
import filecmp
import os

import cv2
import numpy as np
import pytest

from config import REPO_ROOT, load_config
from dataloader.dataset import RGBXDataset
from tools.synthetic_rooms import (BOX, CLASS_NAMES, CRATE, PANEL, POSTER, WALL, make_scene,
                                  make_synthetic_dataset, scaled_camera)

SCENES = 100
MIN_PIXELS = 30


def tree_files(root):
    return sorted(os.path.relpath(os.path.join(folder, name), root)
                  for folder, _, names in os.walk(root) for name in names)


def test_same_seed_same_files_whatever_the_workers(tmp_path):
    make_synthetic_dataset(str(tmp_path / 'a'), num_train=4, num_test=2, seed=3, workers=1)
    make_synthetic_dataset(str(tmp_path / 'b'), num_train=4, num_test=2, seed=3, workers=2)
    make_synthetic_dataset(str(tmp_path / 'c'), num_train=4, num_test=2, seed=4, workers=1)
    files = tree_files(tmp_path / 'a')
    assert len(files) == 4 * 6 + 2 and files == tree_files(tmp_path / 'b')
    match, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert mismatch == [] and errors == []
    _, changed, _ = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'c', files, shallow=False)
    assert any(name.startswith('RGB') for name in changed)
    assert any(name.startswith('HHA') for name in changed)


def test_demo_config_loads_the_generated_dataset(tmp_path):
    root = tmp_path / 'Synthetic'
    make_synthetic_dataset(str(root), num_train=6, num_test=3, seed=0, workers=1)
    with open(root / 'train.txt') as f:
        assert f.read().split() == ['0000', '0001', '0002', '0003', '0004', '0005']
    cfg = load_config(os.path.join(REPO_ROOT, 'config', 'demo.py'),
                      {'dataset_path': str(root), 'niters_per_epoch': 2, 'num_train_imgs': 6, 'num_eval_imgs': 3})
    assert tuple(cfg.class_names) == CLASS_NAMES
    train, val = RGBXDataset(cfg, 'train'), RGBXDataset(cfg, 'val')
    assert len(train) == 2 * cfg.batch_size and len(val) == 3
    item = train[(0, 0)]
    assert item['rgb'].shape == item['extra'].shape == (3, 120, 160)
    labels = np.concatenate([val[i]['label'].numpy().ravel() for i in range(3)])
    assert set(np.unique(labels)) <= set(range(8)) | {255}
    depth = cv2.imread(str(root / 'Depth' / '0000.png'), cv2.IMREAD_UNCHANGED)
    assert depth.dtype == np.uint16 and 500 < np.median(depth[depth > 0]) < 9500
    assert (depth == 0).any()                                   # sensor holes


def test_camera_is_nyu_scaled_to_the_output_size():
    camera = scaled_camera(120, 160)
    np.testing.assert_allclose(camera[0, 0], 518.8579 / 4, rtol=1e-6)
    np.testing.assert_allclose(camera[1, 2], 253.7362 / 4, rtol=1e-6)


def boundary_step_to_wall(depth, label, mask):
    """Median over the instance's boundary of (depth of the adjacent wall pixel - depth of the
    instance pixel): about 0 for something on the wall, the stand-off for something in front of it."""
    steps = []
    height, width = mask.shape
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        inner = (slice(max(0, -dy), height - max(0, dy)), slice(max(0, -dx), width - max(0, dx)))
        outer = (slice(max(0, dy), height + min(0, dy)), slice(max(0, dx), width + min(0, dx)))
        pair = mask[inner] & (label[outer] == WALL) & (depth[inner] > 0) & (depth[outer] > 0)
        steps.append((depth[outer] - depth[inner])[pair])
    steps = np.concatenate(steps)
    return float(np.median(steps)) if len(steps) >= 5 else np.nan


@pytest.fixture(scope='module')
def instances():
    """Per-instance statistics of boxes, crates, posters and panels in SCENES scenes."""
    rows = []
    for index in range(SCENES):
        # Seed 0: the scenes of datasets/Synthetic.
        rgb, depth, hha, label, instance_map, scene = make_scene(0, index)
        for instance in np.unique(instance_map):
            kind = scene.surfaces[instance].label
            mask = instance_map == instance
            measured = mask & (depth > 0)
            if kind not in (BOX, CRATE, POSTER, PANEL) or measured.sum() < MIN_PIXELS:
                continue
            colours = rgb[mask].astype(np.float64)
            rows.append(dict(
                kind=kind, scene=index,
                red=colours[:, 0].mean(), green=colours[:, 1].mean(), blue=colours[:, 2].mean(),
                red_share=(colours[:, 0] / (colours.sum(1) + 1)).mean(),
                brightness_std=colours.mean(1).std(),
                depth=np.median(depth[measured]),
                disparity=hha[mask][:, 0].mean(), height=hha[mask][:, 1].mean(),
                angle=hha[mask][:, 2].mean(),
                step_to_wall=boundary_step_to_wall(depth, label, mask)))
    return rows


def held_out_accuracy(rows, first, second, statistic):
    """Accuracy on the last half of the scenes of the best threshold on the first half."""
    rows = [r for r in rows if r['kind'] in (first, second) and np.isfinite(r[statistic])]
    fit = [r for r in rows if r['scene'] < SCENES // 2]
    held_out = [r for r in rows if r['scene'] >= SCENES // 2]
    assert min(sum(r['kind'] == k for r in held_out) for k in (first, second)) >= 20

    def accuracy(threshold, sign, subset):
        return np.mean([(sign * (r[statistic] - threshold) > 0) == (r['kind'] == second)
                        for r in subset])

    _, threshold, sign = max((accuracy(r[statistic], s, fit), r[statistic], s)
                             for r in fit for s in (1, -1))
    return accuracy(threshold, sign, held_out)


def test_poster_and_panel_differ_in_depth_but_not_in_colour(instances):
    assert held_out_accuracy(instances, POSTER, PANEL, 'step_to_wall') >= 0.9
    for statistic in ('red', 'green', 'blue', 'brightness_std'):
        assert held_out_accuracy(instances, POSTER, PANEL, statistic) <= 0.65, statistic


def test_box_and_crate_differ_in_colour_but_not_in_depth(instances):
    assert held_out_accuracy(instances, BOX, CRATE, 'red_share') >= 0.9
    for statistic in ('depth', 'disparity', 'height', 'angle'):
        assert held_out_accuracy(instances, BOX, CRATE, statistic) <= 0.65, statistic
