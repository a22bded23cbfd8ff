"""engine.amp: which precision each `amp` setting gives on which device."""
import pytest
import torch

from config import ConfigError
from engine.amp import resolve_amp

CPU, GPU = torch.device('cpu'), torch.device('cuda', 0)


@pytest.fixture
def gpu_capability(monkeypatch):
    """Pretends GPU 0 has a given compute capability; no CUDA call reaches the driver."""
    def set_capability(major, minor):
        monkeypatch.setattr(torch.cuda, 'get_device_capability', lambda device=None: (major, minor))
        monkeypatch.setattr(torch.cuda, 'get_device_name', lambda device=None: f'GPU sm_{major}{minor}')
    return set_capability


@pytest.mark.parametrize('capability, amp, expected', [
    ((9, 0), 'auto', 'bf16'),  # H100
    ((8, 0), 'auto', 'bf16'),  # A100
    ((7, 0), 'auto', 'none'),  # V100: bf16 only emulated
    ((7, 0), 'fp16', 'fp16'),
    ((9, 0), 'none', 'none'),
])
def test_gpu_settings(gpu_capability, capability, amp, expected):
    gpu_capability(*capability)
    assert resolve_amp(amp, GPU) == expected


@pytest.mark.parametrize('amp, expected', [('auto', 'none'), ('bf16', 'bf16'), ('none', 'none')])
def test_cpu_settings(amp, expected):
    assert resolve_amp(amp, CPU) == expected


@pytest.mark.parametrize('device, capability, amp, needle', [
    (CPU, None, 'fp16', 'needs a GPU'),
    (GPU, (7, 5), 'bf16', 'sm_75 (compute capability 7.5) only emulates bf16'),
    (CPU, None, 'float16', "expected one of"),
])
def test_settings_a_device_cannot_run_name_the_key(gpu_capability, device, capability, amp, needle):
    if capability:
        gpu_capability(*capability)
    with pytest.raises(ConfigError, match="config key 'amp'") as error:
        resolve_amp(amp, device)
    assert needle in str(error.value)
