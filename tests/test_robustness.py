"""Robustness to corrupted test inputs: val.py --corrupt (its clean figures unchanged, each corrupted
row the confusion matrix of the corrupted images counted independently, not applicable for the
RGB-only teacher's depth), the summary and the paired differences against hand computations,
tools/infer.py --corrupt, and bad input in one line (tools/ablate.py --corrupt on a real grid: tests/test_ablate.py)."""
import json
import os

import cv2
import numpy as np
import pytest
from scipy import stats

from dataloader.corruptions import CorruptionSetting, shift_right
from dataloader.dataset import RGBXDataset
from dataloader.synthetic_rooms import scaled_camera
from engine import robustness
from engine.ablation import robustness_grid as grid_robustness
from tools import infer
from utils.conversion import read_depth_png
from utils.hha import inpainted_hha
from test_val import DEMO, checkpoints, config, dataset_root, direct_hist, one_thread, opts, run_val  # noqa: F401 (fixtures)


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_val_corrupt_keeps_the_clean_evaluation_and_adds_a_row_per_setting(dataset_root, checkpoints, tmp_path):
    paths, student, _, _ = checkpoints
    cfg = config(dataset_root)
    clean_json, corrupt_json = tmp_path / 'clean.json', tmp_path / 'corrupt.json'
    run_val(['--config', DEMO, '-e', paths['student'], '--whole', '--json', str(clean_json), *opts(dataset_root)])
    run_val(['--config', DEMO, '-e', paths['student'], '--whole', '--json', str(corrupt_json),
             '--corrupt', 'depth_holes:2', 'rgb_blur:4', 'depth_shift', *opts(dataset_root)])
    clean, record = read_json(clean_json), read_json(corrupt_json)
    assert record['hist'] == clean['hist'] and record['miou'] == clean['miou']   # clean: as before
    assert [(r['corruption'], r['severity']) for r in record['corruptions']] == [
        ('depth_holes', 2), ('rgb_blur', 4)] + [('depth_shift', s) for s in range(1, 6)]
    for row in record['corruptions']:
        setting = CorruptionSetting(row['corruption'], row['severity'])
        expected = direct_hist(student, cfg, 'student', RGBXDataset(cfg, 'val', corruption=setting))
        assert row['applicable'] and np.array_equal(np.array(row['hist']), expected), setting
        assert row['hist'] != clean['hist'] or row['corruption'] == 'depth_shift'
    table = (tmp_path / 'corrupt_robustness.md').read_text()
    assert f"| student | {100 * clean['miou']:.1f} |" in table
    assert os.path.getsize(tmp_path / 'corrupt_robustness.png') > 1000


def test_a_depth_corruption_is_not_applicable_to_the_teacher(dataset_root, checkpoints, tmp_path):
    paths, _, teacher, _ = checkpoints
    out = tmp_path / 'teacher.json'
    run_val(['--config', DEMO, '-e', paths['teacher'], '--mode', 'teacher', '--whole', '--json', str(out),
             '--corrupt', 'depth_missing:5', 'rgb_dark:2', *opts(dataset_root)])
    rows = read_json(out)['corruptions']
    assert rows[0] == {'corruption': 'depth_missing', 'severity': 5, 'level': 1.0, 'applicable': False}
    assert rows[1]['applicable'] and 'hist' in rows[1]
    table = (tmp_path / 'teacher_robustness.md').read_text()
    assert '| `depth_missing` | teacher | ' in table and 'n/a' in table


@pytest.mark.parametrize('value, needle', [('fog', "unknown corruption 'fog'"), ('rgb_blur:6', 'severity must be one of')])
def test_a_bad_corruption_is_one_line_before_any_work(value, needle, dataset_root, checkpoints, tmp_path, capsys):
    paths, _, _, _ = checkpoints
    with pytest.raises(SystemExit) as stop:
        run_val(['--config', DEMO, '-e', paths['student'], '--json', str(tmp_path / 'x.json'), '--corrupt', value,
                 *opts(dataset_root)])
    assert stop.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert 'error: argument --corrupt: ' in error and needle in error
    assert not os.listdir(tmp_path)


def test_the_summary_by_hand():
    rows = [{'corruption': 'rgb_blur', 'severity': s, 'applicable': True, 'miou': m}
            for s, m in ((1, 0.5), (2, 0.4), (3, 0.3))]
    rows.append({'corruption': 'depth_holes', 'severity': 1, 'applicable': False})
    summary = robustness.summarize(0.6, rows)
    assert summary['rgb_blur']['mean'] == pytest.approx(0.4)
    assert summary['rgb_blur']['relative_drop'] == pytest.approx(1 / 3)
    assert summary['depth_holes'] == {'applicable': False, 'miou': {}, 'mean': None, 'relative_drop': None}
    assert list(summary) == ['depth_holes', 'rgb_blur']   # the table's order


def test_paired_differences_of_the_grid_by_hand():
    clean = {'cmx': [0.70, 0.72, 0.69], 'primkd': [0.68, 0.71, 0.70]}
    holes = {'cmx': [0.50, 0.55, 0.47], 'primkd': [0.55, 0.57, 0.52]}
    per_variant = {v: {seed: (clean[v][i], robustness.summarize(clean[v][i], [
        {'corruption': 'depth_holes', 'severity': 3, 'applicable': True, 'miou': holes[v][i]}]))
        for i, seed in enumerate((1, 2, 3))} for v in clean}
    per_variant['rgb_teacher'] = {seed: (0.6, robustness.summarize(0.6, [
        {'corruption': 'depth_holes', 'severity': 3, 'applicable': False}])) for seed in (1, 2, 3)}
    summary = grid_robustness.summarise_robustness(per_variant, 'cmx')
    pair = summary['primkd']['corruptions']['depth_holes']['vs_reference']
    for key, values in (('mean', [100 * (p - c) for p, c in zip(holes['primkd'], holes['cmx'])]),
                        ('drop', [100 * ((cp - hp) - (cc - hc)) for cp, hp, cc, hc in
                                  zip(clean['primkd'], holes['primkd'], clean['cmx'], holes['cmx'])])):
        mean = np.mean(values)
        half = stats.t.ppf(0.975, 2) * np.std(values, ddof=1) / np.sqrt(3)
        assert pair[key]['mean'] == pytest.approx(mean)
        assert (pair[key]['low'], pair[key]['high']) == pytest.approx((mean - half, mean + half))
    assert summary['rgb_teacher']['corruptions']['depth_holes'] == {'applicable': False}
    assert summary['cmx']['corruptions']['depth_holes']['mean']['mean'] == pytest.approx(100 * np.mean(holes['cmx']))
    table = grid_robustness.robustness_markdown(summary, 'cmx', 'config/demo.py', [1, 2, 3])
    assert '| rgb_teacher | n/a | n/a |' in table


def test_infer_corrupts_the_inputs_before_the_network(dataset_root, checkpoints, tmp_path):
    import torch
    paths, student, _, _ = checkpoints
    cfg = config(dataset_root)
    common = ['-c', DEMO, '--rgb', os.path.join(dataset_root, 'RGB'), '--whole', '-e', paths['student'],
              *opts(dataset_root)]
    # --hha: the stored HHA image is corrupted, as val.py corrupts it
    summary = infer.main([*common, '--hha', os.path.join(dataset_root, 'HHA'), '--corrupt', 'depth_shift:3',
                          '--out', str(tmp_path / 'shift')])
    assert summary['corruptions'] == ['depth_shift:3']
    shifted = RGBXDataset(cfg, 'val', corruption=CorruptionSetting('depth_shift', 3))
    with torch.no_grad():
        for item in shifted:
            pred = student(item['rgb'][None], item['extra'][None]).logits.argmax(1)[0].numpy()
            label = cv2.imread(str(tmp_path / 'shift' / 'label' / (item['name'] + '.png')), cv2.IMREAD_UNCHANGED)
            assert np.array_equal(label, pred + 1), item['name']
    # --depth: the depth in metres is corrupted before HHA is made; no depth left gives a zero HHA image
    camera = scaled_camera(48, 64)
    flags = ['--fx', str(camera[0, 0]), '--fy', str(camera[1, 1]), '--cx', str(camera[0, 2]), '--cy', str(camera[1, 2])]
    depth_dir = os.path.join(dataset_root, 'Depth')
    summary = infer.main([*common, '--depth', depth_dir, *flags, '--save-hha', '--corrupt', 'depth_shift:3',
                          '--out', str(tmp_path / 'depth')])
    for image in summary['images']:
        depth_m = read_depth_png(os.path.join(depth_dir, image['name'] + '.png')) / 1000.0
        expected = inpainted_hha(shift_right(depth_m, 4), camera)
        got = cv2.imread(str(tmp_path / 'depth' / 'hha' / (image['name'] + '.png')))[..., ::-1]
        assert np.array_equal(got, expected), image['name']
    summary = infer.main([*common, '--depth', depth_dir, *flags, '--save-hha', '--corrupt', 'depth_missing:5',
                          '--out', str(tmp_path / 'gone')])
    assert all(not cv2.imread(str(tmp_path / 'gone' / 'hha' / (i['name'] + '.png'))).any() for i in summary['images'])


@pytest.mark.parametrize('flags, needle', [
    (['--mode', 'teacher', '--corrupt', 'depth_holes:2'], 'not applicable: the model is a teacher'),
    (['--corrupt', 'rgb_dark'], '--corrupt rgb_dark: give one severity'),
])
def test_infer_bad_corruptions_are_one_line(flags, needle, dataset_root, checkpoints, tmp_path, capsys):
    paths, _, _, _ = checkpoints
    model = paths['teacher']   # RGB alone: no depth files needed
    with pytest.raises(SystemExit) as stop:
        infer.main(['-c', DEMO, '-e', model, '--rgb', os.path.join(dataset_root, 'RGB'), *flags,
                    '--out', str(tmp_path / 'out'), *opts(dataset_root)])
    assert stop.value.code == 2 and needle in capsys.readouterr().err
    assert not (tmp_path / 'out').exists()
