"""Resumable data order: which samples each process sees, as a pure function of (seed, epoch, position).

The training loop asks a *batch factory* ``batches(epoch, start)`` for an iterable over this process's
micro-batches of ``epoch``, skipping the first ``start`` of them. :class:`ResumableBatches` is that factory
for any map-style dataset:

* the order of an epoch is ``randperm(len(dataset))`` from a generator seeded with ``(seed, epoch)``;
* global batch ``b`` is ``order[b * B:(b + 1) * B]``; with ``W`` processes, rank ``r`` takes the ``r``-th
  contiguous slice of ``B / W`` samples, so W processes together see exactly one process's batch;
* each sample gets a seed drawn from ``(seed, epoch, index)``. A dataset that draws its randomness from
  explicit generators takes it in its key (``dataset[(index, seed)]``, ``seed_keys=True``); any other
  dataset is loaded with the torch/NumPy/Python global RNGs seeded from it and restored afterwards. Either
  way random augmentation does not depend on the number of workers, on the rank, or on whether the epoch
  was resumed, and data loading never perturbs the training RNG stream.

Resuming therefore only needs ``(epoch, start)``; skipped batches are never loaded.
"""

from __future__ import annotations

import contextlib
import random
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset, default_collate

from .workers import WorkerLoader

__all__ = ["epoch_permutation", "sample_seed", "isolated_rng", "collate_skip_none", "ResumableBatches"]


def epoch_permutation(num_samples: int, seed: int, epoch: int, shuffle: bool = True) -> list[int]:
    """The sample order of ``epoch``: a permutation drawn from ``(seed, epoch)`` only."""
    if not shuffle:
        return list(range(num_samples))
    g = torch.Generator().manual_seed(sample_seed(seed, epoch, -1))
    return torch.randperm(num_samples, generator=g).tolist()


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for loading sample ``index`` in ``epoch``."""
    # SeedSequence takes non-negative entries only; -1 (the epoch order's own seed) is mapped to 0 and
    # sample i to i + 1 so the two never collide.
    return int(np.random.SeedSequence([seed % 2**64, epoch, index + 1]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def isolated_rng(seed: int) -> Iterator[None]:
    """Seed torch (CPU), NumPy and Python RNGs with ``seed`` inside the block; restore them afterwards."""
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    # Only the CPU generator: torch.manual_seed would also reseed (and initialise) every CUDA device.
    torch.default_generator.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)
    try:
        yield
    finally:
        torch.set_rng_state(torch_state)
        np.random.set_state(np_state)
        random.setstate(py_state)


def collate_skip_none(samples: Sequence[Any]) -> Any:
    """``default_collate`` over the samples that loaded (a dataset returns ``None`` for an unreadable video).

    A failed sample is dropped, never replaced by another one, whose label would then be wrong.
    """
    kept = [s for s in samples if s is not None]
    if not kept:
        raise RuntimeError(f"none of the {len(samples)} samples of a batch could be loaded")
    return default_collate(kept)


class _SeededItems(Dataset):
    """Map-style view whose keys are ``(index, seed)``.

    Loads ``dataset[(index, seed)]`` when ``seed_keys``, else ``dataset[index]`` under :func:`isolated_rng`.
    """

    def __init__(self, dataset: Dataset, seed_keys: bool = False):
        self.dataset = dataset
        self.seed_keys = seed_keys

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, key: tuple[int, int | None]) -> Any:
        index, seed = key
        if seed is None:
            return self.dataset[index]
        if self.seed_keys:
            return self.dataset[(index, seed)]
        with isolated_rng(seed):
            return self.dataset[index]


class ResumableBatches:
    """Batch factory ``(epoch, start) -> iterable`` over a map-style dataset; see the module docstring.

    Args:
        dataset: map-style dataset (``__len__`` + ``__getitem__``).
        batch_size: **global** batch (summed over ranks); must be divisible by ``world_size``.
        seed: run seed; order and augmentation are functions of it.
        rank, world_size: this process's shard (take them from :class:`~videomap.train.runtime.Runtime`).
        shuffle: shuffle every epoch (evaluation uses ``False``).
        seed_samples: give every sample its own seed (off: the dataset's own randomness, not resumable).
        seed_keys: pass that seed in the key, ``dataset[(index, seed)]`` (for datasets that build their
            generators from it, like ``videomap.data.VideoClassificationDataset``); otherwise the sample is
            loaded under :func:`isolated_rng`.
        collate_fn: defaults to :func:`collate_skip_none`.
        num_workers, pin_memory, prefetch_factor: passed to ``DataLoader``.

    ``len(factory)`` is the number of micro-batches per epoch (the last partial global batch is dropped so
    every rank always gets the same number of equally sized batches, which DDP needs).
    """

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed_samples: bool = True,
        seed_keys: bool = False,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        num_workers: int = 0,
        pin_memory: bool = False,
        prefetch_factor: int | None = None,
    ):
        if batch_size % world_size:
            raise ValueError(
                f"train.batch_size={batch_size} is the global batch and must be divisible by the number of "
                f"processes ({world_size})"
            )
        self.dataset = dataset
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.seed_samples = seed_samples
        self.seed_keys = seed_keys
        self.collate_fn = collate_fn or collate_skip_none
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.prefetch_factor = prefetch_factor

    @classmethod
    def for_run(cls, dataset: Dataset, cfg: Any, runtime: Any,
                collate_fn: Callable[[list[Any]], Any] | None = None) -> "ResumableBatches":
        """A training run's batches: ``train.batch_size`` (global) and ``train.seed``, this runtime's shard,
        every sample's seed in its key, ``data.num_workers`` loader processes. Pretraining and fine-tuning
        both read their clips this way."""
        return cls(dataset, cfg.train.batch_size, seed=cfg.train.seed, rank=runtime.rank,
                   world_size=runtime.world_size, seed_keys=True, collate_fn=collate_fn,
                   num_workers=cfg.data.num_workers)

    def __len__(self) -> int:
        return len(self.dataset) // self.batch_size  # type: ignore[arg-type]

    def batch_indices(self, epoch: int) -> list[list[int]]:
        """This rank's sample indices for every micro-batch of ``epoch``."""
        order = epoch_permutation(len(self.dataset), self.seed, epoch, self.shuffle)  # type: ignore[arg-type]
        per_rank = self.batch_size // self.world_size
        out = []
        for b in range(len(self)):
            lo = b * self.batch_size + self.rank * per_rank
            out.append(order[lo: lo + per_rank])
        return out

    def __call__(self, epoch: int, start: int = 0) -> Iterable[Any]:
        keys = [
            [(i, sample_seed(self.seed, epoch, i) if self.seed_samples else None) for i in batch]
            for batch in self.batch_indices(epoch)[start:]
        ]
        kwargs = {}
        if self.num_workers > 0 and self.prefetch_factor is not None:
            kwargs["prefetch_factor"] = self.prefetch_factor
        return WorkerLoader(
            _SeededItems(self.dataset, self.seed_keys),
            batch_sampler=keys,
            collate_fn=self.collate_fn,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            # An explicit generator: creating the iterator must not draw from the global RNG, or a resumed
            # run (which creates it at another moment) would drift from an uninterrupted one.
            generator=torch.Generator().manual_seed(self.seed),
            **kwargs,
        )
