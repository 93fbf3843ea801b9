"""Process runtime: one process or ``torchrun`` through the same code path.

``Runtime.from_env()`` reads ``RANK`` / ``WORLD_SIZE`` / ``LOCAL_RANK`` (set by ``torchrun``); with a
world size above 1 it joins the process group (gloo on CPU, NCCL on CUDA), otherwise it is a plain
single process and every collective below is a no-op. The training loop only talks to this object, so it
never branches on "distributed or not" itself.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import os
import random
import sys
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from ..ops.matmul import emulated_bf16_note

__all__ = [
    "Runtime",
    "select_device",
    "seed_everything",
    "autocast",
    "move_to_device",
    "setup_logging",
    "runtime_scope",
]

log = logging.getLogger("videomap.train")


def select_device(spec: str = "auto", local_rank: int = 0) -> torch.device:
    """``auto`` = ``cuda:<local_rank>`` when CUDA is available, else CPU; otherwise ``torch.device(spec)``."""
    if spec == "auto":
        return torch.device(f"cuda:{local_rank}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cuda":
        spec = f"cuda:{local_rank}"
    device = torch.device(spec)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"train.device={spec} but CUDA is not available; use train.device=cpu or auto")
    return device


def seed_everything(seed: int) -> None:
    """Seed Python's ``random``, NumPy's global RNG and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def autocast(device: torch.device, precision: str):
    """Autocast context: bf16 on CPU or GPU for ``precision='bf16'``, a no-op for ``'fp32'``.

    bf16 has fp32's exponent range, so no loss scaler is needed (unlike fp16).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision != "bf16":
        raise ValueError(f"train.precision must be 'fp32' or 'bf16', got {precision!r}")
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise RuntimeError("train.precision=bf16 but this GPU has no bf16 support; use train.precision=fp32")
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def move_to_device(obj: Any, device: torch.device) -> Any:
    """Move every tensor in a (nested) tuple/list/dict batch to ``device``; other leaves are kept."""
    if isinstance(obj, torch.Tensor):
        return obj.to(device, non_blocking=device.type == "cuda")
    if isinstance(obj, dict):
        return {k: move_to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, tuple) and hasattr(obj, "_fields"):  # namedtuple
        return type(obj)(*(move_to_device(v, device) for v in obj))
    if isinstance(obj, (list, tuple)):
        return type(obj)(move_to_device(v, device) for v in obj)
    return obj


class _RankFilter(logging.Filter):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def filter(self, record: logging.LogRecord) -> bool:
        # Non-zero ranks only speak up for problems, so N processes do not print N copies of each line.
        return self.rank == 0 or record.levelno >= logging.WARNING


def setup_logging(rank: int = 0, level: int = logging.INFO) -> None:
    """Send ``videomap`` log records to stderr: INFO and up on rank 0, WARNING and up elsewhere.

    Idempotent; does nothing when the application already configured logging (a handler on the
    ``videomap`` logger or on the root logger), so lines are never printed twice.
    """
    root = logging.getLogger("videomap")
    if root.handlers or logging.getLogger().handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    prefix = f"[rank {rank}] " if rank else ""
    handler.setFormatter(logging.Formatter(f"%(asctime)s {prefix}%(message)s", "%H:%M:%S"))
    handler.addFilter(_RankFilter(rank))
    root.addHandler(handler)
    root.setLevel(level)


@dataclass
class Runtime:
    """Where this process runs: rank, world size, device, precision, and the collectives it needs."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    precision: str = "fp32"
    _owns_group: bool = False

    # ----------------------------------------------------------------------------------------- creation

    @classmethod
    def from_env(cls, device: str = "auto", precision: str = "fp32", backend: str | None = None,
                 configure_logging: bool = True) -> "Runtime":
        """Read the ``torchrun`` environment, pick the device, join the process group when W > 1."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", str(rank)))
        dev = select_device(device, local_rank)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        owns = False
        if world_size > 1 and not dist.is_initialized():
            backend = backend or ("nccl" if dev.type == "cuda" else "gloo")
            dist.init_process_group(backend=backend, init_method="env://", rank=rank, world_size=world_size)
            owns = True
        if dist.is_initialized():
            rank, world_size = dist.get_rank(), dist.get_world_size()
        if configure_logging:
            setup_logging(rank)
        autocast(dev, precision)  # validate precision against the device now, not at the first step
        if dev.type == "cpu" and precision == "bf16" and rank == 0:
            note = emulated_bf16_note()
            if note:
                log.warning("train.precision=bf16: %s", note)
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, device=dev,
                   precision=precision, _owns_group=owns)

    # ------------------------------------------------------------------------------------------- facts

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    # ------------------------------------------------------------------------------------------ helpers

    def seed(self, seed: int) -> None:
        """Seed every RNG with ``seed + rank``: ranks draw different dropout/masks, runs stay repeatable.

        Model initialisation is still identical across ranks in effect, because DDP broadcasts rank 0's
        weights when it wraps the model.
        """
        seed_everything(seed + self.rank)

    def autocast(self):
        """bf16 autocast for ``precision='bf16'``, else a no-op context."""
        return autocast(self.device, self.precision)

    def loss_share(self, count: int) -> torch.Tensor:
        """Factor that turns this process's mean loss over ``count`` samples into its share of the mean over
        every process's samples: ``world_size * count / total`` (0 when no process has any).

        DDP averages gradients with equal weight per process, whatever each one held. A process whose
        samples all failed to load would then pull the step's gradient towards zero (with 2 processes, half
        of it). Scaled by this factor, the average DDP takes is exactly the gradient of the mean loss over
        the ``total`` samples that did load, on any process, as one process holding them all would compute.
        With every process holding the same count the factor is exactly 1.

        Collective (one small all-reduce): every process must call it for every micro-batch, including one
        with nothing to contribute. A 0-dim float tensor on ``self.device``, so no host sync is needed.
        """
        local = torch.tensor(float(count), device=self.device)
        total = self.all_reduce(local.clone())
        return local * self.world_size / total.clamp_min(1.0)

    def to_device(self, batch: Any) -> Any:
        return move_to_device(batch, self.device)

    def wrap(self, model: nn.Module, find_unused_parameters: bool = False) -> nn.Module:
        """Move ``model`` to the device and wrap it in DDP when distributed (identity otherwise)."""
        model = model.to(self.device)
        if not self.distributed:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(
            model, device_ids=device_ids, find_unused_parameters=find_unused_parameters
        )

    # -------------------------------------------------------------------------------------- collectives

    def barrier(self) -> None:
        if self.distributed:
            if self.device.type == "cuda":
                dist.barrier(device_ids=[self.device.index])
            else:
                dist.barrier()

    def all_reduce(self, tensor: torch.Tensor, op: str = "sum") -> torch.Tensor:
        """In-place all-reduce (``sum``, ``mean`` or ``max``); returns ``tensor``."""
        if not self.distributed:
            return tensor
        if op == "mean":
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
            tensor /= self.world_size
        else:
            dist.all_reduce(tensor, op={"sum": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX}[op])
        return tensor

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, indexed by rank (``[obj]`` in one process)."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def broadcast_object(self, obj: Any, src: int = 0) -> Any:
        """Rank ``src``'s ``obj`` on every rank."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=src)
        return box[0]

    def close(self) -> None:
        """Leave the process group if this runtime created it.

        Objects that still use the group (a ``DistributedDataParallel`` wrapper, kept alive by a reference
        cycle such as an exception's traceback through the training loop) are collected first: destroyed
        after the group, at interpreter exit, they abort the process (``terminate called without an active
        exception``) instead of letting it exit with its own status.
        """
        if self._owns_group and dist.is_initialized():
            gc.collect()
            dist.destroy_process_group()
            self._owns_group = False

    def __enter__(self) -> "Runtime":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def main_first(self) -> Iterator[None]:
        """Rank 0 runs the block first (e.g. to create a folder or build a cache), then the others."""
        if not self.is_main:
            self.barrier()
        yield
        if self.is_main:
            self.barrier()


@contextlib.contextmanager
def runtime_scope(cfg: Any, runtime: Runtime | None = None) -> Iterator[Runtime]:
    """The set-up and tear-down every run (pretrain, finetune, eval, extract) shares.

    Yields ``runtime``, or a new one from the ``torchrun`` environment with ``cfg.train.device`` and
    ``cfg.train.precision``, which it then closes (leaving the process group it joined) however the block
    ends. A caller's own runtime is left open: a fine-tuning run evaluates its test set on its runtime.
    """
    own = runtime is None
    runtime = runtime or Runtime.from_env(cfg.train.device, cfg.train.precision)
    setup_logging(runtime.rank)
    try:
        yield runtime
    finally:
        if own:
            runtime.close()
