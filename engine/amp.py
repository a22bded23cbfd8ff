"""Mixed precision: the one place that turns an `amp` setting into an autocast dtype."""
from contextlib import nullcontext
from typing import Optional

import torch

from config import ConfigError
from utils.constants import AMP_FULL_PRECISION

AMP_DTYPES = {AMP_FULL_PRECISION: None, 'bf16': torch.bfloat16, 'fp16': torch.float16}


def native_bf16(device: torch.device) -> bool:
    """bfloat16 in hardware: Ampere (compute capability 8.0) or newer. Older GPUs only emulate it,
    slower than float32, which torch.cuda.is_bf16_supported() would still report as supported."""
    return device.type == 'cuda' and torch.cuda.get_device_capability(device)[0] >= 8


def unsupported_amp(amp: str, device: torch.device) -> Optional[str]:
    """Why `device` cannot run the autocast setting `amp` ('bf16' | 'fp16' | 'none'), or None."""
    if amp == 'fp16' and device.type != 'cuda':
        return 'fp16 (with a gradient scaler) needs a GPU; use bf16 or full precision'
    if amp == 'bf16' and device.type == 'cuda' and not native_bf16(device):
        major, minor = torch.cuda.get_device_capability(device)
        return (f'{torch.cuda.get_device_name(device)} (compute capability {major}.{minor}) only '
                f'emulates bf16, slower than float32; use fp16 or full precision')
    return None


def resolve_amp(amp: str, device: torch.device) -> str:
    """'auto' -> 'bf16' on GPUs with native bfloat16, else 'none'; a setting the device cannot run is
    a ConfigError naming the key."""
    if amp == 'auto':
        return 'bf16' if native_bf16(device) else 'none'
    if amp not in AMP_DTYPES:
        raise ConfigError(f"config key 'amp': expected one of {sorted(AMP_DTYPES) + ['auto']}, got {amp!r}")
    reason = unsupported_amp(amp, device)
    if reason is not None:
        raise ConfigError(f"config key 'amp': {reason}")
    return amp


def autocast(device: torch.device, dtype):
    """Mixed precision for `dtype` (torch.bfloat16 / torch.float16), or nothing for None."""
    return torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()
