"""Launching on the right devices: the GPU check (engine/devices.py) shared by the launcher and every
process, and the launcher's processes and rendezvous (primkd_launch in tools/setup_env.sh).

This machine has no GPU, so a GPU machine is played by a stub `nvidia-smi` first on PATH, by torch
functions replaced in-process, or by a stub `python` that reports a GPU count and records how the
launcher called it."""
import os
import subprocess
import sys

import pytest
import torch
from helpers import DEMO_CONFIG

from config import REPO_ROOT
from engine import devices
from engine.devices import DeviceError, gpu_count, runs_on
from engine.distributed import init_distributed

OLD_DRIVER = '535.104.05'
NVIDIA_SMI = f'''#!/usr/bin/env bash
[ "$*" = "--query-gpu=driver_version,name --format=csv,noheader" ] || exit 9
echo "${{STUB_DRIVER:-{OLD_DRIVER}}}, NVIDIA A100-SXM4-80GB"
echo "${{STUB_DRIVER:-{OLD_DRIVER}}}, NVIDIA A100-SXM4-80GB"
'''
ARCHS = ['sm_75', 'sm_80', 'sm_86', 'sm_90', 'sm_100', 'sm_120']  # torch 2.14.1's CUDA 13 build


def no_set_device(index):
    pytest.fail('a GPU was chosen before the check')


@pytest.fixture
def stub_nvidia_smi(tmp_path, monkeypatch):
    """A GPU machine as nvidia-smi sees it (two A100s, driver 535), in this process and in the ones it starts."""
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'nvidia-smi').write_text(NVIDIA_SMI)
    (tmp_path / 'bin' / 'nvidia-smi').chmod(0o755)
    path = os.pathsep.join([str(tmp_path / 'bin'), os.path.dirname(sys.executable), os.environ['PATH']])
    monkeypatch.setenv('PATH', path)
    return path


@pytest.fixture
def torch_sees(monkeypatch):
    """Makes torch report `count` GPUs of compute capability `capability` and a CUDA 13 build."""
    def see(count, capability=(9, 0), name='NVIDIA H200'):
        monkeypatch.setattr(torch.version, 'cuda', '13.0')
        monkeypatch.setattr(torch.cuda, 'is_available', lambda: count > 0)
        monkeypatch.setattr(torch.cuda, 'device_count', lambda: count)
        monkeypatch.setattr(torch.cuda, 'get_arch_list', lambda: ARCHS)
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda index=None: capability)
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda index=None: name)
    return see


def test_an_old_driver_stops_auto_instead_of_falling_back_to_the_cpu(stub_nvidia_smi, torch_sees, monkeypatch):
    torch_sees(0)
    monkeypatch.setattr(torch.cuda, 'set_device', no_set_device)
    for device in ('auto', 'cuda'):
        with pytest.raises(DeviceError) as error:
            init_distributed(device)
        message = str(error.value)
        assert message.startswith(f'--device {device}: nvidia-smi lists 2 NVIDIA GPU(s) (NVIDIA A100-SXM4-80GB; '
                                  f'driver {OLD_DRIVER})')
        assert 'built for CUDA 13.0, which needs NVIDIA driver 580 or newer' in message
        assert message.endswith('or pass --device cpu to run on the CPU') and '\n' not in message
    assert init_distributed('cpu').device == torch.device('cpu')  # the CPU on purpose still works


def test_a_new_driver_that_torch_cannot_use_names_cuda_visible_devices(stub_nvidia_smi, torch_sees, monkeypatch):
    torch_sees(0)
    monkeypatch.setenv('STUB_DRIVER', '590.12')
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '')
    with pytest.raises(DeviceError, match=r"can use none of them with CUDA_VISIBLE_DEVICES='': check the driver"):
        gpu_count('auto')


def test_a_cpu_only_torch_on_a_gpu_machine_is_refused(stub_nvidia_smi, torch_sees, monkeypatch):
    torch_sees(0)
    monkeypatch.setattr(torch.version, 'cuda', None)
    with pytest.raises(DeviceError, match='is built without CUDA: install a CUDA build of torch'):
        gpu_count('auto')


def test_a_gpu_without_kernels_in_this_torch_is_refused(torch_sees):
    torch_sees(2, capability=(7, 0), name='Tesla V100-SXM2-32GB')
    with pytest.raises(DeviceError) as error:
        gpu_count('auto')
    assert str(error.value).startswith('--device auto: GPU 0 (Tesla V100-SXM2-32GB) has compute capability 7.0, '
                                       'and torch')
    assert 'kernels only for sm_75 sm_80 sm_86 sm_90 sm_100 sm_120' in str(error.value)
    torch_sees(2, capability=(8, 9))  # an L40S runs the sm_86 code
    assert gpu_count('auto') == 2


@pytest.mark.parametrize('arch, capability, runs', [
    ('sm_80', (8, 6), True), ('sm_86', (8, 0), False), ('sm_80', (9, 0), False), ('sm_90', (9, 0), True),
    ('compute_90', (12, 0), True), ('compute_90', (8, 9), False), ('sm_90a', (9, 0), True),
    ('sm_90a', (9, 1), False), ('sm_100f', (10, 3), True), ('sm_100f', (12, 0), False), ('sm_120', (12, 1), True),
])
def test_which_code_runs_on_which_gpu(arch, capability, runs):
    assert runs_on(arch, *capability) is runs


def test_no_nvidia_gpus_means_the_cpu_for_auto_and_an_error_for_cuda(torch_sees, monkeypatch):
    torch_sees(0)
    monkeypatch.setattr(devices, 'nvidia_smi_gpus', lambda: [])
    assert gpu_count('auto') == 0 and init_distributed('auto').device == torch.device('cpu')
    with pytest.raises(DeviceError, match='--device cuda: CUDA is not available on this machine'):
        gpu_count('cuda')


def test_a_local_rank_without_a_gpu_of_its_own_is_refused(torch_sees, monkeypatch):
    torch_sees(2)
    monkeypatch.setenv('LOCAL_RANK', '2')
    monkeypatch.setenv('CUDA_VISIBLE_DEVICES', '0,1')
    monkeypatch.setattr(torch.cuda, 'set_device', no_set_device)
    with pytest.raises(DeviceError, match=r"^LOCAL_RANK=2, but torch sees 2 GPU\(s\) \(CUDA_VISIBLE_DEVICES='0,1'\): "
                                          r"start at most 2 processes per node$"):
        init_distributed('cuda')


def run(command, env):
    return subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120,
                          env={**env, 'PRIMKD_NO_VENV': '1', 'OMP_NUM_THREADS': '1'})


@pytest.mark.integration
@pytest.mark.parametrize('command', [['bash', 'train.sh', DEMO_CONFIG, '--mode', 'teacher'],
                                     ['bash', 'train.sh', DEMO_CONFIG],   # the demo
                                     [sys.executable, 'train.py', '--config', DEMO_CONFIG]])
def test_launches_on_an_old_driver_stop_before_any_work(stub_nvidia_smi, tmp_path, command):
    log_dir, data = tmp_path / 'log', tmp_path / 'data'
    # CUDA_VISIBLE_DEVICES='' makes torch see no GPU on any machine; the old driver is reported first.
    env = dict(os.environ, CUDA_VISIBLE_DEVICES='')
    done = run([*command, '--opts', f'log_dir={str(log_dir)!r}', f'dataset_path={str(data)!r}'], env)
    assert done.returncode == 2, done.stderr[-2000:]
    # The launcher's error is its only line; train.py's argparse prints its usage first.
    lines = done.stderr.strip().splitlines()
    assert lines[-1].startswith('error: ' if command[0] == 'bash' else 'train.py: error: ')
    assert len(lines) == 1 or command[0] != 'bash'
    assert 'needs NVIDIA driver 580 or newer' in lines[-1] and OLD_DRIVER in lines[-1]
    assert 'Traceback' not in done.stderr
    assert not log_dir.exists() and not data.exists()


FAKE_PYTHON = '''#!/usr/bin/env bash
echo "$@" >> "$FAKE_LOG"
if [ "$1 $2" = "-m engine.devices" ]; then
    echo "${FAKE_GPUS:-0}"
fi
'''


@pytest.fixture
def fake_python(tmp_path):
    """Runs the real train.sh with a `python` that reports FAKE_GPUS GPUs and logs every call."""
    (tmp_path / 'bin').mkdir()
    (tmp_path / 'bin' / 'python').write_text(FAKE_PYTHON)
    (tmp_path / 'bin' / 'python').chmod(0o755)
    clean = {k: v for k, v in os.environ.items()
             if k not in ('NNODES', 'NODE_RANK', 'MASTER_ADDR', 'MASTER_PORT', 'CUDA_VISIBLE_DEVICES')}
    base = dict(clean, PATH=f'{tmp_path / "bin"}{os.pathsep}{os.environ["PATH"]}', FAKE_LOG=str(tmp_path / 'calls'))

    def launch(*args, **env):
        done = run(['bash', 'train.sh', 'config/nyu_b4.py', *args], {**base, **env})
        log = tmp_path / 'calls'
        calls = log.read_text().splitlines() if log.exists() else []
        log.unlink(missing_ok=True)
        return done, calls
    return launch


@pytest.mark.integration
def test_one_gpu_or_none_runs_the_script_itself(fake_python):
    for gpus in ('0', '1'):
        done, calls = fake_python('--mode', 'teacher', FAKE_GPUS=gpus)
        assert done.returncode == 0, done.stderr
        assert calls == ['-m engine.devices --config config/nyu_b4.py --mode teacher',
                         'train.py --config config/nyu_b4.py --mode teacher']


@pytest.mark.integration
def test_one_node_takes_a_free_port_unless_one_is_given(fake_python):
    done, calls = fake_python(FAKE_GPUS='2')
    assert done.returncode == 0, done.stderr
    # --standalone: torchrun picks a free port, so two runs on one host do not collide.
    assert calls[1] == '-m torch.distributed.run --standalone --nproc_per_node=2 train.py --config config/nyu_b4.py'
    for args, env in ((['--port=29516'], {}), (['--port', '29516'], {}), ([], {'MASTER_PORT': '29516'})):
        done, calls = fake_python(*args, FAKE_GPUS='2', **env)
        assert calls[1].startswith('-m torch.distributed.run --nnodes=1 --node_rank=0 --master_addr=127.0.0.1 '
                                   '--master_port=29516 --nproc_per_node=2 train.py'), calls


@pytest.mark.integration
def test_several_nodes_need_master_addr(fake_python):
    done, calls = fake_python(FAKE_GPUS='2', NNODES='2', NODE_RANK='1')
    assert done.returncode == 2 and calls == []
    assert done.stderr == ('error: NNODES=2 needs MASTER_ADDR, the address of the node with NODE_RANK=0, '
                           'on every node\n')
    done, calls = fake_python(FAKE_GPUS='2', NNODES='2', NODE_RANK='1', MASTER_ADDR='node0.cluster')
    assert calls[1].startswith('-m torch.distributed.run --nnodes=2 --node_rank=1 --master_addr=node0.cluster '
                               '--master_port=29500 --nproc_per_node=2 train.py')
    done, calls = fake_python(NNODES='two')
    assert done.returncode == 2 and calls == []
    assert done.stderr == 'error: NNODES=two: expected the number of nodes, a positive integer\n'
