"""Frame-index sampling: small pure functions of the video length and an explicit generator.

``length`` is the number of frames in the video (e.g. from :func:`videomap.data.decode.count_frames`).
Every function returns ``int64`` NumPy indices in ``[0, length)``, non-decreasing along the clip axis.
Random functions take a ``torch.Generator`` or a ``numpy.random.Generator``; none touches global RNG.

* **Segment (TSN) sampling**: split the video into ``num_segments`` equal segments and take one frame
  per segment — a random one for training, the centre for testing. With ``num_clips`` test views, view
  ``c`` takes the frame at fraction ``(c + 0.5) / num_clips`` of every segment, so the views interleave.
* **Dense sampling**: ``clip_len`` frames ``stride`` apart from one start frame — random for training,
  evenly spread over the video for ``num_clips`` test views.

Videos shorter than a clip repeat their last frame (indices are clamped), never wrap around.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = [
    "segment_train_indices",
    "segment_test_indices",
    "dense_train_indices",
    "dense_test_indices",
    "sample_indices",
    "clamp_indices",
    "SAMPLING_METHODS",
]

SAMPLING_METHODS = ("segment", "dense")


def _uniform(generator, n: int) -> np.ndarray:
    """``n`` floats in ``[0, 1)`` from either kind of generator."""
    if isinstance(generator, np.random.Generator):
        return generator.random(n)
    if isinstance(generator, torch.Generator):
        return torch.rand(n, generator=generator, dtype=torch.float64).numpy()
    raise TypeError(f"expected a torch.Generator or numpy.random.Generator, got {type(generator).__name__}")


def _randint(generator, high: int) -> int:
    """One integer in ``[0, high)``."""
    return min(int(_uniform(generator, 1)[0] * high), high - 1)


def _check(length: int, n: int, what: str) -> None:
    if length < 1:
        raise ValueError(f"video length must be >= 1, got {length}")
    if n < 1:
        raise ValueError(f"{what} must be >= 1, got {n}")


def clamp_indices(indices, length: int) -> np.ndarray:
    """Clamp indices to ``[0, length - 1]`` (``length`` = frames actually available)."""
    return np.clip(np.asarray(indices, dtype=np.int64), 0, max(length - 1, 0))


def segment_train_indices(length: int, num_segments: int, *, generator) -> np.ndarray:
    """TSN training sampling: one uniformly random frame inside each of ``num_segments`` equal segments.

    Returns: ``(num_segments,)``.
    """
    _check(length, num_segments, "num_segments")
    edges = np.arange(num_segments + 1, dtype=np.float64) * (length / num_segments)
    start = np.floor(edges[:-1]).astype(np.int64)
    # A segment shorter than one frame still owns its start frame.
    width = np.maximum(np.floor(edges[1:]).astype(np.int64) - start, 1)
    offset = np.minimum((_uniform(generator, num_segments) * width).astype(np.int64), width - 1)
    return clamp_indices(start + offset, length)


def segment_test_indices(length: int, num_segments: int, num_clips: int = 1) -> np.ndarray:
    """TSN test sampling: ``num_clips`` deterministic views; view ``c`` sits at fraction
    ``(c + 0.5) / num_clips`` of every segment (one view = the segment centres).

    Returns: ``(num_clips, num_segments)``.
    """
    _check(length, num_segments, "num_segments")
    _check(length, num_clips, "num_clips")
    seg = length / num_segments
    pos = (np.arange(num_segments)[None, :] + (np.arange(num_clips)[:, None] + 0.5) / num_clips) * seg
    return clamp_indices(np.floor(pos).astype(np.int64), length)


def dense_train_indices(length: int, clip_len: int, stride: int, *, generator) -> np.ndarray:
    """Dense training sampling: ``clip_len`` frames ``stride`` apart from a random start.

    Returns: ``(clip_len,)``.
    """
    _check(length, clip_len, "clip_len")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (clip_len - 1) * stride + 1
    start = _randint(generator, max(length - span, 0) + 1)
    return clamp_indices(start + np.arange(clip_len) * stride, length)


def dense_test_indices(length: int, clip_len: int, stride: int, num_clips: int = 1) -> np.ndarray:
    """Dense test sampling: ``num_clips`` windows with starts evenly spread from the first to the last
    possible start (one window = the centred one).

    Returns: ``(num_clips, clip_len)``.
    """
    _check(length, clip_len, "clip_len")
    _check(length, num_clips, "num_clips")
    if stride < 1:
        raise ValueError(f"stride must be >= 1, got {stride}")
    span = (clip_len - 1) * stride + 1
    room = max(length - span, 0)
    if num_clips == 1:
        starts = np.array([room // 2])
    else:
        starts = np.round(np.linspace(0, room, num_clips)).astype(np.int64)
    return clamp_indices(starts[:, None] + np.arange(clip_len)[None, :] * stride, length)


def sample_indices(length: int, num_frames: int, *, method: str = "segment", train: bool, stride: int = 4,
                   num_clips: int = 1, generator=None) -> np.ndarray:
    """Dispatch to the functions above.

    Returns: ``(num_frames,)`` for training, ``(num_clips, num_frames)`` for testing.
    """
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling method {method!r}; expected one of {SAMPLING_METHODS}")
    if train:
        if generator is None:
            raise ValueError("training sampling is random: pass a torch.Generator or numpy Generator")
        if method == "segment":
            return segment_train_indices(length, num_frames, generator=generator)
        return dense_train_indices(length, num_frames, stride, generator=generator)
    if method == "segment":
        return segment_test_indices(length, num_frames, num_clips)
    return dense_test_indices(length, num_frames, stride, num_clips)
