"""val.py end to end on a tiny synthetic dataset in the official layout: project and official
checkpoints against a direct computation, predictions written per image, 2 processes under torchrun
equal to 1, checkpoint selection with -e, bad input stopped before the first image, and val.sh."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest
import torch

import val
from config import REPO_ROOT, load_config
from dataloader.dataset import RGBXDataset
from engine import run_dir as rd
from models.builder import build_model
from models.weight_layouts import to_official_state_dict
from dataloader.synthetic_rooms import make_synthetic_dataset
from helpers import free_port

DEMO = os.path.join(REPO_ROOT, 'config', 'demo.py')
NUM_IMAGES = 5  # not divisible by 2 processes


@pytest.fixture(scope='module', autouse=True)
def one_thread():
    """Tiny models run as fast on one thread, and do not stall when other processes hold the
    cores; one thread also gives the arithmetic of the single-threaded torchrun workers."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope='module')
def dataset_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'Synthetic')
    make_synthetic_dataset(root, num_train=2, num_test=NUM_IMAGES, height=48, width=64, seed=0)
    return root


def opts(dataset_root, **changes):
    values = {'dataset_path': dataset_root, 'backbone': 'mit_b0', 'decoder_embed_dim': 16,
              'num_workers': 0, 'eval_crop_size': [40, 48], 'pretrained_model': None, 'num_eval_imgs': NUM_IMAGES}
    values.update(changes)
    return ['--opts'] + [f'{k}={v!r}' for k, v in values.items()]


def config(dataset_root, **changes):
    return load_config(DEMO, opts(dataset_root, **changes)[1:])


def random_model(cfg, role, seed):
    torch.manual_seed(seed)
    model = build_model(cfg, role)
    with torch.no_grad():   # non-trivial BatchNorm statistics, so eval mode matters
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 2.0)
    return model.eval()


@pytest.fixture(scope='module')
def checkpoints(dataset_root, tmp_path_factory):
    """Project and official layouts of one student, a teacher, and their model."""
    folder = tmp_path_factory.mktemp('checkpoints')
    cfg = config(dataset_root)
    student = random_model(cfg, 'student', seed=0)
    teacher = random_model(cfg, 'teacher', seed=1)
    other_teacher = random_model(cfg, 'teacher', seed=2)
    paths = {'student': str(folder / 'student.pth'), 'official': str(folder / 'official.pth'),
             'teacher': str(folder / 'teacher.pth'), 'other_teacher': str(folder / 'other.pth')}
    torch.save({'format': 'primkd', 'role': 'student', 'model': student.state_dict(), 'epoch': 3,
                'config': dict(cfg)}, paths['student'])
    torch.save({'model': to_official_state_dict(student), 'optimizer': {}, 'epoch': 3,
                'iteration': 30}, paths['official'])
    for model, name in ((teacher, 'teacher'), (other_teacher, 'other_teacher')):
        torch.save({'format': 'primkd', 'role': 'teacher', 'model': model.state_dict()}, paths[name])
    return paths, student, teacher, other_teacher


def run_val(argv):
    parser = val.get_args_parser()
    return val.main(parser.parse_args(argv), parser)


def direct_hist(model, cfg, role, dataset=None):
    """Confusion matrix of whole-image arg-max predictions on `dataset` (default: the clean test
    split), counted with numpy."""
    k = cfg.num_classes
    hist = np.zeros((k, k), dtype=np.int64)
    with torch.no_grad():
        for item in RGBXDataset(cfg, 'val') if dataset is None else dataset:
            extra = item['extra'][None] if role == 'student' else None
            pred = model(item['rgb'][None], extra).logits.argmax(dim=1)[0].numpy()
            label = item['label'].numpy()
            keep = label != cfg.background
            hist += np.bincount(k * label[keep] + pred[keep], minlength=k * k).reshape(k, k)
    return hist


def read_json(path):
    with open(path) as f:
        return json.load(f)


def test_project_checkpoint_with_predictions(dataset_root, checkpoints, tmp_path):
    paths, student, _, _ = checkpoints
    cfg = config(dataset_root)
    out = tmp_path / 'out'
    run_val(['--config', DEMO, '-e', paths['student'], '--whole', '--save_path', str(out),
             *opts(dataset_root)])
    record = read_json(out / 'eval_student.json')
    expected = direct_hist(student, cfg, 'student')
    assert expected.sum() > 0 and np.count_nonzero(expected) > 3
    assert np.array_equal(np.array(record['hist']), expected)
    assert record['num_images'] == NUM_IMAGES and record['mode'] == 'student' and record['eval_mode'] == 'whole'
    assert record['miou'] == pytest.approx(np.nanmean(np.diag(expected) / (
        expected.sum(0) + expected.sum(1) - np.diag(expected))), abs=1e-12)

    names = sorted(f'{n}.png' for n in RGBXDataset(cfg, 'val').names)
    assert sorted(os.listdir(out / 'pred')) == names
    assert sorted(os.listdir(out / 'color')) == names
    item = RGBXDataset(cfg, 'val')[0]
    with torch.no_grad():
        pred = student(item['rgb'][None], item['extra'][None]).logits.argmax(dim=1)[0].numpy()
    saved = cv2.imread(str(out / 'pred' / f'{item["name"]}.png'), cv2.IMREAD_UNCHANGED)
    assert np.array_equal(saved, pred + 1)                    # 1..C, 0 = unlabeled
    assert cv2.imread(str(out / 'color' / f'{item["name"]}.png')).shape == (48, 64, 3)
    assert 'mIoU' in (out / 'val.log').read_text()


def test_official_checkpoint_and_teachers(dataset_root, checkpoints, tmp_path):
    paths, student, teacher, other_teacher = checkpoints
    cfg = config(dataset_root)
    results = run_val(['--config', DEMO, '-e', f'{paths["official"]},{paths["student"]}', '--whole',
                       '--json', str(tmp_path / 'json'), *opts(dataset_root)])
    assert [os.path.basename(p) for p, _ in results] == ['official.pth', 'student.pth']
    expected = direct_hist(student, cfg, 'student')
    for name in ('official', 'student'):
        assert np.array_equal(np.array(read_json(tmp_path / 'json' / f'eval_{name}.json')['hist']),
                              expected)
    # two different teachers in one run: each evaluated with its own weights
    run_val(['--config', DEMO, '-e', paths['teacher'], paths['other_teacher'], '--mode', 'teacher',
             '--whole', '--json', str(tmp_path / 'teachers'), *opts(dataset_root)])
    for name, model in (('teacher', teacher), ('other', other_teacher)):
        hist = np.array(read_json(tmp_path / 'teachers' / f'eval_{name}.json')['hist'])
        assert np.array_equal(hist, direct_hist(model, cfg, 'teacher'))
    assert not np.array_equal(direct_hist(teacher, cfg, 'teacher'),
                              direct_hist(other_teacher, cfg, 'teacher'))


@pytest.mark.integration
def test_two_processes_give_the_one_process_confusion_matrix(dataset_root, checkpoints, tmp_path):
    paths, _, _, _ = checkpoints
    # sliding windows (48 x 64 images, 40 x 48 crop), two scales and flip: every path of the evaluator
    argv = ['--config', DEMO, '-e', paths['student'], '--sliding', '--scales', '0.75', '1',
            '--flip', *opts(dataset_root)]
    run_val(argv + ['--json', str(tmp_path / 'one.json')])   # one thread, as the workers
    env = dict(os.environ, OMP_NUM_THREADS='1', CUDA_VISIBLE_DEVICES='')
    done = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2',
         f'--master_port={free_port()}', 'val.py', *argv, '--json', str(tmp_path / 'two.json'),
         '--save_path', str(tmp_path / 'pred')],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = read_json(tmp_path / 'one.json'), read_json(tmp_path / 'two.json')
    assert two['processes'] == 2 and one['processes'] == 1
    assert np.array(two['hist']).sum() > 0
    assert two['hist'] == one['hist']          # each image counted exactly once
    assert len(os.listdir(tmp_path / 'pred' / 'pred')) == NUM_IMAGES
    assert done.stdout.count('summary') == 1   # only the main process reports


def test_checkpoint_selection(tmp_path):
    run_dir = tmp_path / 'log' / 'student'
    run_dir.mkdir(parents=True)
    for name in ('last', 'best', 'epoch-1', 'epoch-2', 'epoch-10'):
        (run_dir / f'{name}.pth').write_bytes(b'')
    (tmp_path / 'log' / 'teacher').mkdir()
    (tmp_path / 'log' / 'teacher' / 'last.pth').write_bytes(b'')

    def resolve(*values, role='student'):
        found = rd.resolve_checkpoints(values, str(tmp_path / 'log' / role), role)
        return [os.path.relpath(p, tmp_path / 'log') for p in found]

    assert resolve('best') == ['student/best.pth']
    assert resolve('2-10') == ['student/epoch-2.pth', 'student/epoch-10.pth']   # numeric order
    assert resolve('2-') == ['student/epoch-2.pth', 'student/epoch-10.pth']
    assert resolve('1,last', '1') == ['student/epoch-1.pth', 'student/last.pth']  # each once
    assert resolve(str(run_dir)) == ['student/best.pth']
    assert resolve(str(tmp_path / 'log'), role='teacher') == ['teacher/last.pth']
    assert resolve(str(run_dir / 'epoch-2.pth')) == ['student/epoch-2.pth']
    with pytest.raises(ValueError, match=r"no epoch-7\.pth .* holds best\.pth, epoch-1\.pth"):
        resolve('7')
    with pytest.raises(ValueError, match=r'epochs held: 1, 2, 10'):
        resolve('3-9')
    with pytest.raises(ValueError, match=r"checkpoint 'nothere\.pth' does not exist"):
        resolve('nothere.pth')
    with pytest.raises(ValueError, match='no best.pth or last.pth'):
        resolve(str(tmp_path))


def expect_usage_error(capsys, argv, *fragments):
    with pytest.raises(SystemExit) as stop:
        run_val(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    for fragment in fragments:
        assert fragment in err, err
    return err


@pytest.mark.parametrize('case', ['missing file', 'missing epoch', 'teacher as student',
                                  'other backbone', 'other class count', 'bad one of two',
                                  'missing dataset', 'scale too small', 'unwritable json',
                                  'random bytes', 'empty file', 'json under /proc', 'save_path under /proc',
                                  'existing json', 'save_path with predictions'])
def test_bad_input_stops_before_the_first_image(case, dataset_root, checkpoints, tmp_path, capsys):
    paths, _, _, _ = checkpoints
    extra_opts, checkpoint, fragments = {}, paths['student'], []
    if case == 'missing file':
        checkpoint, fragments = str(tmp_path / 'gone.pth'), ['gone.pth', 'does not exist']
    elif case == 'missing epoch':
        checkpoint, fragments = '7', ['epoch-7.pth', str(tmp_path / 'log' / 'student')]
    elif case == 'teacher as student':
        checkpoint = paths['teacher']
        fragments = ['teacher.pth', 'is a teacher', 'model is a student', 'use it with --mode teacher']
    elif case == 'other backbone':
        extra_opts, fragments = {'backbone': 'mit_b1'}, ['mit_b0', 'mit_b1', 'backbone']
    elif case == 'other class count':
        extra_opts = {'num_classes': 10, 'class_names': list('abcdefghij')}
        fragments = ['predicts 8 classes', 'num_classes=10']
    elif case == 'bad one of two':   # the second checkpoint is checked before the first is evaluated
        checkpoint, fragments = f'{paths["student"]},{paths["teacher"]}', ['teacher.pth']
    elif case == 'missing dataset':
        extra_opts, fragments = {'dataset_path': str(tmp_path / 'nodata')}, ['nodata', 'does not exist']
    elif case in ('random bytes', 'empty file'):   # not zip archives: never torch's advice about mmap
        checkpoint = str(tmp_path / 'bad.pth')
        (tmp_path / 'bad.pth').write_bytes(b'\x00junk' * 100 if case == 'random bytes' else b'')
        fragments = ['bad.pth', 'is not a PyTorch checkpoint' if case == 'random bytes' else 'is an empty file']
    out = tmp_path / 'out'
    json_flag, save_path = [], str(out)
    if case == 'unwritable json':   # a folder inside a file
        (tmp_path / 'file').write_text('')
        json_flag, fragments = ['--json', str(tmp_path / 'file' / 'e.json')], ['e.json', 'cannot create its folder']
    elif case == 'json under /proc':   # os.access says yes to root there
        json_flag, fragments = ['--json', '/proc/e.json'], ["cannot write '/proc/e.json'", 'in its folder']
    elif case == 'save_path under /proc':
        save_path, fragments = '/proc/primkd-out', ['/proc/primkd-out', 'cannot create its folder']
    elif case == 'existing json':
        (tmp_path / 'e.json').write_text('{}')
        json_flag, fragments = ['--json', str(tmp_path / 'e.json')], ['e.json', 'exists', '--overwrite']
    elif case == 'save_path with predictions':
        (out / 'pred').mkdir(parents=True)
        (out / 'pred' / '0000.png').write_bytes(b'')
        fragments = ['already holds predictions', '--overwrite']
    scales = []
    if case == 'scale too small':   # the encoder's stride 32 needs 32 pixels
        scales, fragments = ['--scales', '1', '0.2'], ['--scales', 'at least 32 pixels']
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*'))
    err = expect_usage_error(capsys, ['--config', DEMO, '-e', checkpoint, '--save_path', save_path, *scales,
                                      *json_flag, *opts(dataset_root, log_dir=str(tmp_path / 'log'), **extra_opts)],
                             ': error: ', *fragments)
    assert len(err.strip().splitlines()) == 1 and 'mmap' not in err
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob('*')) == before   # nothing was written


def test_a_repeated_evaluation_never_replaces_a_result(dataset_root, checkpoints, tmp_path, capsys):
    paths, _, _, _ = checkpoints
    checkpoint = tmp_path / 'run' / 'best.pth'
    checkpoint.parent.mkdir()
    checkpoint.write_bytes(open(paths['student'], 'rb').read())
    argv = ['--config', DEMO, '-e', str(checkpoint), '--whole', *opts(dataset_root)]
    run_val(argv)
    first = (tmp_path / 'run' / 'eval_best.json').read_text()
    run_val(argv + ['--scales', '0.75'])   # another setting: a result of its own
    assert f"figures: {tmp_path / 'run' / 'eval_best-2.json'}" in capsys.readouterr().out
    assert (tmp_path / 'run' / 'eval_best.json').read_text() == first
    assert read_json(tmp_path / 'run' / 'eval_best-2.json')['scales'] == [0.75]
    run_val(argv + ['--scales', '0.75', '--overwrite'])   # asked for: replaced
    assert read_json(tmp_path / 'run' / 'eval_best.json')['scales'] == [0.75]
    assert sorted(os.listdir(tmp_path / 'run')) == ['best.pth', 'eval_best-2.json', 'eval_best.json', 'val.log']


def test_checkpoints_of_one_name_get_results_of_their_own(tmp_path):
    for run in ('a', 'b'):
        (tmp_path / run).mkdir()
        (tmp_path / run / 'best.pth').write_bytes(b'')
    (tmp_path / 'a' / 'eval_best.json').write_text('{}')
    checkpoints = [str(tmp_path / 'a' / 'best.pth'), str(tmp_path / 'b' / 'best.pth')]
    outputs = val.output_paths(checkpoints, None, str(tmp_path / 'a'))
    assert [os.path.basename(j) for j, _ in outputs.values()] == ['eval_best-2.json', 'eval_best-3.json']
    with pytest.raises(ValueError, match='would write the same'):
        val.output_paths(checkpoints, str(tmp_path / 'pred'), None, overwrite=True)


@pytest.mark.integration
def test_command_line_error_has_no_traceback(tmp_path):
    done = subprocess.run([sys.executable, 'val.py', '--config', DEMO, '-e', str(tmp_path / 'x.pth')],
                          cwd=REPO_ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert 'Traceback' not in done.stderr
    assert done.stderr.strip() == (f"val.py: error: checkpoint '{tmp_path / 'x.pth'}' does not "
                                   "exist (-e takes a checkpoint file, a run directory, last, best, "
                                   "an epoch N or a range START-END)")


@pytest.mark.integration
def test_val_sh_runs_one_process_without_gpus(dataset_root, checkpoints, tmp_path):
    paths, _, _, _ = checkpoints
    env = dict(os.environ, PRIMKD_NO_VENV='1', CUDA_VISIBLE_DEVICES='', OMP_NUM_THREADS='1',
               PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ['PATH'])
    done = subprocess.run(['bash', 'val.sh', DEMO, '-e', paths['student'], '--whole', '-d', '0',
                           '--json', str(tmp_path / 'e.json'), *opts(dataset_root)],
                          cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    assert '-d/--devices is ignored' in done.stderr
    assert read_json(tmp_path / 'e.json')['processes'] == 1
