"""Schedules (pure functions of the step) and parameter groups (decay split, layer-wise lr decay)."""

import math

import pytest
import torch
from torch import nn

from videomap.train.config import OptimConfig
from videomap.train.optim import build_optimizer, param_groups, set_lr
from videomap.train.schedule import build_lr_fn, cosine, linear_warmup, warmup_cosine


# ------------------------------------------------------------------------------------------------ schedule


def test_warmup_then_cosine_values():
    f = lambda s: warmup_cosine(s, total_steps=10, warmup_steps=4, base=1.0, final=0.1)
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(4) == pytest.approx(1.0)                                    # cosine starts at the peak
    assert f(7) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi * 3 / 6)))  # half way: the mean
    assert f(7) == pytest.approx(0.55)
    assert f(10) == pytest.approx(0.1) and f(50) == pytest.approx(0.1)   # held at the floor
    values = [f(s) for s in range(4, 11)]
    assert all(a >= b for a, b in zip(values, values[1:]))               # monotone after warmup


def test_schedule_edge_cases():
    assert linear_warmup(0, 0, 2.0) == 2.0
    assert cosine(5, 0, 1.0, 0.0) == 0.0
    assert warmup_cosine(0, total_steps=5, warmup_steps=0, base=1.0, final=0.0) == pytest.approx(1.0)


def test_build_lr_fn_from_config():
    f = build_lr_fn(OptimConfig(lr=1e-3, min_lr=0.0, warmup_steps=2), total_steps=6)
    assert [f(s) for s in (0, 1, 2, 6)] == pytest.approx([5e-4, 1e-3, 1e-3, 0.0])
    g = build_lr_fn(OptimConfig(lr=1.0, warmup_epochs=1.0, schedule="constant"), total_steps=100,
                    steps_per_epoch=4)
    assert [g(s) for s in (0, 3, 99)] == pytest.approx([0.25, 1.0, 1.0])
    with pytest.raises(ValueError, match="warmup_epochs"):
        build_lr_fn(OptimConfig(warmup_epochs=1.0), total_steps=10)


# ---------------------------------------------------------------------------------------- parameter groups


class Encoder(nn.Module):
    """Toy backbone with the model conventions: no_weight_decay, get_layer_id, num_layers."""

    def __init__(self, dim=4, depth=3):
        super().__init__()
        self.patch_embed = nn.Linear(6, dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, 5, dim))
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.layers = nn.ModuleList(nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, dim)) for _ in range(depth))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, 3)
        self.frozen = nn.Parameter(torch.zeros(2, 2), requires_grad=False)

    num_layers = 3

    def no_weight_decay(self):
        return {"pos_embed", "cls_token"}

    def get_layer_id(self, name):
        if name.startswith(("patch_embed", "pos_embed", "cls_token")):
            return 0
        if name.startswith("layers."):
            return int(name.split(".")[1]) + 1
        return self.num_layers + 1


def _by_name(groups):
    return {n: g for g in groups for n in g["param_names"]}


def test_weight_decay_split():
    groups = param_groups(Encoder(), weight_decay=0.05, layer_decay=1.0)
    by = _by_name(groups)
    decayed = {n for n, g in by.items() if g["weight_decay"] == 0.05}
    assert decayed == {"patch_embed.weight", "layers.0.1.weight", "layers.1.1.weight", "layers.2.1.weight",
                       "head.weight"}
    assert by["pos_embed"]["weight_decay"] == 0.0 and by["cls_token"]["weight_decay"] == 0.0
    assert by["norm.weight"]["weight_decay"] == 0.0 and by["head.bias"]["weight_decay"] == 0.0
    assert "frozen" not in by                                             # frozen parameters left out
    assert all(g["lr_scale"] == 1.0 for g in groups) and len(groups) == 2


def test_layer_decay_scales():
    L, d = 3, 0.5
    groups = param_groups(Encoder(), weight_decay=0.05, layer_decay=d)
    by = _by_name(groups)
    assert by["patch_embed.weight"]["lr_scale"] == pytest.approx(d ** (L + 1))   # id 0
    assert by["pos_embed"]["lr_scale"] == pytest.approx(d ** (L + 1))
    for i in range(L):                                                            # id i + 1
        assert by[f"layers.{i}.1.weight"]["lr_scale"] == pytest.approx(d ** (L - i))
        assert by[f"layers.{i}.0.weight"]["weight_decay"] == 0.0
    assert by["head.weight"]["lr_scale"] == 1.0 and by["norm.weight"]["lr_scale"] == 1.0  # id L + 1
    ids = [(g["layer_id"], g["weight_decay"] > 0) for g in groups]
    assert ids == sorted(ids) and len(set(ids)) == len(ids)               # deterministic, no duplicates
    n_params = sum(len(g["params"]) for g in groups)
    assert n_params == sum(1 for p in Encoder().parameters() if p.requires_grad)


def test_no_weight_decay_of_a_wrapped_encoder_is_found():
    class Objective(nn.Module):
        def __init__(self):
            super().__init__()
            self.encoder = Encoder()
            self.mask_token = nn.Parameter(torch.zeros(1, 1, 4))
            self.decoder = nn.Linear(4, 4)

        def no_weight_decay(self):
            return {"mask_token"}

    by = _by_name(param_groups(Objective(), 0.05))
    assert by["encoder.pos_embed"]["weight_decay"] == 0.0
    assert by["mask_token"]["weight_decay"] == 0.0
    assert by["decoder.weight"]["weight_decay"] == 0.05


def test_layer_decay_without_layer_ids_warns_and_is_uniform(caplog):
    model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 2))
    groups = param_groups(model, 0.1, layer_decay=0.7)
    assert all(g["lr_scale"] == 1.0 for g in groups)
    assert "layer_decay" in caplog.text


def test_build_optimizer_and_set_lr():
    model = Encoder()
    opt = build_optimizer(model, OptimConfig(lr=1e-3, layer_decay=0.5, betas=(0.9, 0.95)))
    assert isinstance(opt, torch.optim.AdamW)
    assert opt.defaults["betas"] == (0.9, 0.95)
    set_lr(opt, 2e-3)
    for g in opt.param_groups:
        assert g["lr"] == pytest.approx(2e-3 * g["lr_scale"])
