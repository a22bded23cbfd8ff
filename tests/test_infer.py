"""tools/infer.py: on the synthetic test split, with HHA made on the fly from the depth PNGs, the
same label PNGs as val.py --save_path (student and teacher, sliding windows, two scales, flip); the
HHA it makes from the real NYU frame against the MATLAB output; its other outputs against the label
PNGs; bad input stopped with one line before any output is written."""
import functools
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import val
from config import REPO_ROOT
from models.weight_layouts import to_official_state_dict
from tools import infer
from dataloader.synthetic_rooms import make_synthetic_dataset, scaled_camera
from utils.conversion import read_depth_png
from utils.hha import inpainted_hha
from utils.visualize import SEPARATOR_WIDTH, colorize
from test_hha import NYU_DEPTH_SCALE, agreement, assert_matches_matlab, fixture_path
from test_val import one_thread, random_model  # noqa: F401 (one_thread: a fixture)
from test_val import config as val_config, opts as val_opts

HEIGHT, WIDTH = 48, 64
NUM_TEST = 3
# Windows of 40x48 over a 48x64 image, at scales 0.75 and 1, with flip: the evaluator's full path.
PREDICTION = ['--sliding', '--scales', '0.75', '1', '--flip']


# test_val's tiny model settings, for this module's dataset.
opts = functools.partial(val_opts, num_eval_imgs=NUM_TEST)
config = functools.partial(val_config, num_eval_imgs=NUM_TEST)


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    """A synthetic dataset whose HHA files are made from its depth PNGs as infer.py makes them."""
    root = str(tmp_path_factory.mktemp('data') / 'Synthetic')
    make_synthetic_dataset(root, num_train=1, num_test=NUM_TEST, height=HEIGHT, width=WIDTH, seed=3,
                           workers=1)
    camera = scaled_camera(HEIGHT, WIDTH)
    for name in os.listdir(os.path.join(root, 'Depth')):
        depth_m = read_depth_png(os.path.join(root, 'Depth', name)) / 1000.0
        hha = inpainted_hha(depth_m, camera)
        assert cv2.imwrite(os.path.join(root, 'HHA', name), hha[..., ::-1])  # the dataset's BGR file
    return root


@pytest.fixture(scope='module')
def checkpoints(dataset_root, tmp_path_factory):
    folder = tmp_path_factory.mktemp('checkpoints')
    cfg = config(dataset_root)
    paths = {'student': str(folder / 'student.pth'), 'teacher': str(folder / 'teacher.pth'),
             'official': str(folder / 'official.pth')}
    student = random_model(cfg, 'student', seed=0)
    torch.save({'format': 'primkd', 'role': 'student', 'model': student.state_dict()}, paths['student'])
    torch.save({'model': to_official_state_dict(student)}, paths['official'])
    teacher = random_model(cfg, 'teacher', seed=1)
    torch.save({'format': 'primkd', 'role': 'teacher', 'model': teacher.state_dict()}, paths['teacher'])
    return paths


def camera_flags(height=HEIGHT, width=WIDTH):
    camera = scaled_camera(height, width)
    return ['--fx', str(float(camera[0, 0])), '--fy', str(float(camera[1, 1])), '--cx', str(float(camera[0, 2])),
            '--cy', str(float(camera[1, 2]))]


def run_infer(dataset_root, checkpoint, out, *extra):
    return infer.main(['-c', infer_config(), '-e', checkpoint, '--rgb', os.path.join(dataset_root, 'RGB'),
                       '--out', str(out), *extra, *opts(dataset_root)])


def infer_config():
    return os.path.join(REPO_ROOT, 'config', 'demo.py')


def read_label(path):
    label = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    assert label is not None, path
    return label


def test_student_from_depth_pngs_predicts_as_val(dataset_root, checkpoints, tmp_path):
    val_out, infer_out = tmp_path / 'val', tmp_path / 'infer'
    parser = val.get_args_parser()
    val.main(parser.parse_args(['-c', infer_config(), '-e', checkpoints['student'], '--save_path',
                                str(val_out), *PREDICTION, *opts(dataset_root)]), parser)
    summary = run_infer(dataset_root, checkpoints['official'], infer_out, '--depth',
                        os.path.join(dataset_root, 'Depth'), *camera_flags(), *PREDICTION)
    assert summary['mode'] == 'student' and summary['extra'] == 'depth'
    test_names = [f'{i:04d}' for i in range(1, 1 + NUM_TEST)]
    labels = []
    for name in test_names:
        expected = read_label(val_out / 'pred' / f'{name}.png')
        labels.append(read_label(infer_out / 'label' / f'{name}.png'))
        assert np.array_equal(labels[-1], expected), name
    assert len(np.unique(np.concatenate(labels))) > 1  # not a constant prediction


def test_teacher_predicts_as_val_without_depth(dataset_root, checkpoints, tmp_path):
    val_out, infer_out = tmp_path / 'val', tmp_path / 'infer'
    parser = val.get_args_parser()
    val.main(parser.parse_args(['-c', infer_config(), '-e', checkpoints['teacher'], '--mode', 'teacher',
                                '--save_path', str(val_out), *PREDICTION, *opts(dataset_root)]), parser)
    summary = run_infer(dataset_root, checkpoints['teacher'], infer_out, *PREDICTION)
    assert summary['mode'] == 'teacher' and summary['extra'] is None
    for name in (f'{i:04d}' for i in range(1, 1 + NUM_TEST)):
        assert np.array_equal(read_label(infer_out / 'label' / f'{name}.png'),
                              read_label(val_out / 'pred' / f'{name}.png')), name


def test_outputs_agree_with_the_labels(dataset_root, checkpoints, tmp_path):
    out = tmp_path / 'out'
    summary = run_infer(dataset_root, checkpoints['student'], out, '--hha', os.path.join(dataset_root, 'HHA'),
                        '--whole', '--side-by-side')
    cfg = config(dataset_root)
    assert [image['name'] for image in summary['images']] == [f'{i:04d}' for i in range(1 + NUM_TEST)]
    with open(out / infer.SUMMARY_FILE) as f:
        assert json.load(f)['images'] == summary['images']
    present = set()
    for image in summary['images']:
        name = image['name']
        label = read_label(out / 'label' / f'{name}.png')
        assert label.shape == (HEIGHT, WIDTH) and label.min() >= 1 and label.max() <= cfg.num_classes
        colour = colorize(label, cfg.num_classes)
        assert np.array_equal(cv2.imread(str(out / 'color' / f'{name}.png'))[..., ::-1], colour)
        # The overlay is the mean of photo and palette (JPEG: within a few levels).
        rgb = cv2.imread(os.path.join(dataset_root, 'RGB', f'{name}.png'))[..., ::-1].astype(float)
        blend = cv2.imread(str(out / 'overlay' / f'{name}.jpg'))[..., ::-1].astype(float)
        assert np.abs(blend - (rgb + colour) / 2).mean() < 4
        side = cv2.imread(str(out / 'side_by_side' / f'{name}.png'))
        assert side.shape == (HEIGHT, 3 * WIDTH + 2 * SEPARATOR_WIDTH, 3)
        counts = np.bincount(label.ravel() - 1, minlength=cfg.num_classes) / label.size
        expected = {cfg.class_names[c]: counts[c] for c in range(cfg.num_classes) if counts[c]}
        assert image['class_fractions'] == pytest.approx(expected)
        assert (image['height'], image['width']) == (HEIGHT, WIDTH) and image['seconds'] > 0
        present |= set(np.unique(label))
    legend = cv2.imread(str(out / infer.LEGEND_FILE))
    assert legend.shape[0] == len(present) * 24   # one row per class predicted


def test_nyu_frame_hha_matches_matlab(dataset_root, checkpoints, tmp_path):
    """The real NYU frame through --depth and --camera nyu: the HHA the network gets is the MATLAB one."""
    depth_dir, rgb_dir, out = tmp_path / 'depth', tmp_path / 'rgb', tmp_path / 'out'
    depth_dir.mkdir()
    rgb_dir.mkdir()
    depth_png = cv2.imread(fixture_path('depth.png'), cv2.IMREAD_UNCHANGED)
    assert cv2.imwrite(str(depth_dir / 'frame.png'), depth_png)
    rgb = np.random.default_rng(0).integers(0, 256, (480, 640, 3), dtype=np.uint8)
    assert cv2.imwrite(str(rgb_dir / 'frame.jpg'), rgb)
    infer.main(['-c', infer_config(), '-e', checkpoints['student'], '--rgb', str(rgb_dir), '--depth',
                str(depth_dir), '--camera', 'nyu', '--depth-scale', str(NYU_DEPTH_SCALE), '--whole',
                '--save-hha', '--out', str(out), *opts(dataset_root)])
    hha = cv2.imread(str(out / 'hha' / 'frame.png'), cv2.IMREAD_COLOR)[..., ::-1]
    matlab_hha = cv2.imread(fixture_path('matlab_hha.png'), cv2.IMREAD_COLOR)[..., ::-1]
    figures = agreement(hha, matlab_hha)
    assert_matches_matlab(figures, str(figures))
    assert read_label(out / 'label' / 'frame.png').shape == (480, 640)


def make_inputs(folder, names, height=HEIGHT, width=WIDTH, depth_dtype=np.uint16):
    """Random RGB and depth PNGs of the given names under folder/rgb and folder/depth."""
    rng = np.random.default_rng(1)
    for kind in ('rgb', 'depth'):
        os.makedirs(folder / kind, exist_ok=True)
        for name in names[kind]:
            image = (rng.integers(0, 256, (height, width, 3)) if kind == 'rgb'
                     else rng.integers(500, 5000, (height, width)))
            assert cv2.imwrite(str(folder / kind / f'{name}.png'),
                               image.astype(np.uint8 if kind == 'rgb' else depth_dtype))


PAIRED = {'rgb': ['a', 'b'], 'depth': ['a', 'b']}
# case: (make_inputs arguments, checkpoint, flags (DEPTH: --depth of the inputs, CAMERA: their
# camera), what the message must say)
BAD_INPUT = {
    'unpaired files': (dict(names={'rgb': ['a', 'b', 'd'], 'depth': ['a', 'c']}), 'student', ['DEPTH', 'CAMERA'],
                       ['unpaired', '--rgb files without --depth: b, d', '--depth files without --rgb: c']),
    '8-bit depth': (dict(names=PAIRED, depth_dtype=np.uint8), 'student', ['DEPTH', 'CAMERA'],
                    ['--depth', 'a.png', 'expected a 16-bit greyscale depth PNG, got bit depth 8']),
    'missing camera': (dict(names=PAIRED), 'student', ['DEPTH'], ['--depth needs the camera', '--camera nyu']),
    'some of the camera': (dict(names=PAIRED), 'student', ['DEPTH', '--fx', '50', '--cy', '20'],
                           ['--depth needs the camera', 'got only --fx, --cy']),
    'preset of another size': (dict(names=PAIRED), 'student', ['DEPTH', '--camera', 'nyu'],
                               ['a.png: 64x48 depth, but --camera nyu is for 640x480', '--fx --fy --cx --cy']),
    'teacher checkpoint as student': (dict(names=PAIRED), 'teacher', ['DEPTH', 'CAMERA', '--mode', 'student'],
                                      ['teacher.pth is a teacher checkpoint', '--mode student']),
    'student without depth': (dict(names={'rgb': ['a'], 'depth': []}), 'student', [],
                              ['the model is a student', '--depth or --hha']),
    'teacher given depth': (dict(names=PAIRED), 'teacher', ['DEPTH', 'CAMERA'],
                            ['--depth', 'teacher, which sees RGB alone']),
    'image smaller than the encoder takes': (dict(names=PAIRED, height=20, width=24), 'student',
                                             ['DEPTH', 'CAMERA', '--whole'], ['a.png', '20x24 input', 'at least 32']),
}


@pytest.mark.parametrize('case', BAD_INPUT)
def test_bad_input_is_one_line_before_any_output(case, dataset_root, checkpoints, tmp_path, capsys):
    inputs, checkpoint, flags, fragments = BAD_INPUT[case]
    make_inputs(tmp_path, **inputs)
    tokens = {'DEPTH': ['--depth', str(tmp_path / 'depth')],
              'CAMERA': camera_flags(inputs.get('height', HEIGHT), inputs.get('width', WIDTH))}
    flags = [part for flag in flags for part in tokens.get(flag, [flag])]
    out = tmp_path / 'out'
    with pytest.raises(SystemExit) as exit_info:
        infer.main(['-c', infer_config(), '-e', checkpoints[checkpoint], '--rgb', str(tmp_path / 'rgb'),
                    '--out', str(out), *flags, *opts(dataset_root)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count('\n') == 1 and ': error: ' in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert not out.exists()


def test_out_in_a_missing_folder_is_one_line(dataset_root, checkpoints, tmp_path, capsys):
    make_inputs(tmp_path, PAIRED)
    out = tmp_path / 'missing' / 'out'
    with pytest.raises(SystemExit):
        infer.main(['-c', infer_config(), '-e', checkpoints['student'], '--rgb', str(tmp_path / 'rgb'), '--depth',
                    str(tmp_path / 'depth'), *camera_flags(), '--whole', '--out', str(out), *opts(dataset_root)])
    message = capsys.readouterr().err
    assert message.count('\n') == 1 and f"its folder {tmp_path / 'missing'} does not exist" in message, message
    assert not (tmp_path / 'missing').exists()


def test_existing_outputs_are_kept_unless_overwrite(dataset_root, checkpoints, tmp_path, capsys):
    make_inputs(tmp_path, PAIRED)
    out = tmp_path / 'out'
    argv = ['-c', infer_config(), '-e', checkpoints['student'], '--rgb', str(tmp_path / 'rgb'), '--depth',
            str(tmp_path / 'depth'), *camera_flags(), '--whole', '--out', str(out), *opts(dataset_root)]
    infer.main(argv)
    (out / 'label' / 'a.png').write_bytes(b'mine')
    capsys.readouterr()
    with pytest.raises(SystemExit):
        infer.main(argv)
    message = capsys.readouterr().err
    assert message.count('\n') == 1 and 'already holds' in message and '--overwrite' in message, message
    assert (out / 'label' / 'a.png').read_bytes() == b'mine'
    infer.main(argv + ['--overwrite'])
    assert read_label(out / 'label' / 'a.png').shape == (HEIGHT, WIDTH)


@pytest.mark.integration
def test_command_line_error_has_no_traceback(tmp_path):
    """Run as a script (the project installed or on PYTHONPATH): a bad input is one line."""
    result = subprocess.run([sys.executable, os.path.join(REPO_ROOT, 'tools', 'infer.py'), '-c', infer_config(),
                             '-e', str(tmp_path / 'missing.pth'), '--rgb', str(tmp_path), '--out',
                             str(tmp_path / 'out')], capture_output=True, text=True,
                            env={**os.environ, 'PYTHONPATH': REPO_ROOT})
    assert result.returncode == 2
    assert result.stderr.count('\n') == 1 and 'missing.pth' in result.stderr, result.stderr
