"""Seeding helpers: derive independent generators from integers, and seed DataLoader workers.

The data pipeline draws every random number from an explicit ``torch.Generator``; these helpers make
those generators from a base seed plus whatever identifies the draw (epoch, index, worker), so that
runs are reproducible and workers never share a random stream.
"""

from __future__ import annotations

import random
import secrets

import numpy as np
import torch

__all__ = ["mix_seed", "make_generator", "seed_worker", "entropy_seed"]


def mix_seed(*values: int) -> int:
    """A well-mixed 63-bit seed from any number of non-negative integers (order matters).

    Plain sums collide (seed 1 + epoch 0 == seed 0 + epoch 1); a SeedSequence hash does not.
    """
    state = np.random.SeedSequence([int(v) % (1 << 64) for v in values]).generate_state(2, np.uint32)
    return int((int(state[0]) << 31) ^ int(state[1])) & ((1 << 63) - 1)


def make_generator(*values: int) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded with ``mix_seed(*values)``."""
    return torch.Generator().manual_seed(mix_seed(*values))


def entropy_seed() -> int:
    """A fresh seed from the OS, for callers that pass no generator (does not touch global RNG state)."""
    return secrets.randbits(63)


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for ``torch.utils.data.DataLoader``.

    PyTorch already gives each worker its own torch seed (distinct per worker and per epoch, derived
    from the loader's ``generator``); this extends it to Python's ``random`` and NumPy's legacy global
    RNG, so third-party code that uses them does not repeat the same numbers in every worker.
    :class:`videomap.data.VideoClassificationDataset` needs no help: it derives its own generators.
    """
    seed = torch.initial_seed()
    random.seed(seed)
    np.random.seed(seed % (1 << 32))
