"""Process-group set-up for torchrun, and the few collective helpers the scripts need.

One process (no torchrun) is a world of size 1: every helper here works there too, so the training
and evaluation code has a single path. Under torchrun the backend is NCCL when CUDA is available and
gloo otherwise (multi-process runs on CPU).

PRIMKD_TORCHRUN=1 (the launcher then starts torchrun even for one process) makes a single torchrun
process join a process group too, so that NCCL, DDP and the SyncBatchNorm conversion run on one GPU
as on several (tools/gpu_check.py). SyncBatchNorm itself computes plain BatchNorm in a world of one.
"""
import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .devices import DeviceError, gpu_count


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    grouped: bool = False   # a process group of one (PRIMKD_TORCHRUN=1 under torchrun)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1 or self.grouped

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device: str = 'auto', timeout_minutes: float = 30.0) -> DistInfo:
    """Joins the torchrun process group if there is one. `device`: 'auto' (the GPUs if there are any),
    'cpu' or 'cuda'. Raises DeviceError (a ValueError) when the GPUs cannot be used (engine/devices.py)
    or this process has none of its own. A collective operation that waits `timeout_minutes` for
    another process raises (gloo) or ends the process (NCCL's watchdog) instead of waiting forever."""
    world_size = int(os.environ.get('WORLD_SIZE', 1))
    rank = int(os.environ.get('RANK', 0))
    local_rank = int(os.environ.get('LOCAL_RANK', 0))
    gpus = gpu_count(device)
    use_cuda = gpus > 0
    if use_cuda and local_rank >= gpus:
        raise DeviceError(f"LOCAL_RANK={local_rank}, but torch sees {gpus} GPU(s) (CUDA_VISIBLE_DEVICES="
                          f"{os.environ.get('CUDA_VISIBLE_DEVICES')!r}): start at most {gpus} processes per node")
    if use_cuda:
        torch.cuda.set_device(local_rank)
        dev = torch.device('cuda', local_rank)
    else:
        dev = torch.device('cpu')
    grouped = world_size == 1 and single_process_group()
    if (world_size > 1 or grouped) and not dist.is_initialized():
        dist.init_process_group(backend='nccl' if use_cuda else 'gloo',
                                timeout=datetime.timedelta(minutes=timeout_minutes),
                                **({'device_id': dev} if use_cuda else {}))
    return DistInfo(rank=rank, world_size=world_size, local_rank=local_rank, device=dev, grouped=grouped)


def single_process_group() -> bool:
    """Whether one process should join a process group anyway: PRIMKD_TORCHRUN=1 and started by
    torchrun (which sets TORCHELASTIC_RUN_ID and the rendezvous address)."""
    return os.environ.get('PRIMKD_TORCHRUN') == '1' and 'TORCHELASTIC_RUN_ID' in os.environ


def describe_group(model: torch.nn.Module) -> str:
    """One line for the log of a run in a process group: backend, processes, SyncBatchNorm."""
    return (f'process group: {dist.get_backend()} backend, {get_world_size()} process(es), DDP'
            + (', SyncBatchNorm' if uses_sync_batchnorm(model) else ', BatchNorm (no SyncBatchNorm off CUDA)'))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized()


def get_rank() -> int:
    return dist.get_rank() if is_dist() else 0


def get_world_size() -> int:
    return dist.get_world_size() if is_dist() else 1


def is_main_process() -> bool:
    return get_rank() == 0


def barrier():
    if is_dist():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes, in place, returned for convenience (identity in one process)."""
    if is_dist():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_mean(tensor: torch.Tensor) -> torch.Tensor:
    return all_reduce_sum(tensor) / get_world_size()


def agree(ok: bool, device: torch.device):
    """(whether `ok` holds on every process, whether it holds on the main one), with one all-reduce:
    a problem only one process meets (the main process's lock or disk) stops all of them together
    instead of leaving the others waiting for it."""
    if not is_dist():
        return ok, ok
    failed = torch.tensor([0.0 if ok else 1.0, 0.0 if ok or get_rank() != 0 else 1.0], device=device)
    dist.all_reduce(failed, op=dist.ReduceOp.MAX)
    return failed[0].item() == 0.0, failed[1].item() == 0.0


# What the backends' errors say when a collective operation gave up on another process: gloo raises
# plain RuntimeErrors ("Timed out waiting 3000ms for recv", "Connection closed by peer").
_LOST_PEER_TEXT = ('gloo', 'timed out', 'timeout', 'connection closed', 'connection reset')


def lost_peer(error: BaseException) -> bool:
    """Whether `error` is a collective operation that gave up waiting for another process."""
    if not is_dist() or not isinstance(error, RuntimeError):
        return False
    return isinstance(error, dist.DistError) or any(t in str(error).lower() for t in _LOST_PEER_TEXT)


def average_batchnorm_buffers(model: torch.nn.Module) -> None:
    """Makes every process hold the mean BatchNorm running statistics.

    Plain BatchNorm (CPU runs have no SyncBatchNorm) updates its running mean and variance from each
    process's own batches, so they drift apart. Averaging before validation and saving gives every
    rank the same model, close to what SyncBatchNorm would have computed. SyncBatchNorm layers are
    equal on every rank already and are left alone."""
    if not is_dist():
        return
    for module in model.modules():
        if (isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and module.track_running_stats
                and not isinstance(module, torch.nn.SyncBatchNorm)):
            for buffer in (module.running_mean, module.running_var):
                dist.all_reduce(buffer, op=dist.ReduceOp.SUM)
                buffer /= get_world_size()


def uses_sync_batchnorm(model: torch.nn.Module) -> bool:
    return any(isinstance(module, torch.nn.SyncBatchNorm) for module in model.modules())


def cleanup():
    if is_dist():
        dist.destroy_process_group()
