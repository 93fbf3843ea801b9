"""Hooks into :class:`~videomap.train.loop.Trainer` for periodic extras, evaluation and exports.

Every hook is called on every rank at the same point, so a hook may use collectives; hooks that write
files should do so only when ``trainer.runtime.is_main``. A callback with state that must survive a resume
(an EMA of the weights, the best validation score so far) returns it from :meth:`Callback.state_dict` as
tensors and plain Python values; it is stored in the training checkpoint under the callback's ``name``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping

from torch import nn

if TYPE_CHECKING:  # pragma: no cover
    from .loop import Trainer

__all__ = ["Callback", "Every", "ExportModel"]


class Callback:
    """Base class: override any subset of the hooks."""

    #: Key of this callback's state in the checkpoint; defaults to the class name.
    name: str | None = None

    def on_train_start(self, trainer: "Trainer") -> None:
        """After setup and resume, before the first step of this invocation."""

    def on_step_end(self, trainer: "Trainer", metrics: Mapping[str, Any]) -> None:
        """After each successful optimizer step; ``metrics`` holds this step's scalars (tensors, this rank)."""

    def on_epoch_end(self, trainer: "Trainer", epoch: int) -> None:
        """After the optimizer step that consumed the last batch of ``epoch``."""

    def on_eval_end(self, trainer: "Trainer", metrics: Mapping[str, Any]) -> None:
        """After ``eval_fn`` ran; ``metrics`` is what it returned."""

    def on_train_end(self, trainer: "Trainer") -> None:
        """After the last step (not called when training stops on SIGTERM or an error)."""

    def state_dict(self) -> dict[str, Any] | None:
        """State to checkpoint (tensors and plain values), or ``None`` for a stateless callback."""
        return None

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned."""

    @property
    def key(self) -> str:
        return self.name or type(self).__name__


class Every(Callback):
    """Call ``fn(trainer)`` every ``every`` steps (and once at the end when ``at_end``).

    E.g. ``Every(200, save_reconstruction_picture)``; ``every=0`` means only at the end.
    """

    def __init__(self, every: int, fn: Callable[["Trainer"], Any], at_end: bool = True, name: str | None = None):
        self.every = int(every)
        self.fn = fn
        self.at_end = at_end
        self.name = name or f"Every({getattr(fn, '__name__', 'fn')})"
        self._last_step = -1

    def on_step_end(self, trainer: "Trainer", metrics: Mapping[str, Any]) -> None:
        if self.every > 0 and trainer.step % self.every == 0:
            self._last_step = trainer.step
            self.fn(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        if self.at_end and self._last_step != trainer.step:
            self._last_step = trainer.step
            self.fn(trainer)


class ExportModel(Callback):
    """Save ``select(model)`` as a model folder (``config.json`` + ``model.safetensors``) at the end.

    ``select`` picks the part worth keeping, e.g. ``lambda m: m.encoder`` for a pretraining objective, so
    ``OUTPUT/encoder/`` loads as a backbone. ``every > 0`` also exports every that many steps. ``files``
    (name → JSON value, e.g. ``classes.json``) go into the same folder; the folder is written as a whole
    by :func:`videomap.models.save_pretrained`.
    """

    def __init__(self, directory: str | os.PathLike, select: Callable[[nn.Module], nn.Module] = lambda m: m,
                 every: int = 0, config: Any = None, files: Mapping[str, Any] | None = None):
        self.directory = Path(directory)
        self.select = select
        self.every = int(every)
        self.config = config
        self.files = dict(files or {})

    def _export(self, trainer: "Trainer") -> None:
        if trainer.runtime.is_main:
            from ..models.weights import save_pretrained
            from .optim import unwrap_model

            save_pretrained(unwrap_model(self.select(trainer.model)), self.directory, config=self.config,
                            files=self.files)
        trainer.runtime.barrier()

    def on_step_end(self, trainer: "Trainer", metrics: Mapping[str, Any]) -> None:
        if self.every > 0 and trainer.step % self.every == 0:
            self._export(trainer)

    def on_train_end(self, trainer: "Trainer") -> None:
        self._export(trainer)
