"""Frame-index sampling: bounds, segment membership, determinism, multi-view spread."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from videomap.data import (
    clamp_indices,
    dense_test_indices,
    dense_train_indices,
    sample_indices,
    segment_test_indices,
    segment_train_indices,
)

LENGTHS = [1, 3, 7, 16, 17, 100, 301]


@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("segments", [1, 8, 16])
def test_segment_train_one_frame_per_segment(length, segments):
    g = torch.Generator().manual_seed(length * 31 + segments)
    for _ in range(20):
        idx = segment_train_indices(length, segments, generator=g)
        assert idx.shape == (segments,) and idx.dtype == np.int64
        assert idx.min() >= 0 and idx.max() < length
        assert np.all(np.diff(idx) >= 0)
        if length >= segments:  # each index inside its own segment
            seg = length / segments
            assert np.all(idx >= np.floor(np.arange(segments) * seg))
            assert np.all(idx < np.floor((np.arange(segments) + 1) * seg))


def test_segment_train_covers_each_segment_uniformly():
    g = torch.Generator().manual_seed(0)
    draws = np.stack([segment_train_indices(40, 4, generator=g) for _ in range(2000)])
    for s in range(4):  # segment s holds frames 10s .. 10s+9, each drawn ~200 times
        counts = np.bincount(draws[:, s] - 10 * s, minlength=10)
        assert counts.min() > 120 and counts.max() < 290


def test_generators_seed_and_never_touch_global_rng():
    torch.manual_seed(123)
    np.random.seed(123)
    before_t, before_n = torch.get_rng_state(), np.random.get_state()[1].copy()
    a = segment_train_indices(100, 8, generator=torch.Generator().manual_seed(5))
    b = segment_train_indices(100, 8, generator=torch.Generator().manual_seed(5))
    c = segment_train_indices(100, 8, generator=np.random.default_rng(5))
    d = dense_train_indices(100, 8, 2, generator=np.random.default_rng(5))
    assert np.array_equal(a, b) and c.shape == d.shape == (8,)
    assert torch.equal(before_t, torch.get_rng_state()) and np.array_equal(before_n, np.random.get_state()[1])
    assert not all(np.array_equal(a, segment_train_indices(100, 8, generator=torch.Generator().manual_seed(s)))
                   for s in range(6, 10))
    with pytest.raises(TypeError):
        segment_train_indices(10, 2, generator=42)


def test_segment_test_centres_and_interleaved_views():
    assert segment_test_indices(80, 8).tolist() == [[5, 15, 25, 35, 45, 55, 65, 75]]
    views = segment_test_indices(80, 8, num_clips=2)
    assert views.tolist() == [[2, 12, 22, 32, 42, 52, 62, 72], [7, 17, 27, 37, 47, 57, 67, 77]]
    for length in LENGTHS:
        v = segment_test_indices(length, 8, num_clips=4)
        assert v.shape == (4, 8) and v.min() >= 0 and v.max() < length
        assert np.all(np.diff(v, axis=1) >= 0)
        assert np.array_equal(v, segment_test_indices(length, 8, num_clips=4))  # deterministic


@pytest.mark.parametrize("length", LENGTHS)
def test_dense_train_stride_and_bounds(length):
    g = torch.Generator().manual_seed(length)
    for _ in range(20):
        idx = dense_train_indices(length, 8, 4, generator=g)
        assert idx.shape == (8,) and idx.min() >= 0 and idx.max() < length
        if length >= 29:
            assert np.all(np.diff(idx) == 4)
        else:  # too short: clamped, never wrapped
            assert idx[0] == 0 and np.all(np.diff(idx) >= 0)


def test_dense_test_views_spread_over_video():
    v = dense_test_indices(100, 8, 2, num_clips=3)
    assert v.shape == (3, 8)
    assert v[0, 0] == 0 and v[-1, -1] == 99 and np.all(np.diff(v, axis=1) == 2)
    centre = dense_test_indices(100, 8, 2)
    assert centre[0, 0] == (100 - 15) // 2
    assert dense_test_indices(5, 8, 2).tolist() == [[0, 2, 4, 4, 4, 4, 4, 4]]


def test_sample_indices_dispatch_and_errors():
    g = torch.Generator().manual_seed(0)
    assert sample_indices(50, 8, method="segment", train=True, generator=g).shape == (8,)
    assert sample_indices(50, 8, method="dense", train=False, num_clips=2).shape == (2, 8)
    with pytest.raises(ValueError):
        sample_indices(50, 8, method="segment", train=True)  # training needs a generator
    with pytest.raises(ValueError):
        sample_indices(50, 8, method="random", train=False)
    with pytest.raises(ValueError):
        segment_test_indices(0, 8)
    assert clamp_indices([-3, 4, 99], 10).tolist() == [0, 4, 9]
