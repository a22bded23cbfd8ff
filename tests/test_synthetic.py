"""The synthetic RGB-D rooms: determinism, loading with config/demo.py, and the two class pairs
that only one modality tells apart.

"Separable" is measured on per-instance statistics of 100 scenes: a 1-D threshold (and its
direction) is chosen on the instances of the first 50 scenes and its accuracy measured on those of
the last 50. Separable: >= 90 %. Not separable: <= 65 % for every statistic tried.
"""
import filecmp
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from config import REPO_ROOT, load_config
from dataloader.dataset import RGBXDataset
from dataloader.synthetic_rooms import (BOX, CLASS_NAMES, CRATE, CRATE_CUES, PANEL, PANEL_CUES, POSTER, PRESETS, WALL,
                                  Scene, SceneStyle, ensure_synthetic_dataset, make_scene,
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


# The modality-balance knob (SceneStyle). Measured on the scenes' objects as drawn, before
# rendering: geometry (a wall item's stand-off from its wall, a container's size) and appearance
# (the albedo on a grid of surface coordinates, lighting left out).

UV_GRID = np.stack(np.meshgrid(np.linspace(0.01, 0.99, 16), np.linspace(0.01, 0.99, 16)), -1).reshape(-1, 2)
APPEARANCE = ('red', 'green', 'blue', 'red_share', 'brightness_std', 'border_brightness')


def appearance_statistics(albedo):
    colours = albedo(UV_GRID)
    brightness = colours.mean(1)
    border = ((UV_GRID < 0.03) | (UV_GRID > 0.97)).any(1)  # inside the thinnest board frame
    return dict(red=colours[:, 0].mean(), green=colours[:, 1].mean(), blue=colours[:, 2].mean(),
                red_share=(colours[:, 0] / (colours.sum(1) + 1e-6)).mean(),
                brightness_std=brightness.std(), border_brightness=brightness[border].mean())


def drawn_objects(style):
    """Per-object geometry and appearance statistics of the boxes, crates, posters and panels of
    SCENES scenes drawn in `style`."""
    rows = []
    for index in range(SCENES):
        scene = Scene(np.random.default_rng((0, index)), 120, 160, style)
        walls = [s for s in scene.surfaces if s.label == WALL]
        for item in scene.surfaces:
            row = dict(kind=item.label, scene=index, **appearance_statistics(item.albedo))
            if item.label in (POSTER, PANEL):
                wall = next(w for w in walls if np.allclose(w.normal, item.normal))
                rows.append(dict(row, stand_off=(item.point - wall.point) @ wall.normal))
            elif item.label in (BOX, CRATE):
                width, height, depth = 2 * item.half_size
                rows.append(dict(row, width=width, height=height, depth=depth))
    return rows


def separability(rows, first, second, statistics):
    """The best held-out accuracy over `statistics`."""
    return max(held_out_accuracy(rows, first, second, statistic) for statistic in statistics)


@pytest.mark.parametrize('cue', PANEL_CUES)
def test_panel_cue_sets_what_tells_panels_from_posters(cue):
    rows = drawn_objects(SceneStyle(panel_cue=cue))
    depth_tells = separability(rows, POSTER, PANEL, ['stand_off'])
    appearance_tells = separability(rows, POSTER, PANEL, APPEARANCE)
    assert depth_tells >= 0.9 if cue in ('depth', 'both') else depth_tells <= 0.65
    assert appearance_tells >= 0.9 if cue in ('appearance', 'both') else appearance_tells <= 0.65


@pytest.mark.parametrize('cue', CRATE_CUES)
def test_crate_cue_sets_what_tells_crates_from_boxes(cue):
    rows = drawn_objects(SceneStyle(crate_cue=cue))
    geometry_tells = separability(rows, BOX, CRATE, ['width', 'height', 'depth'])
    assert separability(rows, BOX, CRATE, APPEARANCE) >= 0.9
    assert geometry_tells >= 0.9 if cue == 'both' else geometry_tells <= 0.65


def test_depth_noise_and_hole_rate_change_only_the_depth():
    clean = make_scene(0, 7, style=SceneStyle(depth_noise=0.0, hole_rate=0.0))
    noisy = make_scene(0, 7, style=SceneStyle(depth_noise=0.05, hole_rate=0.3))
    np.testing.assert_array_equal(clean.rgb, noisy.rgb)
    np.testing.assert_array_equal(clean.label, noisy.label)
    measured = (clean.depth > 0) & (noisy.depth > 0)
    relative_error = noisy.depth[measured] / clean.depth[measured] - 1
    assert 0.04 < relative_error.std() < 0.06
    assert (noisy.depth == 0).mean() > (clean.depth == 0).mean() + 0.05


def test_strong_depth_noise_gives_holes_not_negative_depth():
    # At 40 % relative noise about one pixel in 160 would fall below 0; a sensor reports no depth there.
    clean = make_scene(0, 3, style=SceneStyle(depth_noise=0.0, hole_rate=0.0))
    noisy = make_scene(0, 3, style=SceneStyle(depth_noise=0.4, hole_rate=0.0))
    assert (noisy.depth >= 0).all() and np.isfinite(noisy.hha).all()
    assert (noisy.depth == 0).sum() > (clean.depth == 0).sum()


def test_bad_style_is_one_clear_error():
    with pytest.raises(ValueError, match="crate cue must be one of .* got 'depth'"):
        SceneStyle(crate_cue='depth')
    with pytest.raises(ValueError, match='hole rate must be in'):
        SceneStyle(hole_rate=1.5)


def test_nyu_like_same_seed_same_files(tmp_path):
    nyu_like = PRESETS['nyu_like']
    for name, seed, workers in (('a', 3, 1), ('b', 3, 2), ('c', 4, 1)):
        make_synthetic_dataset(str(tmp_path / name), num_train=3, num_test=1, seed=seed,
                               style=nyu_like, workers=workers)
    make_synthetic_dataset(str(tmp_path / 'default'), num_train=3, num_test=1, seed=3, workers=1)
    files = tree_files(tmp_path / 'a')
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'a', tmp_path / 'b', files, shallow=False)
    assert mismatch == [] and errors == []
    for other in ('c', 'default'):
        _, changed, _ = filecmp.cmpfiles(tmp_path / 'a', tmp_path / other, files, shallow=False)
        assert any(name.startswith('Depth') for name in changed), other


def test_existing_dataset_is_kept_unless_overwrite(tmp_path):
    root = str(tmp_path / 'Synthetic')
    make_synthetic_dataset(root, num_train=3, num_test=1, seed=0, workers=1)
    (tmp_path / 'Synthetic' / 'notes.txt').write_text('mine')
    before = {name: (tmp_path / 'Synthetic' / name).read_bytes() for name in tree_files(root)}
    with pytest.raises(FileExistsError, match='already holds files'):
        make_synthetic_dataset(root, num_train=1, num_test=1, seed=1, workers=1)
    assert {name: (tmp_path / 'Synthetic' / name).read_bytes() for name in tree_files(root)} == before

    make_synthetic_dataset(root, num_train=1, num_test=1, seed=1, workers=1, overwrite=True)
    assert tree_files(root) == sorted(['notes.txt', 'test.txt', 'train.txt'] + [
        os.path.join(folder, f'000{i}.png') for folder in ('Depth', 'HHA', 'Label', 'RGB') for i in (0, 1)])


@pytest.mark.integration
def test_make_synthetic_refuses_an_existing_dataset_in_one_line(tmp_path):
    out = str(tmp_path / 'Synthetic')
    command = [sys.executable, os.path.join(REPO_ROOT, 'tools', 'make_synthetic.py'), '--out', out,
               '--num-train', '1', '--num-test', '1', '--workers', '1', '--preset', 'nyu_like', '--hole-rate', '0.1']
    env = dict(os.environ, PYTHONPATH=REPO_ROOT)
    assert subprocess.run(command, env=env, capture_output=True).returncode == 0
    refused = subprocess.run(command, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert refused.stderr.strip().splitlines() == [
        f"make_synthetic.py: '{out}' already holds files; pass --overwrite to replace the dataset there"]
    assert subprocess.run(command + ['--overwrite'], env=env, capture_output=True).returncode == 0


def test_each_demo_config_generates_its_own_dataset(tmp_path):
    small = {'num_train_imgs': 2, 'num_eval_imgs': 1, 'image_height': 32, 'image_width': 48}
    configs = {}
    for name in ('demo', 'demo_nyulike'):
        cfg = load_config(os.path.join(REPO_ROOT, 'config', f'{name}.py'),
                          dict(small, dataset_path=str(tmp_path / name), seed=7))
        assert ensure_synthetic_dataset(cfg, workers=1)
        assert not ensure_synthetic_dataset(cfg, workers=1)  # present: used as it is
        configs[name] = cfg
    assert configs['demo'].synthetic_preset == 'depth_decisive'
    assert configs['demo_nyulike'].synthetic_preset == 'nyu_like'
    assert configs['demo'].log_dir != configs['demo_nyulike'].log_dir
    # The scenes follow synthetic_seed, not the training seed.
    make_synthetic_dataset(str(tmp_path / 'expected'), 2, 1, 32, 48, seed=configs['demo'].synthetic_seed,
                           workers=1)
    files = tree_files(tmp_path / 'expected')
    _, mismatch, errors = filecmp.cmpfiles(tmp_path / 'expected', tmp_path / 'demo', files, shallow=False)
    assert mismatch == [] and errors == []


def test_real_dataset_configs_generate_nothing(tmp_path):
    cfg = load_config(os.path.join(REPO_ROOT, 'config', 'nyu_b2.py'), {'dataset_path': str(tmp_path / 'NYU')})
    assert cfg.synthetic_preset is None
    assert not ensure_synthetic_dataset(cfg)
    assert not os.path.exists(tmp_path / 'NYU')


def test_interrupted_generation_is_one_clear_error(tmp_path):
    cfg = load_config(os.path.join(REPO_ROOT, 'config', 'demo.py'), {'dataset_path': str(tmp_path / 'Synthetic')})
    os.makedirs(tmp_path / 'Synthetic' / 'RGB')
    (tmp_path / 'Synthetic' / 'RGB' / '0000.png').write_bytes(b'')
    with pytest.raises(FileExistsError, match='no train.txt: remove it, or regenerate it with .*--overwrite'):
        ensure_synthetic_dataset(cfg)


def _ensure(path):
    cfg = load_config(os.path.join(REPO_ROOT, 'config', 'demo.py'),
                      {'dataset_path': path, 'num_train_imgs': 6, 'num_eval_imgs': 2, 'image_height': 32,
                       'image_width': 48})
    return ensure_synthetic_dataset(cfg, workers=1)


@pytest.mark.integration
def test_generations_started_at_once_take_turns(tmp_path):
    """Two grids started together on one synthetic config: one writes the dataset, the other waits for
    it and uses it (before the lock, the second saw a half-written folder and stopped)."""
    import multiprocessing
    path = str(tmp_path / 'Synthetic')
    with multiprocessing.get_context('spawn').Pool(2) as pool:
        wrote = pool.map(_ensure, [path, path])
    assert sorted(wrote) == [False, True]
    assert sorted(os.listdir(path)) == ['Depth', 'HHA', 'Label', 'RGB', 'test.txt', 'train.txt']
