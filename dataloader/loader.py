"""The training loader: a rank-aware sampler whose order and augmentation seeds are a function of
(cfg.seed, epoch) alone, and a DataLoader around it.

Each epoch, a generator seeded by (cfg.seed, epoch) draws one permutation of the whole epoch and one
augmentation seed per position; rank r takes positions r, r + W, r + 2W, ... (W = world size). The
ranks' shares are therefore a partition of the epoch, and an item's augmentation depends on neither
the number of worker processes nor which of them loads it.
"""
import random

import numpy as np
import torch

from config import ConfigError
from .dataset import RGBXDataset


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, sample_seed) pairs: this rank's share of the epoch's permutation."""

    def __init__(self, dataset_length, seed, rank=0, world_size=1):
        if dataset_length % world_size:
            raise ValueError(f'an epoch of {dataset_length} items cannot be split evenly over '
                             f'{world_size} processes')
        self.dataset_length = dataset_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.dataset_length // self.world_size

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(self.dataset_length)
        sample_seeds = rng.integers(0, 2 ** 63 - 1, size=self.dataset_length, dtype=np.int64)
        for position in range(self.rank, self.dataset_length, self.world_size):
            yield int(order[position]), int(sample_seeds[position])


def seed_worker(worker_id):
    """Seeds Python's and NumPy's global generators in a worker. The transforms use only the
    per-item generator; this guards code that reaches for the global ones."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


class TrainLoader:
    """Batches of dicts ('rgb', 'extra', 'label' stacked, 'name' a list); `len()` batches an epoch."""

    def __init__(self, sampler, loader):
        self.sampler = sampler
        self.loader = loader

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def per_process_batch_size(cfg, world_size):
    if cfg.batch_size % world_size:
        raise ConfigError(f"config key 'batch_size' is the global batch: {cfg.batch_size} cannot be "
                          f"split evenly over {world_size} processes")
    return cfg.batch_size // world_size


def build_train_loader(cfg, dist_info, dataset=None):
    """The training loader of this process. `dist_info` has rank, world_size and device
    (engine.distributed.DistInfo); `dataset` defaults to RGBXDataset(cfg, 'train')."""
    batch_size = per_process_batch_size(cfg, dist_info.world_size)
    if dataset is None:
        dataset = RGBXDataset(cfg, 'train')
    sampler = EpochSampler(len(dataset), cfg.seed, dist_info.rank, dist_info.world_size)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, sampler=sampler, drop_last=True,
        num_workers=cfg.num_workers, pin_memory=torch.device(dist_info.device).type == 'cuda',
        persistent_workers=cfg.num_workers > 0, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed + dist_info.rank))
    return TrainLoader(sampler, loader)
