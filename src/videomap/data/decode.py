"""Video decoding with PyAV.

Frames are numbered in the order the decoder returns them, reading the stream from the start: no
seeking, and no trust in the container's frame count, which is 0 (Matroska/WebM), or larger than what
decodes (truncated files), on real data. Requested indices past the last decoded frame are clamped to it.

All frame tensors are ``uint8 (T, H, W, 3)`` RGB.
"""

from __future__ import annotations

import logging
from typing import NamedTuple, Sequence

import numpy as np
import torch

__all__ = [
    "VideoDecodeError",
    "VideoInfo",
    "probe_video",
    "count_frames",
    "decode_video",
    "decode_frames",
]

log = logging.getLogger(__name__)


class VideoDecodeError(RuntimeError):
    """A video that yields no frame: missing, empty, truncated before the first frame, or not a video."""

    def __init__(self, path, reason: str):
        super().__init__(str(path), reason)  # both in args, so the error survives pickling across workers
        self.path = str(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"cannot decode {self.path}: {self.reason}"


class VideoInfo(NamedTuple):
    """Stream metadata as the container states it (``container_frames`` may be 0 or wrong)."""

    width: int
    height: int
    fps: float
    container_frames: int
    codec: str


def _av():
    try:
        import av
    except ImportError as e:  # optional dependency
        raise ImportError("videomap.data needs PyAV to decode videos: pip install av") from e
    return av


def _describe(e: BaseException) -> str:
    # FFmpeg errors repeat the file name in str(e); the path is already part of VideoDecodeError.
    return f"{type(e).__name__}: {getattr(e, 'strerror', None) or e}"


def _open(path):
    """Open ``path`` and return ``(container, video stream)``, or raise :class:`VideoDecodeError`."""
    av = _av()
    try:
        container = av.open(str(path))
    except FileNotFoundError:
        raise VideoDecodeError(path, "file not found") from None
    except (av.error.FFmpegError, OSError, ValueError) as e:
        raise VideoDecodeError(path, f"cannot open container ({_describe(e)})") from None
    if not container.streams.video:
        container.close()
        raise VideoDecodeError(path, "no video stream")
    return container, container.streams.video[0]


def probe_video(path) -> VideoInfo:
    """Container metadata without decoding. For placing samples use :func:`count_frames` instead."""
    container, stream = _open(path)
    with container:
        rate = stream.average_rate or stream.base_rate or 0
        return VideoInfo(stream.width, stream.height, float(rate), int(stream.frames or 0),
                         stream.codec_context.name)


def count_frames(path) -> int:
    """Number of non-empty video packets, read without decoding (cheap).

    One packet holds one frame for the codecs met in practice, so this is the frame count to place
    samples with; decoding may still stop earlier on a damaged file, which clamping absorbs.
    Raises :class:`VideoDecodeError` when the file has no video packet at all.
    """
    av = _av()
    container, stream = _open(path)
    n = 0
    with container:
        try:
            for packet in container.demux(stream):
                if packet.size:
                    n += 1
        except (av.error.FFmpegError, OSError) as e:
            if n == 0:
                raise VideoDecodeError(path, f"cannot read packets ({_describe(e)})") from None
            log.debug("%s: demux stopped after %d packets: %s", path, n, e)
    if n == 0:
        raise VideoDecodeError(path, "no video frames")
    return n


def _iter_frames(path, stop: int | None, strict: bool):
    """Yield ``(index, av.VideoFrame)`` in decoder output order, up to and including index ``stop``."""
    av = _av()
    container, stream = _open(path)
    with container:
        i = -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                yield i, frame
                if stop is not None and i >= stop:
                    return
        except (av.error.FFmpegError, OSError) as e:
            # A damaged tail is common in crawled datasets: keep the frames decoded so far.
            if i < 0 or strict:
                raise VideoDecodeError(path, f"decoding failed after {i + 1} frames ({_describe(e)})") from None
            log.debug("%s: decoding stopped after %d frames: %s", path, i + 1, e)


def _to_rgb(frame, size: tuple[int, int] | None) -> np.ndarray:
    # Reformat every frame to the first frame's size: a mid-stream resolution change would otherwise
    # make the frames impossible to stack.
    if size is None:
        return frame.to_ndarray(format="rgb24")
    return frame.to_ndarray(format="rgb24", width=size[0], height=size[1])


def decode_video(path, *, max_frames: int | None = None, strict: bool = False) -> torch.Tensor:
    """Decode every frame (or the first ``max_frames``) of ``path``.

    Returns:
        ``uint8 (T, H, W, 3)`` with ``T`` the number of frames actually decoded (≥ 1).

    Raises:
        VideoDecodeError: nothing decodable (with ``strict=True``, also any decoding error).
    """
    frames: list[np.ndarray] = []
    size = None
    stop = None if max_frames is None else max_frames - 1
    if stop is not None and stop < 0:
        raise ValueError("max_frames must be positive")
    for _, frame in _iter_frames(path, stop, strict):
        arr = _to_rgb(frame, size)
        size = size or (arr.shape[1], arr.shape[0])
        frames.append(arr)
    if not frames:
        raise VideoDecodeError(path, "no video frames")
    return torch.from_numpy(np.stack(frames))


def decode_frames(path, indices: Sequence[int] | np.ndarray | torch.Tensor, *, strict: bool = False) -> torch.Tensor:
    """Decode the frames at ``indices`` (any order, repeats allowed), reading only up to the largest.

    Only the requested frames are converted to RGB and kept, so long videos cost time, not memory.
    Indices beyond the last frame that actually decodes are clamped to it.

    Args:
        indices: int array of shape ``(K,)`` (or any shape; it is flattened), each ``>= 0``.

    Returns:
        ``uint8 (K, H, W, 3)``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("decode_frames needs at least one index")
    if idx.min() < 0:
        raise ValueError(f"frame indices must be >= 0, got {int(idx.min())}")
    wanted = set(idx.tolist())
    stop = int(idx.max())
    kept: dict[int, np.ndarray] = {}
    last_i, last_frame, size = -1, None, None
    for i, frame in _iter_frames(path, stop, strict):
        last_i, last_frame = i, frame
        if i in wanted:
            kept[i] = _to_rgb(frame, size)
            size = size or (kept[i].shape[1], kept[i].shape[0])
    if last_i < 0:
        raise VideoDecodeError(path, "no video frames")
    if last_i < stop and last_i not in kept:
        kept[last_i] = _to_rgb(last_frame, size)
    out = np.minimum(idx, last_i)
    return torch.from_numpy(np.stack([kept[int(i)] for i in out]))
