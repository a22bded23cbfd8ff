"""Which GPUs a run uses, decided once, before any work, by the launcher and by every process.

A GPU machine must not train on the CPU by accident. nvidia-smi lists the GPUs the NVIDIA driver
sees; torch uses those its build can run on. When nvidia-smi lists GPUs and torch can use none of
them (the driver is older than torch's CUDA needs, torch is a CPU-only build, CUDA_VISIBLE_DEVICES
hides them) or torch has no kernels for one (its compute capability is missing from
torch.cuda.get_arch_list()), `--device auto` and `--device cuda` stop with the reason. `--device cpu`
runs on the CPU on purpose.

    python -m engine.devices [--device auto|cpu|cuda] [the script's other arguments, ignored]

prints the number of GPUs the run uses (0: the CPU), or one error line (exit status 2); the launcher
in tools/setup_env.sh starts one process per GPU.
"""
import argparse
import os
import re
import subprocess
import warnings

import torch

# The oldest Linux driver each CUDA major version runs on (NVIDIA's CUDA release notes; within a major
# version through minor-version compatibility).
MIN_DRIVER = {11: 450, 12: 525, 13: 580}
USE_CPU = 'or pass --device cpu to run on the CPU'


class DeviceError(ValueError):
    """The requested device cannot be used; the message says why and what to do."""


def nvidia_smi_gpus():
    """[(driver version, GPU name)] as nvidia-smi lists them: empty without nvidia-smi, or when it fails
    (no working NVIDIA driver, so torch can see no GPU either)."""
    try:
        listing = subprocess.run(['nvidia-smi', '--query-gpu=driver_version,name', '--format=csv,noheader'],
                                 capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return []
    if listing.returncode != 0:
        return []
    return [tuple(part.strip() for part in line.split(',', 1)) for line in listing.stdout.splitlines() if ',' in line]


def runs_on(arch, major, minor):
    """Whether code built for `arch` (an entry of torch.cuda.get_arch_list()) runs on a GPU of compute
    capability major.minor: an sm_XY binary on the same major version with minor >= Y, compute_XY (PTX)
    on any capability >= X.Y, an 'a' suffix on X.Y alone, an 'f' suffix within the family (major X)."""
    match = re.fullmatch(r'(sm|compute)_(\d+)(\d)([af]?)', arch)
    if not match:
        return False
    kind, code_major, code_minor, suffix = match[1], int(match[2]), int(match[3]), match[4]
    if suffix == 'a':
        return (major, minor) == (code_major, code_minor)
    if kind == 'compute' and not suffix:
        return (major, minor) >= (code_major, code_minor)
    return major == code_major and minor >= code_minor


def _none_usable(listed, torch_said):
    """Why torch can use none of the GPUs nvidia-smi lists, and what to do."""
    driver = listed[0][0]
    names = ', '.join(dict.fromkeys(name for _, name in listed))
    found = f'nvidia-smi lists {len(listed)} NVIDIA GPU(s) ({names}; driver {driver})'
    build = f'torch {torch.__version__}'
    if torch.version.cuda is None:
        return f'{found}, but {build} is built without CUDA: install a CUDA build of torch, {USE_CPU}'
    need = MIN_DRIVER.get(int(torch.version.cuda.split('.')[0]))
    driver_major = driver.split('.')[0]
    if need and driver_major.isdigit() and int(driver_major) < need:
        return (f'{found}, but {build} is built for CUDA {torch.version.cuda}, which needs NVIDIA driver {need} or '
                f'newer: update the driver, or install a torch build for the CUDA version nvidia-smi shows into '
                f'your own environment (used as it is when activated), {USE_CPU}')
    hidden = os.environ.get('CUDA_VISIBLE_DEVICES')
    why = ''.join(f' ({" ".join(str(w.message).split())})' for w in torch_said)
    return (f'{found}, but {build} (CUDA {torch.version.cuda}) can use none of them'
            f'{"" if hidden is None else f" with CUDA_VISIBLE_DEVICES={hidden!r}"}{why}: check the driver '
            f'and CUDA_VISIBLE_DEVICES, {USE_CPU}')


def _check_kernels(device, count):
    """Raises DeviceError for the first of `count` GPUs that the torch build has no code for."""
    arch_list = torch.cuda.get_arch_list()
    if not (torch.version.cuda and arch_list):  # ROCm builds have no sm_XY list to compare with
        return
    for index in range(count):
        major, minor = torch.cuda.get_device_capability(index)
        if not any(runs_on(arch, major, minor) for arch in arch_list):
            raise DeviceError(
                f'--device {device}: GPU {index} ({torch.cuda.get_device_name(index)}) has compute capability '
                f'{major}.{minor}, and torch {torch.__version__} (CUDA {torch.version.cuda}) has kernels only for '
                f'{" ".join(arch_list)}: install a torch build whose torch.cuda.get_arch_list() covers '
                f'sm_{major}{minor} into your own environment, hide the GPU with CUDA_VISIBLE_DEVICES, {USE_CPU}')


def gpu_count(device='auto'):
    """The number of GPUs a run on `device` ('auto', 'cpu' or 'cuda') uses: 0 for the CPU, else all
    that torch sees (CUDA_VISIBLE_DEVICES chooses them). Raises DeviceError when NVIDIA GPUs are
    present that torch cannot use, or when 'cuda' is asked for on a machine without any."""
    if device == 'cpu':
        return 0
    # torch explains a failed CUDA start-up in a warning: it goes into the error message instead.
    with warnings.catch_warnings(record=True) as torch_said:
        warnings.simplefilter('always')
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if count == 0:
        listed = nvidia_smi_gpus()
        if listed:
            raise DeviceError(f'--device {device}: {_none_usable(listed, torch_said)}')
        if device == 'cuda':
            raise DeviceError('--device cuda: CUDA is not available on this machine (use --device cpu or auto)')
        return 0
    _check_kernels(device, count)
    return count


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0], allow_abbrev=False)
    parser.add_argument('--device', choices=('auto', 'cpu', 'cuda'), default='auto')
    args, _ = parser.parse_known_args(argv)
    try:
        print(gpu_count(args.device))
    except DeviceError as e:
        parser.exit(2, f'error: {e}\n')


if __name__ == '__main__':
    main()
