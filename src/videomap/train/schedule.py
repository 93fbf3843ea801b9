"""Learning-rate (and other hyper-parameter) schedules as pure functions of the optimizer step.

Pure functions keep resume exact: the value at step ``s`` depends on nothing but ``s`` and the recipe,
so a resumed run needs no scheduler state. ``step`` is the number of optimizer updates already done;
the value returned is the one used for the next update.
"""

from __future__ import annotations

import math
from typing import Callable

__all__ = ["linear_warmup", "cosine", "warmup_cosine", "warmup_constant", "build_lr_fn", "warmup_steps_for"]


def linear_warmup(step: int, warmup_steps: int, peak: float) -> float:
    """``peak * (step + 1) / warmup_steps`` for ``step < warmup_steps``, else ``peak``.

    Counting from ``step + 1`` makes the very first update non-zero (a zero-lr step is wasted compute)
    and the last warmup update reach ``peak`` exactly.
    """
    if warmup_steps <= 0 or step >= warmup_steps:
        return float(peak)
    return float(peak) * (step + 1) / warmup_steps


def cosine(step: int, total_steps: int, start: float, end: float) -> float:
    """Half-cosine from ``start`` at step 0 to ``end`` at ``total_steps`` (held at ``end`` afterwards)."""
    if total_steps <= 0:
        return float(end)
    t = min(max(step, 0), total_steps) / total_steps
    return float(end) + 0.5 * (float(start) - float(end)) * (1.0 + math.cos(math.pi * t))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base: float, final: float = 0.0) -> float:
    """Linear warmup to ``base`` over ``warmup_steps``, then cosine down to ``final`` at ``total_steps``."""
    if step < warmup_steps:
        return linear_warmup(step, warmup_steps, base)
    return cosine(step - warmup_steps, total_steps - warmup_steps, base, final)


def warmup_constant(step: int, warmup_steps: int, base: float) -> float:
    """Linear warmup to ``base``, then constant."""
    return linear_warmup(step, warmup_steps, base)


def warmup_steps_for(optim_cfg, steps_per_epoch: int | None) -> int:
    """Warmup length in steps: ``optim.warmup_steps`` when set, else ``warmup_epochs * steps_per_epoch``."""
    if optim_cfg.warmup_steps > 0:
        return int(optim_cfg.warmup_steps)
    if optim_cfg.warmup_epochs > 0:
        if not steps_per_epoch:
            raise ValueError("optim.warmup_epochs needs the epoch length; set optim.warmup_steps instead")
        return int(round(optim_cfg.warmup_epochs * steps_per_epoch))
    return 0


def build_lr_fn(optim_cfg, total_steps: int, steps_per_epoch: int | None = None) -> Callable[[int], float]:
    """The learning rate at each step for an :class:`~videomap.train.config.OptimConfig`."""
    warmup = warmup_steps_for(optim_cfg, steps_per_epoch)
    base, final = float(optim_cfg.lr), float(optim_cfg.min_lr)
    if optim_cfg.schedule == "constant":
        return lambda step: warmup_constant(step, warmup, base)
    if optim_cfg.schedule == "cosine":
        return lambda step: warmup_cosine(step, total_steps, warmup, base, final)
    raise ValueError(f"unknown optim.schedule {optim_cfg.schedule!r}; expected 'cosine' or 'constant'")
