"""Training checkpoints, written atomically and read back safely (model folders: ``videomap.models.save_pretrained``).

A training checkpoint (``OUTPUT/checkpoints/last.pt``) is a dict of plain tensors and Python scalars,
strings, lists and dicts: model and optimizer state, the step, the position in the data order and every
RNG state (torch, CUDA, NumPy, Python, and any ``torch.Generator``) stored as tensors. That is exactly what
``torch.load(..., weights_only=True)`` accepts, so loading never runs pickled code; this module always
loads that way.

Writes go to a temporary file in the same folder, are fsync'ed, and then ``os.replace``'d over the target:
a crash or a kill during a save leaves the previous checkpoint intact, never a half-written one.
"""

from __future__ import annotations

import logging
import os
import pickle
import random
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

from ..models.weights import atomic_write
from .optim import unwrap_model

__all__ = [
    "CheckpointError",
    "CHECKPOINT_FORMAT",
    "checkpoint_path",
    "atomic_write",
    "check_plain",
    "save_checkpoint",
    "load_checkpoint",
    "resolve_resume",
    "find_generators",
    "capture_rng_state",
    "restore_rng_state",
]

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

#: Written into every training checkpoint so later versions can recognise (and migrate) old files.
CHECKPOINT_FORMAT = "videomap.train.checkpoint/1"


class CheckpointError(RuntimeError):
    """A checkpoint that is missing, unreadable, or not a videomap training checkpoint."""


def checkpoint_path(output_dir: PathLike) -> Path:
    """``OUTPUT/checkpoints/last.pt``: the one file ``train.resume=auto`` looks for."""
    return Path(output_dir) / "checkpoints" / "last.pt"


# ----------------------------------------------------------------------------------------- atomic writes


# ------------------------------------------------------------------------------------ plain-data checks

_PLAIN_SCALARS = (bool, int, float, str, type(None))


def check_plain(obj: Any, where: str = "checkpoint") -> None:
    """Raise ``TypeError`` naming the first value ``weights_only`` loading would refuse.

    Caught at save time, a stray NumPy scalar or custom object is a clear error in the run that wrote it,
    not an unreadable file discovered when resuming.
    """
    if isinstance(obj, torch.Tensor) or isinstance(obj, _PLAIN_SCALARS):
        return
    if isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            check_plain(v, f"{where}[{i}]")
        return
    if isinstance(obj, dict):
        for k, v in obj.items():
            if not isinstance(k, (str, int)):
                raise TypeError(f"{where}: key {k!r} of type {type(k).__name__} is not a str or int")
            check_plain(v, f"{where}[{k!r}]")
        return
    raise TypeError(
        f"{where} is a {type(obj).__module__}.{type(obj).__name__}; checkpoints hold only tensors and plain "
        "Python values (convert it, e.g. float(x) or torch.as_tensor(x))"
    )


def save_checkpoint(state: Mapping[str, Any], path: PathLike) -> Path:
    """Atomically ``torch.save`` a plain-data ``state`` dict (see :func:`check_plain`) to ``path``."""
    state = dict(state)
    state.setdefault("format", CHECKPOINT_FORMAT)
    check_plain(state)
    return atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path: PathLike, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; unreadable files raise :class:`CheckpointError`.

    The error names the file and what to do, because the usual cause (a file damaged by a full disk or an
    interrupted copy) is fixed by the user, not by retrying.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.stat().st_size == 0:
        raise CheckpointError(
            f"checkpoint {path} is empty (0 bytes), so it is truncated or corrupt. Delete it and run again to "
            "start over, or set train.resume=PATH to another checkpoint (train.resume=none ignores checkpoints)."
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError,
            KeyError, IndexError, TypeError, AttributeError) as e:
        reason = _short_reason(e)
        if "unsupported global" in str(e).lower():
            raise CheckpointError(
                f"checkpoint {path} holds Python objects other than tensors and plain values ({reason}), so it "
                "is not loaded: only weights_only=True loading is allowed. It was not written by "
                "videomap.train; to start from saved weights use model.checkpoint=DIR instead."
            ) from e
        raise CheckpointError(
            f"checkpoint {path} is truncated or corrupt and cannot be loaded ({reason}). Delete or move it and "
            "run again to start over, or set train.resume=PATH to another checkpoint "
            "(train.resume=none ignores checkpoints)."
        ) from e
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(state).__name__}, not a dict of training state")
    return state


def _short_reason(e: BaseException) -> str:
    # torch's weights_only errors are pages long; keep the line that says what went wrong.
    text = str(e)
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1]
        text = text.split("Check the documentation", 1)[0].split(". Please use", 1)[0]
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0] if lines else 'no details'}"


def resolve_resume(output_dir: PathLike, resume: str) -> Path | None:
    """The checkpoint to resume from for ``train.resume``: ``auto``, ``none`` or a path.

    ``auto`` means ``OUTPUT/checkpoints/last.pt`` when it exists (a fresh run otherwise); an explicit path
    that does not exist is an error rather than a silent fresh start.
    """
    if resume in (None, "", "none", "None", "false", "False"):
        return None
    if resume == "auto":
        p = checkpoint_path(output_dir)
        return p if p.exists() else None
    p = Path(resume)
    if p.is_dir():
        p = checkpoint_path(p) if checkpoint_path(p).exists() else p / "last.pt"
    if not p.is_file():
        raise CheckpointError(f"train.resume={resume}: no checkpoint at {p}")
    return p


# ------------------------------------------------------------------------------------------- RNG states


def find_generators(module: nn.Module) -> dict[str, torch.Generator]:
    """Every ``torch.Generator`` stored as an attribute of ``module`` or a submodule, by dotted name.

    Objectives keep their own generators (e.g. for masks); finding them here means their state is
    checkpointed without the loop knowing the objective.
    """
    found: dict[str, torch.Generator] = {}
    for prefix, m in unwrap_model(module).named_modules():
        for attr, value in vars(m).items():
            if isinstance(value, torch.Generator):
                found[f"{prefix}.{attr}" if prefix else attr] = value
    return found


def capture_rng_state(generators: Mapping[str, torch.Generator] | None = None) -> dict[str, Any]:
    """Every RNG state of this process as tensors and plain values (``weights_only``-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, py_state, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": {"version": int(version), "state": torch.tensor(py_state, dtype=torch.int64),
                   "gauss_next": None if gauss_next is None else float(gauss_next)},
        "generators": {name: g.get_state() for name, g in (generators or {}).items()},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = list(torch.cuda.get_rng_state_all())
    return state


def restore_rng_state(state: Mapping[str, Any], generators: Mapping[str, torch.Generator] | None = None) -> None:
    """Inverse of :func:`capture_rng_state`."""
    torch.set_rng_state(state["torch"].cpu())
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(int(x) for x in p["state"].tolist()), p["gauss_next"]))
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available():
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all([s.cpu() for s in cuda])
        else:
            log.warning("checkpoint has CUDA RNG states for %d devices, this machine has %d: not restored",
                        len(cuda), torch.cuda.device_count())
    saved = state.get("generators", {})
    for name, g in (generators or {}).items():
        if name in saved:
            g.set_state(saved[name].cpu())
        else:
            log.warning("checkpoint has no state for generator %r; it continues from its current state", name)
