"""Classification metrics and metric sinks (``metrics.jsonl`` always, TensorBoard when installed)."""

from __future__ import annotations

import json
import logging
import math
import numbers
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

__all__ = [
    "topk_accuracy",
    "confusion_matrix",
    "per_class_accuracy",
    "mean_class_accuracy",
    "JsonlLogger",
    "TensorBoardLogger",
    "to_float",
]

log = logging.getLogger(__name__)


def _hard_targets(target: torch.Tensor) -> torch.Tensor:
    # Soft (mixup / label-smoothed) targets (B, C) count as their arg-max class.
    return target.argmax(dim=-1) if target.ndim == 2 else target


def topk_accuracy(logits: torch.Tensor, target: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose target is among the ``k`` largest scores, for each ``k``.

    Args:
        logits: ``(B, C)`` scores or probabilities.
        target: ``(B,)`` class indices, or ``(B, C)`` soft targets.
    Returns:
        ``{k: accuracy in [0, 1]}``; ``k`` larger than ``C`` is clamped to ``C`` (accuracy 1).
    """
    target = _hard_targets(target)
    if logits.shape[0] == 0:
        return {k: float("nan") for k in ks}
    kmax = min(max(ks), logits.shape[-1])
    top = logits.topk(kmax, dim=-1).indices  # (B, kmax)
    hit = top == target.view(-1, 1)
    return {k: hit[:, : min(k, kmax)].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(pred: torch.Tensor, target: torch.Tensor, num_classes: int) -> torch.Tensor:
    """``(C, C)`` int64 counts, rows = true class, columns = predicted class.

    ``pred`` may be ``(B,)`` class indices or ``(B, C)`` scores.
    """
    if pred.ndim == 2:
        pred = pred.argmax(dim=-1)
    target = _hard_targets(target)
    idx = target.long().cpu() * num_classes + pred.long().cpu()
    return torch.bincount(idx, minlength=num_classes * num_classes).view(num_classes, num_classes)


def per_class_accuracy(confusion: torch.Tensor) -> torch.Tensor:
    """Recall of each class (diagonal / row sum); NaN for classes with no samples."""
    confusion = confusion.double()
    support = confusion.sum(dim=1)
    acc = confusion.diagonal() / support
    return torch.where(support > 0, acc, torch.full_like(acc, float("nan")))


def mean_class_accuracy(confusion: torch.Tensor) -> float:
    """Mean of :func:`per_class_accuracy` over the classes that have samples (Breakfast/COIN's metric)."""
    acc = per_class_accuracy(confusion)
    present = ~torch.isnan(acc)
    return acc[present].mean().item() if present.any() else float("nan")


def to_float(value: Any) -> float | None:
    """A scalar tensor / number as a Python float; ``None`` for NaN/inf so the JSON stays strict."""
    if isinstance(value, torch.Tensor):
        value = value.detach().float().item()
    value = float(value)
    return value if math.isfinite(value) else None


class JsonlLogger:
    """Appends one JSON object per call to a ``.jsonl`` file, flushed at once (safe to ``tail -f``).

    Args:
        path: the file.
        keep_until_step: ``None`` appends to what is there; an integer first drops the records whose
            ``step`` is larger (a run resumed from step ``s`` repeats the steps after ``s``, and each step
            must appear once); 0 starts an empty file.
    """

    def __init__(self, path: str | os.PathLike, keep_until_step: int | None = None):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if keep_until_step is not None and self.path.exists():
            kept = []
            for line in self.path.read_text(encoding="utf-8").splitlines():
                try:
                    step = json.loads(line).get("step", 0)
                except (json.JSONDecodeError, AttributeError):
                    continue  # a line cut short by a kill
                if isinstance(step, (int, float)) and step <= keep_until_step:
                    kept.append(line + "\n")
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text("".join(kept), encoding="utf-8")
            os.replace(tmp, self.path)
        self._f = open(self.path, "a", encoding="utf-8")

    def log(self, record: Mapping[str, Any]) -> None:
        out = {}
        for k, v in record.items():
            if isinstance(v, (bool, int, str)) or v is None:
                out[k] = v
            elif isinstance(v, (torch.Tensor, numbers.Real)):
                out[k] = to_float(v)
            else:
                out[k] = v
        self._f.write(json.dumps(out, allow_nan=False) + "\n")
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()


class TensorBoardLogger:
    """Scalars to TensorBoard under ``log_dir``; a silent no-op when TensorBoard is not installed."""

    def __init__(self, log_dir: str | os.PathLike):
        self.writer = None
        try:
            from torch.utils.tensorboard import SummaryWriter  # optional: needs the tensorboard package
        except ImportError:
            log.debug("tensorboard is not installed (pip install tensorboard); metrics go to metrics.jsonl only")
            return
        self.writer = SummaryWriter(log_dir=str(log_dir))

    @property
    def enabled(self) -> bool:
        return self.writer is not None

    def log(self, record: Mapping[str, Any], step: int) -> None:
        if self.writer is None:
            return
        for k, v in record.items():
            if k in ("step", "epoch", "time"):
                continue
            if isinstance(v, (int, float, torch.Tensor)) and not isinstance(v, bool):
                f = to_float(v)
                if f is not None:
                    self.writer.add_scalar(k, f, step)
        self.writer.flush()

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
            self.writer = None
