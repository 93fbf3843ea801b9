"""Masks for frame-wise pretraining: rectangular, seeded, in spatial-first order."""

import pytest
import torch

from videomap.pretrain import (frame_token_mask, num_hidden, sample_mask_ratio, visible_indices,
                               whole_frame_mask)


def test_every_frame_hides_the_same_number_of_tokens():
    mask = frame_token_mask(3, 4, 49, 0.5, generator=torch.Generator().manual_seed(0))
    assert mask.shape == (3, 4, 49) and mask.dtype == torch.bool
    assert (mask.sum(-1) == num_hidden(49, 0.5)).all()
    # which tokens differs between frames and samples
    assert not torch.equal(mask[0, 0], mask[0, 1]) and not torch.equal(mask[0, 0], mask[1, 0])


def test_masks_are_reproducible_from_a_seed_and_ignore_global_rng():
    a = frame_token_mask(2, 3, 16, 0.6, generator=torch.Generator().manual_seed(7))
    torch.manual_seed(123)
    torch.rand(100)
    b = frame_token_mask(2, 3, 16, 0.6, generator=torch.Generator().manual_seed(7))
    c = frame_token_mask(2, 3, 16, 0.6, generator=torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_whole_frame_mask_hides_entire_frames():
    mask = whole_frame_mask(4, 8, 10, 0.5, generator=torch.Generator().manual_seed(0))
    per_frame = mask.sum(-1)
    assert ((per_frame == 0) | (per_frame == 10)).all()
    assert (mask.flatten(1).sum(1) == 40).all()


def test_whole_frame_mask_can_keep_the_first_frame():
    for seed in range(20):
        mask = whole_frame_mask(3, 4, 5, 0.5, generator=torch.Generator().manual_seed(seed), keep_first=True)
        per_frame = mask.sum(-1)
        assert (per_frame[:, 0] == 0).all()
        assert ((per_frame == 0) | (per_frame == 5)).all() and (mask.flatten(1).sum(1) == 10).all()
    # Frames 1 … T'-1 are all drawn: over the seeds each of them is hidden at least once.
    hidden = torch.stack([whole_frame_mask(1, 4, 1, 0.25, generator=torch.Generator().manual_seed(s),
                                           keep_first=True)[0, :, 0] for s in range(40)])
    assert hidden[:, 0].sum() == 0 and (hidden[:, 1:].sum(0) > 0).all()


def test_ratio_bounds():
    assert num_hidden(10, 0.0) == 0
    assert num_hidden(10, 0.99) == 9  # one token always stays visible
    with pytest.raises(ValueError, match="mask ratio"):
        num_hidden(10, 1.0)


def test_truncated_normal_ratio_is_in_range_and_centred():
    g = torch.Generator().manual_seed(0)
    ratios = torch.tensor([sample_mask_ratio(g) for _ in range(4000)])
    assert ratios.min() >= 0.3 and ratios.max() <= 0.7
    assert abs(ratios.mean().item() - 0.5) < 0.01
    # σ = 0.25 truncated to ±0.2 around the mean is close to uniform: std ≈ 0.4/√12 · (slightly less)
    assert 0.10 < ratios.std().item() < 0.12


def test_visible_indices_keep_sequence_order():
    mask = frame_token_mask(2, 3, 9, 0.4, generator=torch.Generator().manual_seed(1))
    idx = visible_indices(mask)
    assert idx.shape == (2, 3 * (9 - num_hidden(9, 0.4)))
    assert (idx[:, 1:] > idx[:, :-1]).all()
    assert not mask.flatten(1).gather(1, idx).any()


def test_visible_indices_reject_ragged_masks():
    mask = torch.zeros(2, 1, 4, dtype=torch.bool)
    mask[0, 0, 0] = True
    with pytest.raises(ValueError, match="same number"):
        visible_indices(mask)
