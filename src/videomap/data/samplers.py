"""Repeated-augmentation sampler (DeiT-style), aware of data-parallel ranks.

Each epoch draws a permutation, repeats every index ``num_repeats`` times in a row, and deals the
list out to the ranks round-robin, so the copies of a video land on different ranks (or, with one
process, in the same batch) and are augmented differently. An epoch keeps the length it would have
without repetition: each rank yields ``ceil(len(dataset) / num_replicas)`` items, i.e. about
``1 / num_repeats`` of the videos per epoch, each seen ``num_repeats`` times.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch
from torch.utils.data import Sampler

from .seeding import make_generator, mix_seed

__all__ = ["RepeatedAugSampler", "distributed_rank_and_size"]


def distributed_rank_and_size() -> tuple[int, int]:
    """``(rank, world_size)`` of the initialised process group, else ``(0, 1)``."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class RepeatedAugSampler(Sampler):
    """Repeated augmentation over ``dataset`` (anything with ``len``, or an int length).

    Args:
        num_repeats: copies of each drawn index (3 in DeiT, 2 in video recipes).
        shuffle: draw a new permutation each epoch (from ``seed`` and the epoch), else keep order.
        num_replicas, rank: default to the initialised process group, else one process.
        with_seeds: yield ``(index, seed)`` pairs instead of indices. Every pair gets its own seed, a
            function of (``seed``, epoch, position), which :class:`videomap.data.VideoClassificationDataset`
            uses to draw that item's augmentation — reproducible whatever the number of workers.

    Call :meth:`set_epoch` before each epoch.
    """

    def __init__(self, dataset, num_repeats: int = 2, shuffle: bool = True, seed: int = 0,
                 num_replicas: int | None = None, rank: int | None = None, with_seeds: bool = False):
        if num_repeats < 1:
            raise ValueError("num_repeats must be >= 1")
        if num_replicas is None or rank is None:
            r, w = distributed_rank_and_size()
            num_replicas = w if num_replicas is None else num_replicas
            rank = r if rank is None else rank
        if not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is outside [0, {num_replicas})")
        self.length = dataset if isinstance(dataset, int) else len(dataset)
        self.num_repeats, self.shuffle, self.seed = int(num_repeats), bool(shuffle), int(seed)
        self.num_replicas, self.rank, self.with_seeds = int(num_replicas), int(rank), bool(with_seeds)
        self.epoch = 0
        self.num_samples = math.ceil(self.length / self.num_replicas)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self) -> Iterator:
        if self.length == 0:
            return iter(())
        if self.shuffle:
            order = torch.randperm(self.length, generator=make_generator(self.seed, self.epoch))
        else:
            order = torch.arange(self.length)
        repeated = order.repeat_interleave(self.num_repeats)
        total = math.ceil(len(repeated) / self.num_replicas) * self.num_replicas
        if total > len(repeated):  # pad by wrapping so every rank gets the same count
            reps = math.ceil(total / len(repeated))
            repeated = repeated.repeat(reps)[:total]
        positions = torch.arange(self.rank, total, self.num_replicas)[: self.num_samples]
        indices = repeated[positions].tolist()
        if not self.with_seeds:
            return iter(indices)
        return iter([(i, mix_seed(self.seed, self.epoch, int(p))) for i, p in zip(indices, positions.tolist())])
