"""The training engine: schedule, parameter groups, checkpoints, resume, logging, the official flags,
and multi-process training under torchrun."""
import copy
import errno
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

import train
from config import REPO_ROOT, load_config
from dataloader.synthetic_rooms import make_synthetic_dataset
from engine.cli import train_args_parser
from engine.logger import read_scalars
from engine.rng import resumable_rng_state, rng_state, set_rng_state
from engine.run_dir import atomic_save, find_resume_checkpoint
from engine.run_dir import read_training_checkpoint as read_checkpoint
from engine.optim import build_optimizer, build_scheduler, load_optimizer_state, warmup_poly_factor
from models.builder import build_model
from models.weight_layouts import to_official_state_dict
from helpers import DEMO_CONFIG, free_port, locked_by_another_process, read_metrics, tiny_opts


@pytest.fixture(scope='module')
def dataset(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('data') / 'Synthetic')
    make_synthetic_dataset(root, num_train=8, num_test=4, height=64, width=64, seed=3)
    return root


def run_main(argv):
    parser = train_args_parser()
    return train.main(parser.parse_args(argv), parser)


@pytest.fixture(scope='module')
def teacher_checkpoint(dataset, tmp_path_factory):
    log_dir = str(tmp_path_factory.mktemp('teacher_run'))
    run_main(['--config', DEMO_CONFIG, '--mode', 'teacher', '--device', 'cpu',
              '--opts', *tiny_opts(dataset, log_dir, nepochs=1)])
    return os.path.join(log_dir, 'teacher', 'last.pth')


def test_warmup_then_poly_schedule_matches_the_formula():
    cfg = load_config(DEMO_CONFIG, ['lr=6e-5', 'nepochs=10', 'niters_per_epoch=10', 'warm_up_epoch=2',
                                    'lr_power=0.9'])
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
    scheduler = build_scheduler(optimizer, cfg)
    seen = []
    for _ in range(100):
        seen.append(optimizer.param_groups[0]['lr'])
        optimizer.step()
        scheduler.step()
    # By hand: 20 warm-up iterations of 100, then 6e-5 * (1 - it/100) ** 0.9.
    assert seen[0] == 0.0
    assert seen[5] == pytest.approx(6e-5 * 5 / 20)
    assert seen[19] == pytest.approx(6e-5 * 19 / 20)
    assert seen[20] == pytest.approx(6e-5 * 0.8 ** 0.9)
    assert seen[60] == pytest.approx(6e-5 * 0.4 ** 0.9)
    assert seen[99] == pytest.approx(6e-5 * 0.01 ** 0.9)


def test_a_rebuilt_schedule_stands_where_the_configs_schedule_stands_after_the_epochs_done():
    def lrs(cfg, epochs_done, steps, saved=None):
        optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=cfg.lr)
        if saved is not None:
            load_optimizer_state(optimizer, saved)
        scheduler = build_scheduler(optimizer, cfg, epochs_done)
        seen = []
        for _ in range(steps):
            seen.append(optimizer.param_groups[0]['lr'])
            optimizer.step()
            scheduler.step()
        return seen, optimizer.state_dict()

    cfg = load_config(DEMO_CONFIG, ['lr=6e-5', 'nepochs=3', 'niters_per_epoch=10', 'warm_up_epoch=1'])
    full, saved = lrs(cfg, 0, 30)
    assert lrs(cfg, 2, 10)[0] == full[20:]   # a resume continues the schedule exactly
    # A resume after batch 4 -> 8 (half the iterations per epoch), nepochs 3 -> 5 and lr 6e-5 -> 1e-4, from a
    # checkpoint whose optimizer state holds the old lr: every later step gets the new schedule's lr, none 0.
    longer = load_config(DEMO_CONFIG, ['lr=1e-4', 'nepochs=5', 'niters_per_epoch=5', 'warm_up_epoch=1'])
    resumed, _ = lrs(longer, 3, 10, saved=saved)
    assert resumed == lrs(longer, 0, 25)[0][15:] and min(resumed) > 0


def test_no_weight_decay_on_norms_and_biases():
    cfg = load_config(DEMO_CONFIG, ['weight_decay=0.01'])
    student = build_model(cfg, 'student', distill=True)
    decay, no_decay = build_optimizer(student, cfg).param_groups
    # The official rule, by module type: weights of Linear/Conv decay; biases and every parameter
    # of a norm layer do not.
    norm_types = (torch.nn.LayerNorm, torch.nn.BatchNorm2d, torch.nn.GroupNorm)
    want_decay, want_no_decay = set(), set()
    for module in student.modules():
        for name, p in module.named_parameters(recurse=False):
            if isinstance(module, norm_types) or name == 'bias':
                want_no_decay.add(id(p))
            else:
                want_decay.add(id(p))
    assert {id(p) for p in decay['params']} == want_decay
    assert {id(p) for p in no_decay['params']} == want_no_decay
    assert decay['weight_decay'] == 0.01 and no_decay['weight_decay'] == 0.0


@pytest.mark.integration
def test_save_killed_midway_keeps_previous_checkpoint(tmp_path):
    path = str(tmp_path / 'last.pth')
    atomic_save({'format': 'primkd', 'optimizer': {}, 'epoch': 1, 'iteration': 10, 'value': torch.ones(3)}, path)
    # A second process dies (no clean-up at all) in the middle of writing the next checkpoint.
    script = textwrap.dedent(f'''
        import os, torch
        from engine.run_dir import atomic_save
        real_save = torch.save
        def dying_save(obj, f, *a, **k):
            f.write(b'half a checkpoint')
            f.flush()
            os._exit(9)
        torch.save = dying_save
        atomic_save({{'format': 'primkd', 'optimizer': {{}}, 'epoch': 2, 'iteration': 20}}, {path!r})
    ''')
    proc = subprocess.run([sys.executable, '-c', script], cwd=REPO_ROOT)
    assert proc.returncode == 9
    assert any('.tmp-' in name for name in os.listdir(tmp_path))  # the torn temporary file is left
    ckpt = read_checkpoint(path)
    assert ckpt['epoch'] == 1 and torch.equal(ckpt['value'], torch.ones(3))
    assert find_resume_checkpoint(str(tmp_path)) == path


def test_resume_auto_skips_a_torn_file(tmp_path):
    good = str(tmp_path / 'epoch-1.pth')
    atomic_save({'format': 'primkd', 'optimizer': {}, 'epoch': 1, 'iteration': 10}, good)
    with open(tmp_path / 'last.pth', 'wb') as f:  # written by something that was not atomic
        f.write(b'PK\x03\x04 torn')
    messages = []
    assert find_resume_checkpoint(str(tmp_path), log=messages.append) == good
    assert any('last.pth' in m for m in messages)


@pytest.mark.heavy
def test_resumed_run_equals_uninterrupted_run(dataset, teacher_checkpoint, tmp_path):
    opts = ['--teacher', teacher_checkpoint, '--device', 'cpu']
    full_dir, split_dir = str(tmp_path / 'full'), str(tmp_path / 'split')
    full = run_main(['--config', DEMO_CONFIG, *opts, '--opts', *tiny_opts(dataset, full_dir)])
    run_main(['--config', DEMO_CONFIG, *opts, '--stop-after-epoch', '1',
              '--opts', *tiny_opts(dataset, split_dir)])
    assert read_checkpoint(os.path.join(split_dir, 'student', 'last.pth'))['epoch'] == 1
    resumed = run_main(['--config', DEMO_CONFIG, *opts, '--resume', 'auto',
                        '--opts', *tiny_opts(dataset, split_dir)])
    for (name, a), (_, b) in zip(full.state_dict().items(), resumed.state_dict().items()):
        assert torch.allclose(a.double(), b.double(), atol=1e-6, rtol=0), name
    full_log = read_metrics(os.path.join(full_dir, 'student'))
    split_log = read_metrics(os.path.join(split_dir, 'student'))
    assert [r['epoch'] for r in split_log] == [1, 2, 3]
    for a, b in zip(full_log, split_log):
        assert a.keys() == b.keys() and a['seconds'] > 0
        for key in a.keys() - {'seconds'}:   # wall time differs from run to run
            assert a[key] == pytest.approx(b[key], abs=1e-6), key


@pytest.mark.heavy
def test_evaluating_every_epoch_leaves_training_unchanged(dataset, teacher_checkpoint, tmp_path):
    # Best-on-test selection evaluates every epoch; the last checkpoint must be the one a run that
    # evaluates only at its end gives, bit for bit (evaluation draws no randomness, updates no buffer).
    opts = ['--teacher', teacher_checkpoint, '--device', 'cpu']
    every, once = str(tmp_path / 'every'), str(tmp_path / 'once')
    run_main(['--config', DEMO_CONFIG, *opts, '--opts', *tiny_opts(dataset, every, eval_step=1)])
    run_main(['--config', DEMO_CONFIG, *opts, '--opts', *tiny_opts(dataset, once, eval_step=100)])
    a = read_checkpoint(os.path.join(every, 'student', 'last.pth'))['model']
    b = read_checkpoint(os.path.join(once, 'student', 'last.pth'))['model']
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [('miou' in r) for r in read_metrics(os.path.join(every, 'student'))] == [True, True, True]
    assert [('miou' in r) for r in read_metrics(os.path.join(once, 'student'))] == [False, False, True]


def torn_file(folder, teacher):
    (folder / 'torn.pth').write_bytes(b'not a checkpoint')
    return str(folder / 'torn.pth')


def weights_only_file(folder, teacher):
    torch.save({'model': {}}, folder / 'weights.pth')
    return str(folder / 'weights.pth')


def teacher_run_checkpoint(folder, teacher):
    return teacher  # a training checkpoint, but of the RGB-only teacher


@pytest.mark.integration
@pytest.mark.parametrize('make_bad, needle', [(torn_file, 'is not a PyTorch checkpoint'),
                                              (weights_only_file, 'not a training checkpoint'),
                                              (teacher_run_checkpoint, 'resume it with --mode teacher')])
def test_bad_resume_checkpoint_is_reported_before_work(dataset, teacher_checkpoint, tmp_path, make_bad, needle):
    bad = make_bad(tmp_path, teacher_checkpoint)
    proc = subprocess.run([sys.executable, 'train.py', '--config', DEMO_CONFIG, '--device', 'cpu',
                           '--teacher', teacher_checkpoint, '--resume', bad,
                           '--opts', *tiny_opts(dataset, str(tmp_path / 'run'))],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and bad in proc.stderr and 'Traceback' not in proc.stderr


@pytest.mark.integration
def test_official_command_line_logs_every_term(dataset, teacher_checkpoint, tmp_path):
    log_dir = str(tmp_path / 'run')
    argv = ['--port=29516', '--distillation_alpha=1.0', '--distillation_beta=0.1', '--distillation_flag=1',
            '--lambda_mask=0.75', '--select=max', '--mask_single=hint']
    proc = subprocess.run([sys.executable, 'train.py', *argv, '--config', DEMO_CONFIG, '--teacher',
                           teacher_checkpoint, '--opts', *tiny_opts(dataset, log_dir, nepochs=1)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run_dir = os.path.join(log_dir, 'student')
    saved = load_config(os.path.join(run_dir, 'config.py'))
    assert (saved.distillation_alpha, saved.distillation_beta, saved.distillation_flag, saved.select,
            saved.mask_single, saved.lambda_mask) == (1.0, 0.1, 1, 'max', 'hint', 0.75)
    scalars = read_scalars(os.path.join(run_dir, 'tb'))
    for tag in ('loss', 'ce', 'kl', 'feat', 'feat_loss1', 'feat_loss2', 'feat_loss3', 'feat_loss4',
                'selected_loss1', 'selected_loss2', 'selected_loss3', 'selected_loss4', 'lr'):
        assert len(scalars[f'train/{tag}']) == 2, tag  # one per iteration
    for (_, loss, _), (_, ce, _), (_, kl, _), (_, feat, _) in zip(*(scalars[f'train/{t}'] for t in ('loss', 'ce', 'kl', 'feat'))):
        assert kl > 0 and feat > 0 and loss == pytest.approx(ce + kl + feat, rel=1e-5)
    for step in range(2):
        per_stage = [scalars[f'train/feat_loss{k}'][step][1] for k in range(1, 5)]
        assert scalars['train/feat'][step][1] == pytest.approx(0.1 * max(per_stage), rel=1e-5)
        selected = [scalars[f'train/selected_loss{k}'][step][1] for k in range(1, 5)]
        assert selected == [1.0 if k == per_stage.index(max(per_stage)) else 0.0 for k in range(4)]
    assert 'val/miou' in scalars and any(t.startswith('val_iou/') for t in scalars)
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert 'kl=' in log and 'feat=' in log and 'validation mIoU' in log
    assert 'alpha 1.0 (logit term on: KL, flag 1), beta 0.1' in log
    # The one validation improved on nothing: best.pth is an exact copy of the epoch's checkpoint.
    with open(os.path.join(run_dir, 'best.pth'), 'rb') as best, open(os.path.join(run_dir, 'last.pth'), 'rb') as last:
        assert best.read() == last.read()


def test_zero_alpha_and_beta_is_cross_entropy_alone(dataset, tmp_path):
    log_dir = str(tmp_path / 'run')
    run_main(['--config', DEMO_CONFIG, '--device', 'cpu', '--distillation_alpha', '0', '--distillation_beta', '0',
              '--opts', *tiny_opts(dataset, log_dir, nepochs=1, teacher_checkpoint=None)])
    scalars = read_scalars(os.path.join(log_dir, 'student', 'tb'))
    assert 'train/kl' not in scalars and 'train/feat' not in scalars
    assert [v for _, v, _ in scalars['train/loss']] == [v for _, v, _ in scalars['train/ce']]


@pytest.mark.parametrize('enabled', [True, False])
def test_cudnn_benchmark_follows_the_config(dataset, tmp_path, monkeypatch, enabled):
    monkeypatch.setattr(torch.backends.cudnn, 'benchmark', not enabled)
    run_main(['--config', DEMO_CONFIG, '--device', 'cpu', '--distillation_alpha', '0', '--distillation_beta', '0',
              '--opts', *tiny_opts(dataset, str(tmp_path / 'run'), nepochs=1, teacher_checkpoint=None,
                                   cudnn_benchmark=enabled)])
    assert torch.backends.cudnn.benchmark is enabled


@pytest.mark.heavy
def test_non_finite_loss_stops_and_keeps_last_checkpoint(dataset, teacher_checkpoint, tmp_path, monkeypatch):
    log_dir = str(tmp_path / 'run')
    argv = ['--config', DEMO_CONFIG, '--teacher', teacher_checkpoint, '--device', 'cpu',
            '--opts', *tiny_opts(dataset, log_dir)]
    run_main(argv + ['nepochs=1'])
    last = os.path.join(log_dir, 'student', 'last.pth')
    before = open(last, 'rb').read()

    real = train.train_one_epoch.__globals__['compute_losses']
    calls = []

    def poisoned(*a, **k):
        loss, terms = real(*a, **k)
        calls.append(1)
        if len(calls) == 2:
            terms['kl'] = terms['kl'] * float('nan')
            loss = loss + terms['kl']
        return loss, terms
    monkeypatch.setitem(train.train_one_epoch.__globals__, 'compute_losses', poisoned)
    real_step, steps = torch.amp.GradScaler.step, []

    def counted_step(self, optimizer, *a, **k):
        steps.append(1)
        return real_step(self, optimizer, *a, **k)
    monkeypatch.setattr(torch.amp.GradScaler, 'step', counted_step)
    with pytest.raises(SystemExit) as exit_info:
        run_main(argv + ['nepochs=3'] + ['--resume', 'auto'])
    assert exit_info.value.code == 1
    assert len(steps) == 1  # the poisoned step computed gradients but never applied them
    assert open(last, 'rb').read() == before
    log = open(os.path.join(log_dir, 'student', 'train.log')).read()
    assert 'non-finite loss at epoch 2, iteration 1' in log and 'kl=nan' in log


@pytest.mark.integration
@pytest.mark.parametrize('opts, named', [
    ({'distillation_logit_loss': 'kd'}, 'alpha 3.0 (logit term on: kd, tau 4, flag 1; Hinton et al. 2015'),
    ({'distillation_logit_loss': 'cwd', 'distillation_tau': 2.0}, 'alpha 3.0 (logit term on: cwd, tau 2; Shu et al.'),
    ({'distillation_logit_loss': 'dist'}, 'alpha 3.0 (logit term on: dist, tau 1, inter 1, intra 1; Huang et al.'),
])
def test_train_log_names_the_logit_distiller(dataset, teacher_checkpoint, tmp_path, opts, named):
    log_dir = str(tmp_path / 'run')
    proc = subprocess.run([sys.executable, 'train.py', '--config', DEMO_CONFIG, '--teacher', teacher_checkpoint,
                           '--distillation_alpha', '3', '--distillation_beta', '0',
                           '--opts', *tiny_opts(dataset, log_dir, nepochs=1, **opts)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]
    log = open(os.path.join(log_dir, 'student', 'train.log')).read()
    assert named in log
    kl = [float(v) for v in re.findall(r' kl=([0-9.]+)', log)]
    assert kl and all(v > 0 for v in kl)


@pytest.mark.integration
@pytest.mark.parametrize('flags, opts, needle', [
    (['--teacher', 'nope.pth'], {}, 'nope.pth'),
    (['--mode', 'teacher'], {'pretrained_model': 'pretrained/segformer/mit_b0_missing.pth'}, 'mit_b0_missing.pth'),
    (['--mode', 'teacher'], {'dataset_path': '/nonexistent/Synthetic'}, '/nonexistent/Synthetic'),
])
def test_missing_inputs_are_reported_before_work(dataset, tmp_path, flags, opts, needle):
    log_dir = str(tmp_path / 'run')
    proc = subprocess.run([sys.executable, 'train.py', '--config', DEMO_CONFIG, '--device', 'cpu', *flags,
                           '--opts', *tiny_opts(dataset, log_dir, **opts)],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert needle in proc.stderr and 'Traceback' not in proc.stderr
    assert not os.path.exists(log_dir)   # a refused run leaves no (empty) run directory behind


DRIVER = '''
import json, os, sys
run_dir = {run_dir!r}
writes = []
def audit(event, args):
    if event == 'open' and isinstance(args[0], str) and args[0].startswith(run_dir) \\
            and any(c in str(args[1]) for c in 'wax+'):
        writes.append(args[0])
    elif event in ('os.rename', 'os.mkdir') and str(args[0]).startswith(run_dir):
        writes.append(str(args[0]))
sys.addaudithook(audit)
import torch, train
from engine.cli import train_args_parser
parser = train_args_parser()
model = train.main(parser.parse_args(sys.argv[1:]), parser)
rank = os.environ['RANK']
torch.save(model.state_dict(), os.path.join({out!r}, f'rank{{rank}}.pt'))
with open(os.path.join({out!r}, f'rank{{rank}}_writes.json'), 'w') as f:
    json.dump(writes, f)
'''


@pytest.mark.integration
def test_two_process_torchrun_training(dataset, teacher_checkpoint, tmp_path):
    log_dir, out = str(tmp_path / 'run'), str(tmp_path / 'out')
    os.makedirs(out)
    driver = tmp_path / 'driver.py'
    driver.write_text(DRIVER.format(run_dir=log_dir, out=out))
    env = {**os.environ, 'OMP_NUM_THREADS': '1'}
    proc = subprocess.run(
        [sys.executable, '-m', 'torch.distributed.run', '--nproc_per_node=2', f'--master_port={free_port()}',
         str(driver), '--config', DEMO_CONFIG, '--teacher', teacher_checkpoint, '--device', 'cpu',
         '--opts', *tiny_opts(dataset, log_dir, nepochs=2, batch_size=4)],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    rank0, rank1 = (torch.load(os.path.join(out, f'rank{r}.pt'), weights_only=True) for r in (0, 1))
    assert rank0.keys() == rank1.keys()
    for name in rank0:
        assert torch.equal(rank0[name], rank1[name]), name
    writes0, writes1 = (json.load(open(os.path.join(out, f'rank{r}_writes.json'))) for r in (0, 1))
    assert writes1 == []
    assert any(w.endswith('last.pth') or '.last.pth.tmp' in w for w in writes0)
    assert any('tfevents' in w for w in writes0) and any(w.endswith('train.log') for w in writes0)
    records = read_metrics(os.path.join(log_dir, 'student'))
    assert [r['epoch'] for r in records] == [1, 2] and all(math.isfinite(r['loss']) for r in records)


def test_encoders_start_from_the_configured_imagenet_weights(dataset, tmp_path):
    cfg = load_config(DEMO_CONFIG, ['decoder_embed_dim=32'])
    teacher_layout = to_official_state_dict(build_model(cfg, 'teacher'))
    # A SegFormer mit_b0.pth: the bare encoder keys plus an ImageNet classifier.
    imagenet = {k[len('backbone.'):]: torch.randn(v.shape) for k, v in teacher_layout.items()
                if k.startswith('backbone.')}
    imagenet['head.weight'], imagenet['head.bias'] = torch.randn(1000, 256), torch.randn(1000)
    torch.save(imagenet, tmp_path / 'mit_b0.pth')
    # One iteration inside the warm-up: its learning rate is exactly 0, so the weights stay as loaded.
    student = run_main(['--config', DEMO_CONFIG, '--device', 'cpu', '--distillation_alpha', '0',
                        '--distillation_beta', '0', '--opts',
                        *tiny_opts(dataset, str(tmp_path / 'run'), nepochs=1, niters_per_epoch=1,
                                   pretrained_model=str(tmp_path / 'mit_b0.pth'), teacher_checkpoint=None)])
    exported = to_official_state_dict(student)
    for key, value in imagenet.items():
        if not key.startswith('head.'):
            assert torch.equal(exported[f'backbone.{key}'], value), key
            assert torch.equal(exported[f'backbone.extra_{key}'], value), key


def test_resume_applies_allowed_changes_and_refuses_others(dataset, tmp_path, capsys):
    run_dir = os.path.join(str(tmp_path), 'student')
    argv = ['--config', DEMO_CONFIG, '--device', 'cpu', '--distillation_alpha', '0', '--distillation_beta', '0']

    def opts(**changes):
        return ['--opts', *tiny_opts(dataset, str(tmp_path), teacher_checkpoint=None, **changes)]
    run_main(argv + opts(nepochs=1))
    config_text = open(os.path.join(run_dir, 'config.py')).read()
    lr = load_config(DEMO_CONFIG).lr
    # Another lr and batch size: refused before any work, each key named with both values.
    with pytest.raises(SystemExit) as stop:
        run_main(argv + ['--resume', 'auto'] + opts(nepochs=2, lr=lr / 10, batch_size=4))
    [err] = error_lines(capsys.readouterr().err)
    assert stop.value.code == 2
    assert f'batch_size 2 -> 4, lr {lr!r} -> {lr / 10!r}' in err and '--allow-config-change' in err
    assert open(os.path.join(run_dir, 'config.py')).read() == config_text
    # Allowed: nepochs 1 -> 2 rebuilds the schedule for 2 epochs; --allow-config-change applies the new lr.
    run_main(argv + ['--resume', 'auto', '--allow-config-change'] + opts(nepochs=2, lr=lr / 10))
    saved = load_config(os.path.join(run_dir, 'config.py'))
    assert (saved.lr, saved.nepochs) == (lr / 10, 2)   # config.py says what the run used
    lrs = {step: lr for step, lr, _ in read_scalars(os.path.join(run_dir, 'tb'))['train/lr']}
    for step in (2, 3):   # epoch 2 of a 2-epoch schedule of 2 iterations each, 1 epoch of warm-up
        assert lrs[step] == pytest.approx(lr / 10 * warmup_poly_factor(step, 4, 2, saved.lr_power), rel=1e-6)
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert 'resuming with changed settings: nepochs 1 -> 2' in log
    assert f'resuming with changed settings (--allow-config-change): lr {lr!r} -> {lr / 10!r}' in log
    assert [r['epoch'] for r in read_metrics(run_dir)] == [1, 2]


def error_lines(err):
    """The error messages on stderr (besides them it holds progress bars only); there must be no
    traceback."""
    assert 'Traceback' not in err, err[-3000:]
    return re.findall(r'[\w.]+: error: [^\r\n]*', err)


def test_a_second_run_in_the_same_run_directory_is_refused(dataset, tmp_path, capsys):
    run_dir = str(tmp_path / 'teacher')
    holder, release = locked_by_another_process(run_dir)
    try:
        with pytest.raises(SystemExit) as stop:
            run_main(['--config', DEMO_CONFIG, '--device', 'cpu', '--mode', 'teacher',
                      '--opts', *tiny_opts(dataset, str(tmp_path))])
        assert os.listdir(run_dir) == ['run.lock']   # nothing of the refused run
    finally:
        release.set()
        holder.join(60)
    [line] = error_lines(capsys.readouterr().err)
    assert stop.value.code == 2
    assert f"run directory '{run_dir}' is in use by another run (pid {holder.pid} on host" in line


@pytest.mark.parametrize('log_dir', ['/proc/primkd-log', 'a file'])
def test_an_impossible_log_dir_is_one_line(dataset, tmp_path, capsys, log_dir):
    if log_dir == 'a file':
        (tmp_path / 'file').write_text('')
        log_dir = str(tmp_path / 'file' / 'log')
    with pytest.raises(SystemExit) as stop:
        run_main(['--config', DEMO_CONFIG, '--device', 'cpu', '--mode', 'teacher',
                  '--opts', *tiny_opts(dataset, log_dir)])
    [err] = error_lines(capsys.readouterr().err)
    assert stop.value.code == 2
    assert f"cannot write in run directory '{os.path.join(log_dir, 'teacher')}' (config key log_dir)" in err


@pytest.mark.integration
def test_a_full_disk_during_a_save_ends_in_one_line_keeping_the_checkpoint(dataset, tmp_path, capsys, monkeypatch):
    run_dir = str(tmp_path / 'teacher')
    argv = ['--config', DEMO_CONFIG, '--device', 'cpu', '--mode', 'teacher']
    run_main(argv + ['--opts', *tiny_opts(dataset, str(tmp_path), nepochs=1)])
    before = open(os.path.join(run_dir, 'last.pth'), 'rb').read()

    def full_disk(obj, f, *args, **kwargs):
        f.write(b'the first bytes')
        raise OSError(errno.ENOSPC, 'No space left on device')
    monkeypatch.setattr(torch, 'save', full_disk)
    with pytest.raises(SystemExit) as stop:
        run_main(argv + ['--resume', 'auto', '--opts', *tiny_opts(dataset, str(tmp_path), nepochs=2)])
    [err] = error_lines(capsys.readouterr().err)
    assert stop.value.code == 1
    assert (f"epoch 2: cannot write checkpoint '{os.path.join(run_dir, 'last.pth')}': No space left on device; "
            f"the last good checkpoint is") in err and '(epoch 1' in err
    assert open(os.path.join(run_dir, 'last.pth'), 'rb').read() == before
    # What a save killed outright leaves is removed at the next start (here one refused by a check).
    dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'], capture_output=True,
                          text=True).stdout.strip()
    open(os.path.join(run_dir, f'.last.pth.tmp-{dead}'), 'wb').close()
    with pytest.raises(SystemExit):
        run_main(argv + ['--resume', 'auto', '--opts', *tiny_opts(dataset, str(tmp_path), nepochs=2, seed=1)])
    assert f'.last.pth.tmp-{dead}' not in os.listdir(run_dir)


def test_a_file_unreadable_during_training_ends_in_one_line(dataset, tmp_path, capsys, monkeypatch):
    data = str(tmp_path / 'data')
    shutil.copytree(dataset, data)
    real = train.train_one_epoch

    def breaking_the_images(*args, **kwargs):
        if args[7] == 2:   # epoch 2: every RGB image becomes unreadable
            for name in os.listdir(os.path.join(data, 'RGB')):
                open(os.path.join(data, 'RGB', name), 'wb').write(b'not an image')
        return real(*args, **kwargs)
    monkeypatch.setattr(train, 'train_one_epoch', breaking_the_images)
    with pytest.raises(SystemExit) as stop:   # a loader worker meets it and passes it on
        run_main(['--config', DEMO_CONFIG, '--device', 'cpu', '--mode', 'teacher',
                  '--opts', *tiny_opts(data, str(tmp_path), nepochs=2, num_workers=1)])
    [err] = error_lines(capsys.readouterr().err)
    assert stop.value.code == 1
    assert f": error: epoch 2: '{os.path.join(data, 'RGB')}" in err and 'cannot be read' in err
    assert f"the last good checkpoint is '{tmp_path / 'teacher'}" in err and '(epoch 1' in err


STOPPING_DRIVER = '''
import os, signal, sys
sys.path.insert(0, {repo!r})
import train
from engine.cli import train_args_parser
real = train.train_one_epoch
def stopped(*args, **kwargs):
    if os.environ['RANK'] == '1':
        os.kill(os.getpid(), signal.SIGSTOP)   # stopped, not dead: its connections stay open
    return real(*args, **kwargs)
train.train_one_epoch = stopped
parser = train_args_parser()
train.main(parser.parse_args(sys.argv[1:]), parser)
'''


@pytest.mark.integration
def test_a_stopped_process_ends_the_run_in_bounded_time(dataset, tmp_path):
    driver = tmp_path / 'driver.py'
    driver.write_text(STOPPING_DRIVER.format(repo=REPO_ROOT))
    env = {**os.environ, 'OMP_NUM_THREADS': '1', 'WORLD_SIZE': '2', 'MASTER_ADDR': '127.0.0.1',
           'MASTER_PORT': str(free_port())}
    argv = [sys.executable, str(driver), '--config', DEMO_CONFIG, '--device', 'cpu', '--mode', 'teacher',
            '--opts', *tiny_opts(dataset, str(tmp_path), batch_size=4, dist_timeout_minutes=0.25)]
    processes = [subprocess.Popen(argv, env={**env, 'RANK': str(r), 'LOCAL_RANK': str(r)}, cwd=REPO_ROOT,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True) for r in (0, 1)]
    try:
        _, err = processes[0].communicate(timeout=300)
    finally:
        for process in processes:
            process.kill()
            process.wait()
    assert processes[0].returncode == 1, err[-3000:]
    [err] = error_lines(err)
    assert 'epoch 1: no answer from another process within dist_timeout_minutes=0.25' in err
    assert 'no checkpoint has been written' in err


def test_a_torchrun_restart_resumes_and_an_epoch_run_again_replaces_its_metrics(dataset, tmp_path, monkeypatch):
    run_dir = str(tmp_path / 'teacher')
    argv = ['--config', DEMO_CONFIG, '--device', 'cpu', '--mode', 'teacher',
            '--opts', *tiny_opts(dataset, str(tmp_path), nepochs=2)]
    run_main(['--stop-after-epoch', '1'] + argv)
    with open(os.path.join(run_dir, 'metrics.jsonl'), 'a') as f:   # epoch 2 recorded, then killed while saving
        f.write(json.dumps({'epoch': 2, 'loss': -1.0}) + '\n')
    monkeypatch.setenv('TORCHELASTIC_RESTART_COUNT', '1')
    run_main(argv)   # no --resume, as the restarted command line has none
    records = read_metrics(run_dir)
    assert [r['epoch'] for r in records] == [1, 2] and records[1]['loss'] > 0
    assert 'torchrun restart 1: resuming from the newest checkpoint' in open(os.path.join(run_dir, 'train.log')).read()


@pytest.mark.integration
@pytest.mark.skipif(torch.cuda.is_available(), reason='checks the message on a machine without CUDA')
def test_cuda_asked_for_without_cuda_is_a_clear_error(dataset, tmp_path):
    proc = subprocess.run([sys.executable, 'train.py', '--config', DEMO_CONFIG, '--device', 'cuda',
                           '--opts', *tiny_opts(dataset, str(tmp_path / 'run'))],
                          cwd=REPO_ROOT, capture_output=True, text=True)
    assert proc.returncode == 2 and 'CUDA is not available' in proc.stderr and 'Traceback' not in proc.stderr


def test_rng_state_round_trip_and_no_cuda_on_cpu_runs(monkeypatch):
    def no_cuda(*args, **kwargs):
        raise AssertionError('a CPU run must not touch the CUDA generator')
    # On a GPU host a CPU run must leave CUDA alone (asking for its state creates a context).
    monkeypatch.setattr(torch.cuda, 'is_available', lambda: True)
    monkeypatch.setattr(torch.cuda, 'get_rng_state', no_cuda)
    monkeypatch.setattr(torch.cuda, 'set_rng_state', no_cuda)
    cpu = torch.device('cpu')
    state = rng_state(cpu)
    assert 'cuda' not in state

    def draws():
        return random.random(), np.random.rand(), torch.rand(3).tolist()
    first = draws()
    set_rng_state(state, cpu)
    assert draws() == first


def test_resumed_randomness_continues_only_where_it_can():
    cpu_states = [{'torch': 0}, {'torch': 1}]
    gpu_states = [{'torch': 0, 'cuda': 0}, {'torch': 1, 'cuda': 1}]
    cpu, gpu = torch.device('cpu'), torch.device('cuda', 1)
    assert resumable_rng_state(cpu_states, 1, 2, cpu) is cpu_states[1]
    assert resumable_rng_state(gpu_states, 1, 2, gpu) is gpu_states[1]
    assert resumable_rng_state(gpu_states, 0, 2, cpu) is gpu_states[0]
    assert resumable_rng_state(cpu_states, 1, 2, gpu) is None  # no CUDA generator was saved
    assert resumable_rng_state(cpu_states, 0, 1, cpu) is None  # another number of processes


@pytest.mark.parametrize('fused', [False, True])
def test_resume_in_another_memory_layout_continues_adamw_exactly(fused):
    """A run saved in the standard layout and resumed with channels_last must take the step the
    uninterrupted run takes (fused AdamW assumes weights and moments share one layout)."""
    torch.manual_seed(0)
    inputs = torch.randn(2, 3, 16, 16)

    def step(model, optimizer, x):
        optimizer.zero_grad()
        model(x).square().mean().backward()
        optimizer.step()

    reference = torch.nn.Conv2d(3, 8, 7)
    optimizer = torch.optim.AdamW(reference.parameters(), lr=0.1, fused=fused)
    step(reference, optimizer, inputs)
    saved_model = {k: v.clone() for k, v in reference.state_dict().items()}
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    step(reference, optimizer, inputs)

    resumed = torch.nn.Conv2d(3, 8, 7)
    resumed.load_state_dict(saved_model)
    resumed.to(memory_format=torch.channels_last)
    optimizer = torch.optim.AdamW(resumed.parameters(), lr=0.1, fused=fused)
    load_optimizer_state(optimizer, saved_optimizer)
    step(resumed, optimizer, inputs.contiguous(memory_format=torch.channels_last))
    assert resumed.weight.is_contiguous(memory_format=torch.channels_last)
    assert torch.allclose(resumed.weight, reference.weight, atol=1e-6, rtol=0)
    assert torch.allclose(resumed.bias, reference.bias, atol=1e-6, rtol=0)
