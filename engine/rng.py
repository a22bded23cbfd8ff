"""The random-number generators of a training process: captured into checkpoints, restored on resume."""
import random

import numpy as np
import torch

from . import distributed as du


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's generators (the CUDA ones included)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


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
