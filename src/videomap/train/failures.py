"""Undecodable training videos: one count that every process agrees on and a resumed run keeps.

A clip that fails to decode is skipped, never replaced by another sample (DESIGN §5). Both training runs
(pretraining and fine-tuning) record the failures through :class:`FailureCounter`, and a micro-batch whose
clips all failed still takes part in the step on a :func:`stand_in_clip`, because under DDP every process
must run a backward in every step for the gradient all-reduce to complete.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Mapping, Sequence

import torch

from ..data import FailedVideo, FailureLog, failure_summary
from .callbacks import Callback
from .config import Config
from .runtime import Runtime

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Trainer

__all__ = ["FailureCounter", "stand_in_clip"]

log = logging.getLogger("videomap.train")


class FailureCounter(Callback):
    """Counts undecodable training videos across all processes and checkpoints the count.

    Each process records its own failures (:class:`~videomap.data.FailureLog` warns once per file); after
    every step the new ones are gathered, so every process holds the same totals, the checkpoint saves the
    full count, and a resumed run keeps counting from there.

    Args:
        context: names the run in the one-per-file warning (``"training"``, ``"pretraining"``).
    """

    name = "failures"

    def __init__(self, context: str = "training"):
        self.local = FailureLog(log, context=context)
        self.count = 0
        self.reasons: dict[str, str] = {}
        self._pending: list[tuple] = []

    def record(self, failed: Sequence[FailedVideo]) -> None:
        """Called by the step function with a batch's ``"failed"`` list."""
        self.local.update(failed)
        self._pending.extend((f.path, f.reason) for f in failed)

    def _sync(self, runtime: Runtime) -> None:
        if runtime.distributed:
            # One small all-reduce per step; the paths are gathered only when some process has new failures.
            n = runtime.all_reduce(torch.tensor([float(len(self._pending))], device=runtime.device))
            if n.item() == 0:
                return
            parts = runtime.all_gather_object(self._pending)
        else:
            parts = [self._pending]
        for part in parts:
            for path, reason in part:
                self.count += 1
                self.reasons.setdefault(path, reason)
        self._pending = []

    def on_step_end(self, trainer: "Trainer", metrics: Mapping[str, Any]) -> None:
        self._sync(trainer.runtime)

    def summary(self) -> dict[str, Any]:
        """``{"failed_loads", "num_failed", "failed_videos": [{"path", "reason"}]}`` over all processes."""
        return failure_summary(self.count, self.reasons)

    def state_dict(self) -> dict[str, Any]:
        return {"count": self.count, "reasons": dict(self.reasons)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.count, self.reasons = int(state["count"]), dict(state["reasons"])


def stand_in_clip(cfg: Config, device: torch.device) -> torch.Tensor:
    """One blank clip ``(1, 3, data.num_frames, data.img_size, data.img_size)`` for a micro-batch that lost
    every clip.

    Under DDP the other processes still all-reduce gradients in this step, so this one must run a forward
    and a backward over every parameter too. The step function runs the model on this clip and multiplies
    the loss by its :meth:`~videomap.train.runtime.Runtime.loss_share`, which is exactly zero for a process
    with no decoded clips: it contributes nothing but takes part.
    """
    return torch.zeros(1, 3, cfg.data.num_frames, cfg.data.img_size, cfg.data.img_size, device=device)
