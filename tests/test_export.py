"""tools/export.py on the demo student and teacher (small inputs): the files run in onnxruntime (read
here directly) give torch's logits, the tool's own check passes and fails when it should, and
tools/infer.py --onnx predicts what the checkpoint predicts."""
import functools
import json
import os
import shutil

import cv2
import numpy as np
import onnxruntime
import pytest
import torch

from config import REPO_ROOT
from dataloader.dataset import RGBXDataset
from dataloader.transforms import EvalTransform
from engine.inference import OUTPUT_NAME
from tools import export, infer
from dataloader.synthetic_rooms import make_synthetic_dataset
from test_val import one_thread, random_model  # noqa: F401 (one_thread: a fixture)
from test_val import config as val_config, opts as val_opts

DEMO = os.path.join(REPO_ROOT, 'config', 'demo.py')
HEIGHT, WIDTH = 48, 64
NUM_TEST = 2


# test_val's tiny model settings, for this module's dataset.
opts = functools.partial(val_opts, num_eval_imgs=NUM_TEST)
config = functools.partial(val_config, num_eval_imgs=NUM_TEST)


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'Synthetic')
    make_synthetic_dataset(root, num_train=1, num_test=NUM_TEST, height=HEIGHT, width=WIDTH, seed=5, workers=1)
    return root


@pytest.fixture(scope='module')
def models(dataset_root, tmp_path_factory):
    """{role: (model, checkpoint)} of random demo models, and another student."""
    folder = tmp_path_factory.mktemp('checkpoints')
    cfg = config(dataset_root)
    found = {}
    for name, role, seed in (('student', 'student', 0), ('teacher', 'teacher', 1), ('other', 'student', 2)):
        model = random_model(cfg, role, seed)
        path = str(folder / f'{name}.pth')
        torch.save({'format': 'primkd', 'role': role, 'model': model.state_dict()}, path)
        found[name] = (model, path)
    return found


@pytest.fixture(scope='module')
def exported(dataset_root, models, tmp_path_factory):
    """The student exported at the image size, the teacher with --dynamic: {role: (file, report)}."""
    folder = tmp_path_factory.mktemp('onnx')
    files = {}
    for role, flags in (('student', ['--height', str(HEIGHT), '--width', str(WIDTH)]),
                        ('teacher', ['--dynamic', '--height', '64', '--width', '96'])):
        path = str(folder / f'{role}.onnx')
        report = export.main(['-c', DEMO, '-e', models[role][1], '--out', path, *flags, *opts(dataset_root)])
        files[role] = (path, report)
    return files


def run_onnxruntime(path, rgb, extra=None):
    session = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider'])
    feed = {'rgb': rgb.numpy()}
    if extra is not None:
        feed['extra'] = extra.numpy()
    return session.run([OUTPUT_NAME], feed)[0]


@pytest.mark.heavy
@pytest.mark.parametrize('role', ['student', 'teacher'])
def test_onnxruntime_gives_torchs_logits(role, dataset_root, models, exported):
    path, report = exported[role]
    model = models[role][0]
    # The tool's own check: random inputs (a second size when dynamic) and both validation images.
    assert len(report['checks']) == (3 if role == 'student' else 4)
    assert all(check['argmax_agreement'] >= export.MIN_AGREEMENT for check in report['checks'])
    # Checked here without the tool: on every validation image, at its own size.
    cfg = config(dataset_root)
    for item in RGBXDataset(cfg, 'val', EvalTransform(cfg)):
        rgb, extra = item['rgb'][None], item['extra'][None] if role == 'student' else None
        with torch.no_grad():
            expected = model(rgb, extra).logits.numpy()
        logits = run_onnxruntime(path, rgb, extra)
        assert logits.shape == expected.shape == (1, cfg.num_classes, HEIGHT, WIDTH)
        assert np.abs(logits - expected).max() < 1e-3 * np.abs(expected).max()
        assert (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999
    inputs = onnxruntime.InferenceSession(path, providers=['CPUExecutionProvider']).get_inputs()
    assert [i.name for i in inputs] == (['rgb', 'extra'] if role == 'student' else ['rgb'])
    assert inputs[0].shape[2:] == ([HEIGHT, WIDTH] if role == 'student' else ['height', 'width'])


@pytest.mark.heavy
def test_dynamic_file_takes_other_sizes_and_batches(models, exported):
    model = models['teacher'][0]
    rgb = torch.randn(3, 3, 70, 90, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = model(rgb).logits.numpy()
    logits = run_onnxruntime(exported['teacher'][0], rgb)
    assert logits.shape == expected.shape and (logits.argmax(1) == expected.argmax(1)).mean() >= 0.999


@pytest.mark.heavy
def test_metadata_records_the_input_preparation(dataset_root, exported):
    metadata = onnxruntime.InferenceSession(exported['student'][0], providers=['CPUExecutionProvider']) \
        .get_modelmeta().custom_metadata_map
    cfg = config(dataset_root)
    assert json.loads(metadata['channel_order']) == cfg.channel_order == 'rgb'
    assert json.loads(metadata['norm_mean']) == cfg.norm_mean
    assert json.loads(metadata['class_names']) == cfg.class_names


@pytest.mark.heavy
def test_infer_with_onnx_predicts_as_torch(dataset_root, models, exported, tmp_path):
    labels = {}
    for runtime, model_flags in (('torch', ['-e', models['student'][1]]), ('onnx', ['--onnx', exported['student'][0]])):
        out = tmp_path / runtime
        summary = infer.main(['-c', DEMO, *model_flags, '--rgb', os.path.join(dataset_root, 'RGB'), '--hha',
                              os.path.join(dataset_root, 'HHA'), '--whole', '--out', str(out), *opts(dataset_root)])
        assert summary['runtime'] == runtime.replace('onnx', 'onnxruntime')
        labels[runtime] = np.stack([cv2.imread(str(out / 'label' / f"{image['name']}.png"), cv2.IMREAD_UNCHANGED)
                                    for image in summary['images']])
    assert (labels['torch'] == labels['onnx']).mean() >= 0.999


@pytest.mark.heavy
def test_a_file_that_disagrees_is_not_kept(dataset_root, models, exported, tmp_path, monkeypatch, capsys):
    """The exporter replaced by a copy of another student's file: the check compares real outputs."""
    monkeypatch.setattr(export, 'export_onnx', lambda model, role, cfg, path, size, dynamic:
                        shutil.copy(exported['student'][0], path))
    out = tmp_path / 'other.onnx'
    with pytest.raises(SystemExit) as exit_info:
        export.main(['-c', DEMO, '-e', models['other'][1], '--out', str(out), '--height', str(HEIGHT), '--width',
                     str(WIDTH), *opts(dataset_root)])
    assert 'below 99.9%' in str(exit_info.value.code) and 'not written' in str(exit_info.value.code)
    assert os.listdir(tmp_path) == []


BAD_INPUT = {  # case: (checkpoint, more flags, config changes, what the message must say)
    'teacher checkpoint as student': ('teacher', ['--mode', 'student'], {},
                                      ['is a teacher checkpoint', '--mode student']),
    'existing file': ('student', [], {}, ['model.onnx: exists', '--overwrite']),
    'no dataset': ('student', [], {'dataset_path': 'none'}, ['does not exist', '--random-only']),
}


@pytest.mark.parametrize('case', BAD_INPUT)
def test_bad_input_is_one_line(case, dataset_root, models, tmp_path, capsys):
    checkpoint, flags, changes, fragments = BAD_INPUT[case]
    changes = {key: str(tmp_path / value) for key, value in changes.items()}
    out = tmp_path / 'model.onnx'
    if case == 'existing file':
        out.write_bytes(b'mine')
    with pytest.raises(SystemExit) as exit_info:
        export.main(['-c', DEMO, '-e', models[checkpoint][1], '--out', str(out), *flags,
                     *opts(dataset_root, **changes)])
    assert exit_info.value.code == 2
    message = capsys.readouterr().err
    assert message.count('\n') == 1 and ': error: ' in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert os.listdir(tmp_path) == (['model.onnx'] if case == 'existing file' else [])
    if case == 'existing file':
        assert out.read_bytes() == b'mine'


@pytest.mark.heavy
def test_infer_refuses_an_onnx_file_of_another_config(dataset_root, exported, tmp_path, capsys):
    with pytest.raises(SystemExit):
        infer.main(['-c', DEMO, '--onnx', exported['student'][0], '--rgb', os.path.join(dataset_root, 'RGB'),
                    '--hha', os.path.join(dataset_root, 'HHA'), '--out', str(tmp_path / 'out'),
                    *opts(dataset_root, channel_order='bgr')])
    message = capsys.readouterr().err
    assert message.count('\n') == 1 and 'exported with another config' in message, message
    assert 'channel_order: file "rgb", config "bgr"' in message and not (tmp_path / 'out').exists()
