"""Mixup/CutMix label sums and consistency; worker seeding."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from videomap.data import Mixup, mix_seed, seed_worker, smooth_one_hot, soft_target_cross_entropy


def batch(b=6, k=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, 4, 16, 16, generator=g), torch.randint(0, k, (b,), generator=g)


# ------------------------------------------------------------------------------------------- mixup


@pytest.mark.parametrize("mixup,cutmix", [(0.8, 1.0), (0.8, 0.0), (0.0, 1.0), (0.0, 0.0)])
def test_mixed_targets_sum_to_one_and_mix_two_labels(mixup, cutmix):
    m = Mixup(5, mixup_alpha=mixup, cutmix_alpha=cutmix, label_smoothing=0.1, seed=0)
    for s in range(10):
        x, y = batch(seed=s)
        x0 = x.clone()
        xm, t = m(x, y)
        assert torch.equal(x, x0)  # input untouched
        assert t.shape == (6, 5) and xm.shape == x.shape
        assert torch.allclose(t.sum(1), torch.ones(6))
        assert (t >= 0.1 / 5 - 1e-6).all()
        lam = float((t * smooth_one_hot(y, 5, 0.1)).sum(1)[0])  # any row works, rows are symmetric
        assert 0 < lam <= 1.0 + 1e-6


def test_label_smoothing_values():
    t = smooth_one_hot(torch.tensor([2, 0]), 4, 0.2)
    assert torch.allclose(t[0], torch.tensor([0.05, 0.05, 0.85, 0.05]))
    m = Mixup(4, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.2, seed=0)
    x, y = batch(k=4)
    xm, tt = m(x, y)
    assert torch.equal(xm, x) and torch.allclose(tt, smooth_one_hot(y, 4, 0.2))


def test_mixup_pixels_match_label_weights():
    m = Mixup(5, mixup_alpha=0.8, cutmix_alpha=0.0, label_smoothing=0.0, seed=3)
    x, y = batch()
    y = torch.arange(6) % 5
    y[5] = 4
    xm, t = m(x, y)
    lam = float(t[0, y[0]])
    assert torch.allclose(xm, x * lam + x.flip(0) * (1 - lam), atol=1e-6)


def test_cutmix_box_same_in_every_frame_and_area_matches_lam():
    m = Mixup(6, mixup_alpha=0.0, cutmix_alpha=1.0, label_smoothing=0.0, seed=1)
    for s in range(10):
        x, _ = batch(seed=s)
        y = torch.arange(6)
        xm, t = m(x, y)
        pasted = (xm != x).any(dim=1)  # (B, T, H, W)
        for b in range(6):
            for f in range(1, 4):
                assert torch.equal(pasted[b, f], pasted[b, 0])
        frac = pasted[0, 0].float().mean().item()
        assert t[0, 0].item() == pytest.approx(1 - frac, abs=1e-6) or frac == 0.0


def test_mixup_is_seeded():
    x, y = batch()
    a = Mixup(5, seed=11)(x, y)
    b = Mixup(5, seed=11)(x, y)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


def test_soft_target_cross_entropy_matches_hard_labels():
    logits = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    y = torch.tensor([0, 3, 1, 4])
    expect = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(soft_target_cross_entropy(logits, smooth_one_hot(y, 5)), expect)


# ------------------------------------------------------------------------------------- seeding


def test_mix_seed_avoids_additive_collisions():
    assert mix_seed(1, 0) != mix_seed(0, 1)
    assert mix_seed(3, 4) == mix_seed(3, 4) and 0 <= mix_seed(2**70, 5) < 2**63


class _Draws(Dataset):
    def __len__(self):
        return 4

    def __getitem__(self, i):
        return torch.tensor([random.random(), float(np.random.rand()), float(torch.rand(1))])


def test_seed_worker_gives_workers_distinct_reproducible_streams():
    def run():
        loader = DataLoader(_Draws(), batch_size=1, num_workers=2, worker_init_fn=seed_worker,
                            generator=torch.Generator().manual_seed(0))
        return torch.cat(list(loader))

    a, b = run(), run()
    assert torch.equal(a, b)
    # items 0 and 1 come from different workers: none of their global streams may coincide
    assert (a[0] != a[1]).all()
