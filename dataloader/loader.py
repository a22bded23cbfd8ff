"""The training loader: a rank-aware sampler whose order and augmentation seeds are a function of
(cfg.seed, epoch) alone, and a DataLoader around it.

Each epoch, a generator seeded by (cfg.seed, epoch) draws one permutation of the whole epoch and one
augmentation seed per position. With gradient accumulation over A micro-batches per optimizer step,
W processes act as W * A "virtual" ones: virtual process v takes positions v, v + WA, v + 2WA, ...,
and process r runs, for each step, the next micro-batch of virtual processes r, r + W, ..., r + (A-1)W.
So one process accumulating 2 micro-batches sees exactly the images, grouped exactly as, two
processes would (the same batches reach BatchNorm, and the same gradient is averaged). The shares are
a partition of the epoch, and an item's augmentation depends on neither the number of worker
processes nor which of them loads it.
"""
import random

import numpy as np
import torch

from config import ConfigError
from .dataset import RGBXDataset


class EpochSampler(torch.utils.data.Sampler):
    """Yields (index, sample_seed) pairs: this rank's share of the epoch's permutation, in the order
    of its micro-batches (see the module docstring)."""

    def __init__(self, dataset_length, seed, rank=0, world_size=1, micro_batch=1, accumulation=1):
        if dataset_length % (world_size * micro_batch * accumulation):
            raise ValueError(f'an epoch of {dataset_length} items cannot be split evenly into steps of '
                             f'{world_size} processes x {accumulation} micro-batches of {micro_batch}')
        self.dataset_length = dataset_length
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.micro_batch = micro_batch
        self.accumulation = accumulation
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    def __len__(self):
        return self.dataset_length // self.world_size

    def __iter__(self):
        rng = np.random.default_rng((self.seed, self.epoch))
        order = rng.permutation(self.dataset_length)
        sample_seeds = rng.integers(0, 2 ** 63 - 1, size=self.dataset_length, dtype=np.int64)
        virtual = self.world_size * self.accumulation
        steps = self.dataset_length // (virtual * self.micro_batch)
        for step in range(steps):
            for micro in range(self.accumulation):
                shard = self.rank + self.world_size * micro
                for k in range(step * self.micro_batch, (step + 1) * self.micro_batch):
                    position = shard + k * virtual
                    yield int(order[position]), int(sample_seeds[position])


def seed_worker(worker_id):
    """Seeds Python's and NumPy's global generators in a worker. The transforms use only the
    per-item generator; this guards code that reaches for the global ones."""
    seed = torch.initial_seed() % 2 ** 32
    random.seed(seed)
    np.random.seed(seed)


class TrainLoader:
    """Micro-batches of dicts ('rgb', 'extra', 'label' stacked, 'name' a list), `accumulation` of
    them per optimizer step; `len()` micro-batches an epoch."""

    def __init__(self, sampler, loader, accumulation=1):
        self.sampler = sampler
        self.loader = loader
        self.accumulation = accumulation

    def set_epoch(self, epoch):
        self.sampler.set_epoch(epoch)

    def __iter__(self):
        return iter(self.loader)

    def __len__(self):
        return len(self.loader)


def _divisors(n):
    return [d for d in range(1, n + 1) if n % d == 0]


def micro_batching(cfg, world_size):
    """(images per micro-batch of one process, micro-batches accumulated per optimizer step). The
    global batch is cfg.batch_size; cfg.micro_batch_size (None: all of a process's share at once)
    lets fewer or smaller GPUs train the same recipe. ConfigError naming what would work."""
    share, remainder = divmod(cfg.batch_size, world_size)
    if remainder or share == 0:
        counts = ', '.join(map(str, _divisors(cfg.batch_size)))
        raise ConfigError(f"config key 'batch_size' is the global batch: {cfg.batch_size} cannot be split evenly "
                          f"over {world_size} processes; use {counts} of them (CUDA_VISIBLE_DEVICES), or "
                          f"--opts batch_size=N with N a multiple of {world_size}")
    micro = cfg.micro_batch_size or share
    if share % micro:
        raise ConfigError(f"config key 'micro_batch_size' {micro} does not divide the {share} images each of "
                          f"{world_size} process(es) takes per step (batch_size {cfg.batch_size}); use one of "
                          f"{', '.join(map(str, _divisors(share)))}")
    return micro, share // micro


def build_train_loader(cfg, dist_info, dataset=None):
    """The training loader of this process: micro-batches, `accumulation` of them per optimizer step
    (micro_batching); len() counts micro-batches. `dist_info` has rank, world_size and device
    (engine.distributed.DistInfo); `dataset` defaults to RGBXDataset(cfg, 'train')."""
    micro, accumulation = micro_batching(cfg, dist_info.world_size)
    if dataset is None:
        dataset = RGBXDataset(cfg, 'train')
    sampler = EpochSampler(len(dataset), cfg.seed, dist_info.rank, dist_info.world_size, micro, accumulation)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=micro, sampler=sampler, drop_last=True,
        num_workers=cfg.num_workers, pin_memory=torch.device(dist_info.device).type == 'cuda',
        persistent_workers=cfg.num_workers > 0, worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(cfg.seed + dist_info.rank))
    return TrainLoader(sampler, loader, accumulation)
