"""tools/gpu_check.py, the one-command GPU check, on a machine without a GPU: its refusal to start,
the launcher's single-process torchrun (PRIMKD_TORCHRUN=1), the pieces that read its stages'
results, and (slow) the whole check rehearsed on the CPU."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from config import REPO_ROOT
from engine import distributed as du
from tools import gpu_check as gc

NVIDIA_SMI = '''#!/usr/bin/env bash
echo "535.104.05, NVIDIA H100 80GB HBM3"
'''
FAKE_PYTHON = '''#!/usr/bin/env bash
echo "$@" >> "$FAKE_LOG"
if [ "$1 $2" = "-m engine.devices" ]; then
    echo "${FAKE_GPUS:-0}"
fi
'''


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items()
           if k not in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'PRIMKD_TORCHRUN',
                        'GPU_CHECK_REHEARSE', 'TORCHELASTIC_RUN_ID')}
    # PRIMKD_NO_VENV=1 runs the `python` on PATH: this interpreter's, as CI's PATH need not hold one
    path = os.path.dirname(sys.executable) + os.pathsep + env['PATH']
    return {**env, 'PRIMKD_NO_VENV': '1', 'OMP_NUM_THREADS': '1', 'PATH': path, **extra}


def run(command, env, timeout=120):
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=timeout, env=env)


def stub_bin(tmp_path, name, text):
    (tmp_path / 'bin').mkdir(exist_ok=True)
    (tmp_path / 'bin' / name).write_text(text)
    (tmp_path / 'bin' / name).chmod(0o755)
    return str(tmp_path / 'bin')


# --- no usable GPU: one line, nothing done ---

@pytest.mark.parametrize('command', [[sys.executable, 'tools/gpu_check.py'], ['bash', 'tools/gpu_check.sh']])
def test_without_a_gpu_it_stops_at_once_with_one_line(tmp_path, command):
    out = tmp_path / 'out'
    done = run([*command, str(out)], clean_env(CUDA_VISIBLE_DEVICES=''))
    assert done.returncode == 2, done.stderr
    assert done.stdout == ''
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith('gpu_check: no usable GPU') and 'GPU_CHECK_REHEARSE=1' in lines[0]
    assert not out.exists()


def test_a_gpu_torch_cannot_use_is_named_in_the_one_line(tmp_path):
    path = stub_bin(tmp_path, 'nvidia-smi', NVIDIA_SMI)
    done = run([sys.executable, 'tools/gpu_check.py', str(tmp_path / 'out')],
               clean_env(CUDA_VISIBLE_DEVICES='', PATH=f'{path}{os.pathsep}{os.environ["PATH"]}'))
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('gpu_check: no usable GPU: ')
    assert 'NVIDIA H100 80GB HBM3' in lines[0]


# --- PRIMKD_TORCHRUN=1: torchrun and a process group for a single process ---

def test_primkd_torchrun_makes_the_launcher_start_torchrun_for_one_process(tmp_path):
    path = stub_bin(tmp_path, 'python', FAKE_PYTHON)
    log = tmp_path / 'calls'
    for gpus in ('0', '1'):
        env = clean_env(PATH=f'{path}{os.pathsep}{os.environ["PATH"]}', FAKE_LOG=str(log), FAKE_GPUS=gpus)
        done = run(['bash', 'train.sh', 'config/nyu_b2.py'], {**env, 'PRIMKD_TORCHRUN': '1'})
        assert done.returncode == 0, done.stderr
        calls = log.read_text().splitlines()
        log.unlink()
        assert calls[1] == '-m torch.distributed.run --standalone --nproc_per_node=1 train.py --config config/nyu_b2.py'
        done = run(['bash', 'train.sh', 'config/nyu_b2.py'], env)   # without it: the script itself
        assert log.read_text().splitlines()[1] == 'train.py --config config/nyu_b2.py'
        log.unlink()


def test_a_single_torchrun_process_joins_a_process_group_only_when_asked(monkeypatch):
    from helpers import free_port
    monkeypatch.setenv('WORLD_SIZE', '1')
    monkeypatch.setenv('RANK', '0')
    monkeypatch.setenv('LOCAL_RANK', '0')
    monkeypatch.setenv('MASTER_ADDR', '127.0.0.1')
    monkeypatch.setenv('MASTER_PORT', str(free_port()))
    monkeypatch.delenv('PRIMKD_TORCHRUN', raising=False)
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'test')
    info = du.init_distributed('cpu')
    assert not info.distributed and not dist.is_initialized()
    monkeypatch.setenv('PRIMKD_TORCHRUN', '1')
    monkeypatch.delenv('TORCHELASTIC_RUN_ID')   # not started by torchrun: no group
    assert not du.init_distributed('cpu').distributed and not dist.is_initialized()
    monkeypatch.setenv('TORCHELASTIC_RUN_ID', 'test')
    try:
        info = du.init_distributed('cpu')
        assert info.distributed and info.world_size == 1 and dist.get_backend() == 'gloo'
        assert du.describe_group(torch.nn.BatchNorm2d(2)).startswith('process group: gloo backend, 1 process(es), DDP')
        assert du.all_reduce_sum(torch.ones(2)).tolist() == [1.0, 1.0]
    finally:
        du.cleanup()


# --- the pieces that read a stage's results ---

def test_gpu_short_names():
    assert gc.gpu_short_name('NVIDIA H100 80GB HBM3') == 'h100'
    assert gc.gpu_short_name('NVIDIA H200') == 'h200'
    assert gc.gpu_short_name('NVIDIA A100-SXM4-80GB') == 'a100'
    assert gc.gpu_short_name('NVIDIA GeForce RTX 4090') == 'rtx4090'
    assert gc.gpu_short_name(None) == 'cpu'


def test_compile_fallbacks_are_counted_from_torch_log_lines():
    text = '\n'.join([
        'V1120 10:00:00.1 1 torch/_dynamo/symbolic_convert.py:5321] [0/0] [__graph_breaks] Graph break in user code at /x.py:3',
        'V1120 10:00:00.2 1 torch/_dynamo/symbolic_convert.py:5376] [0/0] [__graph_breaks] Graph break (user stack '
        'suppressed due to duplicate graph break) in user code at /x.py:3',
        'V1120 10:00:01.0 1 torch/_dynamo/guards.py:5614] [0/1] [__recompiles] Recompiling function forward in /m.py:10',
        'W1120 10:00:02.0 1 torch/_dynamo/convert_frame.py:2008] torch._dynamo hit config.recompile_limit (8)',
        "W1120 10:00:03.0 1 torch/_dynamo/convert_frame.py:2429] WON'T CONVERT forward /m.py line 10",
        'epoch 1/3 loss=1.0',
    ])
    assert gc.compile_fallbacks(text) == {'graph_breaks': 2, 'recompiles': 1, 'recompile_limit': 1,
                                          'not_converted': 1}
    assert gc.compile_fallbacks('') == {'graph_breaks': 0, 'recompiles': 0, 'recompile_limit': 0,
                                        'not_converted': 0}


def test_step_figures_from_wall_times():
    # 2 epochs of 3 steps; the first step of each epoch follows start-up or the epoch's end.
    steps = {0: (100.0, 2.0), 1: (101.0, 1.9), 2: (101.5, 1.8), 3: (110.0, 1.5), 4: (110.2, 1.4), 5: (110.6, 1.3)}
    figures = gc.step_figures(steps, steps_per_epoch=3, started=90.0)
    assert figures['first_step_s'] == pytest.approx(10.0)
    assert figures['steady_step_ms'] == pytest.approx(300.0)     # epoch 2: 0.2 s and 0.4 s
    assert figures['max_step_ms'] == pytest.approx(1000.0)       # epoch 1's second step
    assert figures['loss_first'] == pytest.approx(1.9) and figures['loss_last'] == pytest.approx(1.4)
    assert figures['loss_fell']


# --- the whole check, rehearsed on the CPU ---

@pytest.mark.slow
@pytest.mark.integration
def test_the_rehearsal_runs_every_stage_and_writes_the_summary(tmp_path):
    out = tmp_path / 'out'
    done = run(['bash', 'tools/gpu_check.sh', str(out), '--work', str(tmp_path / 'work')],
               clean_env(GPU_CHECK_REHEARSE='1', CUDA_VISIBLE_DEVICES=''), timeout=1200)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    summary = json.loads((out / 'summary.json').read_text())
    assert summary['rehearsal'] and summary['failed'] == []
    assert [s['name'] for s in summary['stages']] == list(gc.STAGE_NAMES)
    assert all(s['status'] == 'passed' for s in summary['stages'])
    table = (out / 'summary.txt').read_text()
    assert table in done.stdout
    for name in gc.STAGE_NAMES:
        assert f'\n{name} ' in table
    for name in ('device.json', 'nvidia-smi.txt', 'cpu_nyu_b2.json', 'cpu_nyu_b4.json', 'val.json', 'logs'):
        assert (out / name).exists(), name
    bench = json.loads((out / 'cpu_nyu_b2.json').read_text())
    assert [v['variant'] for v in bench['variants']] == ['fp32', 'bf16']
    train = summary['stages'][gc.STAGE_NAMES.index('train')]['figures']
    assert train['loss_fell'] and train['process_group'] == 'gloo'
    assert 'miou' in summary['stages'][gc.STAGE_NAMES.index('val')]['figures']
    assert (tmp_path / 'work' / 'log' / 'student' / 'last.pth').exists()   # a given --work is kept
