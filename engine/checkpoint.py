"""Run checkpoints: atomic writes, RNG state capture, and finding the newest good one to resume."""
import glob
import os
import random
import shutil

import numpy as np
import torch

from models.checkpoints import CheckpointError, read_checkpoint_file
from utils.io import atomic_write

from . import distributed as du

CHECKPOINT_FORMAT = 'primkd'


def atomic_save(obj, path: str) -> None:
    """torch.save, atomically (see atomic_write)."""
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_copy(source: str, path: str) -> None:
    """A copy of a file written atomically: the other names of a checkpoint saved once."""
    with open(source, 'rb') as src:
        atomic_write(path, lambda f: shutil.copyfileobj(src, f, 16 << 20))


def rng_state(device: torch.device) -> dict:
    """This process's RNG states as tensors and plain numbers, so that the checkpoint loads with
    weights_only=True. The CUDA generator only for a run on a GPU: asking for it on a CPU run
    would start a CUDA context on a GPU host."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {'python': (version, torch.tensor(internal, dtype=torch.int64), gauss),
             'numpy': (name, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, cached),
             'torch': torch.get_rng_state()}
    if device.type == 'cuda':
        state['cuda'] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    """Restores a state of rng_state(); one from a CPU run cannot restore a CUDA run's generator
    (see resumable_rng_state)."""
    version, internal, gauss = state['python']
    random.setstate((version, tuple(internal.tolist()), gauss))
    name, keys, pos, has_gauss, cached = state['numpy']
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state['torch'])
    if device.type == 'cuda':
        torch.cuda.set_rng_state(state['cuda'], device)


def all_rng_states(device: torch.device) -> list:
    """Every process's RNG state, in rank order (collective: all processes must call it)."""
    mine = rng_state(device)
    if not du.is_dist():
        return [mine]
    states = [None] * du.get_world_size()
    torch.distributed.all_gather_object(states, mine)
    return states


def resumable_rng_state(states: list, rank: int, world_size: int, device: torch.device):
    """The saved state that continues this process's randomness exactly, or None: the checkpoint
    must come from as many processes, and a CUDA run needs a saved CUDA generator (drop-path and
    the feature masks draw from it)."""
    if len(states) != world_size:
        return None
    if device.type == 'cuda' and 'cuda' not in states[rank]:
        return None
    return states[rank]


def read_checkpoint(path: str) -> dict:
    """Loads a training checkpoint of this project; raises CheckpointError (a ValueError) naming the
    file if it cannot be read or is not one."""
    # Memory-mapped: --resume auto opens every checkpoint of a run to find the newest.
    ckpt = read_checkpoint_file(path, mmap=True)
    if ckpt.get('format') != CHECKPOINT_FORMAT or 'optimizer' not in ckpt:
        raise CheckpointError(f"'{path}' is not a training checkpoint of this project (model weights "
                              f"alone, e.g. official ones, cannot resume a run; use --teacher or val.py)")
    return ckpt


def find_resume_checkpoint(run_dir: str, log=print):
    """The newest readable checkpoint of a run directory (by epoch, then iteration), or None.

    Unreadable files (e.g. a copy torn by a crash outside this project's atomic writer) are reported
    and skipped, so a run resumes from the last good state."""
    best = None
    for path in sorted(glob.glob(os.path.join(run_dir, '*.pth'))):
        try:
            ckpt = read_checkpoint(path)
        except ValueError as e:
            log(f'skipping {e}')
            continue
        key = (ckpt['epoch'], ckpt['iteration'])
        if best is None or key > best[0]:
            best = (key, path)
    return None if best is None else best[1]
