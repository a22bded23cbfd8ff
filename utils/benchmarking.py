"""What every benchmark tool of the project shares: timing, peak memory, and the device, versions and
date that make a figure reproducible."""
import ctypes
import importlib.metadata
import datetime
import gc
import os
import platform
import statistics
import sys
import time

import timm
import torch

from utils.io import write_json


def synchronize(device: torch.device) -> None:
    """Waits for the device's queued work (a no-op on the CPU), so a clock reading means something."""
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed_runs(function, runs: int, warmup: int, device: torch.device = torch.device('cpu')) -> list:
    """Seconds of each of `runs` calls of `function`, after `warmup` untimed ones, the device
    synchronised around each call."""
    seconds = []
    for i in range(warmup + runs):
        synchronize(device)
        start = time.perf_counter()
        function()
        synchronize(device)
        if i >= warmup:
            seconds.append(time.perf_counter() - start)
    return seconds


def summary_ms(seconds: list) -> dict:
    """Median, min and max of timed runs, in milliseconds."""
    return {'ms_median': statistics.median(seconds) * 1e3, 'ms_min': min(seconds) * 1e3,
            'ms_max': max(seconds) * 1e3}


class PeakMemory:
    """Peak memory a block of work adds: CUDA's allocator peak, or on Linux the rise of the peak
    resident set size (VmHWM, reset through /proc/self/clear_refs), over the start of the block.
    restart_peak() forgets the peak so far (warm-up), not what is still held. `megabytes` is None
    where neither is available."""

    def __init__(self, device: torch.device):
        self.device = device
        self.kind = 'cuda max_memory_allocated' if device.type == 'cuda' else 'cpu peak RSS increase'
        self.megabytes = None

    @staticmethod
    def _status_kib(field):
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith(field + ':'):
                    return int(line.split()[1])
        raise OSError(f'{field} not in /proc/self/status')

    def restart_peak(self) -> bool:
        """Sets the peak to what is held now; False where the peak cannot be read."""
        gc.collect()
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            return True
        try:
            # Freed heap goes back to the system, so earlier work does not lend this block memory.
            ctypes.CDLL('libc.so.6').malloc_trim(0)
            with open('/proc/self/clear_refs', 'w') as f:
                f.write('5')  # resets VmHWM to the current RSS
            return True
        except OSError:
            return False

    def __enter__(self):
        if not self.restart_peak():
            self.start = None
        elif self.device.type == 'cuda':
            self.start = torch.cuda.memory_allocated(self.device)
        else:
            self.start = self._status_kib('VmRSS')
        return self

    def __exit__(self, *exc):
        if self.device.type == 'cuda':
            torch.cuda.synchronize(self.device)
            self.megabytes = (torch.cuda.max_memory_allocated(self.device) - self.start) / 2 ** 20
        elif self.start is not None:
            self.megabytes = (self._status_kib('VmHWM') - self.start) / 1024
        return False


def cpu_info() -> dict:
    """The processor: model name, family/model, cores, and whether it has native bfloat16."""
    fields = {}
    if os.path.isfile('/proc/cpuinfo'):
        with open('/proc/cpuinfo') as f:
            for line in f:
                key, _, value = line.partition(':')
                fields.setdefault(key.strip(), value.strip())
    flags = set(fields.get('flags', '').split())
    return {'name': fields.get('model name') or platform.processor() or 'unknown CPU',
            'family_model': f"{fields.get('cpu family', '?')}/{fields.get('model', '?')}",
            'cores': os.cpu_count(), 'native_bf16': bool(flags & {'avx512_bf16', 'amx_bf16'})}


def device_info(device: torch.device) -> dict:
    """The device a benchmark ran on, with the settings that change its figures."""
    info = {'type': device.type, 'threads': torch.get_num_threads()}
    if device.type == 'cuda':
        major, minor = torch.cuda.get_device_capability(device)
        info.update(name=torch.cuda.get_device_name(device), capability=f'{major}.{minor}',
                    memory_gb=round(torch.cuda.get_device_properties(device).total_memory / 2 ** 30, 1),
                    float32_matmul_precision=torch.get_float32_matmul_precision(),
                    cudnn_allow_tf32=torch.backends.cudnn.allow_tf32)
    else:
        info.update(cpu_info(), cpu_capability=torch.backends.cpu.get_cpu_capability())
    return info


def provenance(tool: str, argv=None) -> dict:
    """Which command made a figure, and when: the head of every benchmark JSON file."""
    arguments = sys.argv[1:] if argv is None else list(argv)
    return {'tool': tool, 'date': datetime.datetime.now().isoformat(timespec='seconds'),
            'command': ' '.join(['python', tool, *arguments]), 'python': platform.python_version()}


def library_versions(device: torch.device, *packages: str) -> dict:
    """The versions a figure depends on: torch, timm and CUDA (cuDNN on a GPU), then `packages`."""
    versions = {'torch': torch.__version__, 'timm': timm.__version__, 'cuda': torch.version.cuda}
    if device.type == 'cuda':
        versions['cudnn'] = torch.backends.cudnn.version()
    return {**versions, **{name: importlib.metadata.version(name) for name in packages}}


def save_report(path, report: dict) -> None:
    """Writes a benchmark's figures to `path`, when one is given, and says so."""
    if path:
        write_json(path, report)
        print(f'\nwrote {path}')
