"""Parameter groups (weight-decay split, layer-wise lr decay) and the AdamW optimizer.

Two conventions shared with the models:

* ``model.no_weight_decay()`` (optional, on the model or any submodule) returns parameter names, relative
  to that module, that must not be decayed (position embeddings, class/mask tokens). Every 1-D parameter
  (norm weights, biases) is also exempt.
* ``model.get_layer_id(name)`` and ``model.num_layers`` (or ``get_num_layers()``; optional, on the model
  passed in) give layer ids
  for layer-wise lr decay: id 0 = embeddings, id i + 1 = layer i, id L + 1 = head; a parameter of layer
  ``id`` trains with ``lr * layer_decay ** (L + 1 - id)``, so the head keeps the full lr and earlier
  layers, whose pretrained features are the most general, move the least.

Each group carries ``lr_scale``; :func:`set_lr` multiplies the scheduled lr by it at every step.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

import torch
from torch import nn

__all__ = ["no_weight_decay_names", "param_groups", "build_optimizer", "set_lr", "unwrap_model"]

log = logging.getLogger(__name__)


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a DDP / ``torch.compile`` wrapper (the object whose parameter names we want)."""
    while True:
        if isinstance(model, nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(getattr(model, "_orig_mod"), nn.Module):
            model = model._orig_mod
        else:
            return model


def no_weight_decay_names(model: nn.Module) -> set[str]:
    """Full parameter names listed by ``no_weight_decay()`` of ``model`` and of every submodule.

    Gathering them from submodules lets an objective that wraps an encoder (``pretrainer.encoder``)
    inherit the encoder's list without knowing about it.
    """
    names: set[str] = set()
    for prefix, module in model.named_modules():
        fn = getattr(module, "no_weight_decay", None)
        if not callable(fn):
            continue
        for n in fn():
            names.add(f"{prefix}.{n}" if prefix else n)
    return names


def _matches(name: str, skip: Iterable[str]) -> bool:
    # An entry names a parameter, or a submodule whose parameters are all exempt.
    return any(name == s or name.startswith(s + ".") for s in skip)


def _layer_info(model: nn.Module, layer_decay: float | None):
    if layer_decay is None or layer_decay == 1.0:
        return None
    get_id = getattr(model, "get_layer_id", None)
    num_layers = getattr(model, "num_layers", None)
    if callable(num_layers):
        num_layers = num_layers()
    if num_layers is None and callable(getattr(model, "get_num_layers", None)):
        num_layers = model.get_num_layers()
    if not callable(get_id) or num_layers is None:
        log.warning(
            "optim.layer_decay=%s ignored: %s defines no get_layer_id()/num_layers; every group gets lr_scale 1",
            layer_decay, type(model).__name__,
        )
        return None
    return get_id, int(num_layers)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    layer_decay: float | None = 1.0,
    *,
    no_weight_decay: Iterable[str] = (),
) -> list[dict[str, Any]]:
    """Optimizer parameter groups: decay / no-decay split, crossed with layer ids when ``layer_decay != 1``.

    Args:
        model: the module to optimise (a DDP wrapper is unwrapped). Frozen parameters are left out.
        weight_decay: decay for the decayed groups; the others get 0.
        layer_decay: per-layer lr factor (``None`` or 1.0 = off).
        no_weight_decay: extra parameter names (or submodule prefixes) to exempt from decay.

    Returns:
        A list of dicts with ``params``, ``param_names``, ``weight_decay``, ``lr_scale`` and ``layer_id``
        (``None`` without layer decay), ordered by layer id then decay, so the order is deterministic.
    """
    model = unwrap_model(model)
    skip = no_weight_decay_names(model) | set(no_weight_decay)
    layers = _layer_info(model, layer_decay)

    groups: dict[Any, dict[str, Any]] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        decay = not (p.ndim <= 1 or name.endswith(".bias") or _matches(name, skip))
        if layers is None:
            layer_id, scale = None, 1.0
        else:
            get_id, num_layers = layers
            layer_id = int(get_id(name))
            scale = float(layer_decay) ** (num_layers + 1 - layer_id)
        key = (layer_id if layer_id is not None else -1, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "param_names": [],
                "weight_decay": float(weight_decay) if decay else 0.0,
                "lr_scale": scale,
                "layer_id": layer_id,
            }
        groups[key]["params"].append(p)
        groups[key]["param_names"].append(name)
    return [groups[k] for k in sorted(groups)]


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every group's lr to ``lr * group['lr_scale']`` (1 when the group has no scale)."""
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)


def build_optimizer(model: nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups` for an :class:`~videomap.train.config.OptimConfig` ``cfg``."""
    groups = param_groups(model, cfg.weight_decay, cfg.layer_decay)
    if not groups:
        raise ValueError(f"{type(unwrap_model(model)).__name__} has no trainable parameters")
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps)
