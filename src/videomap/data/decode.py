"""Video decoding with PyAV.

Frames are numbered in the order the decoder returns them, reading the stream from the start, with no
trust in the container's frame count, which is 0 (Matroska/WebM), or larger than what decodes (truncated
files), on real data. Requested indices past the last decoded frame are clamped to it.

:func:`decode_frames` reaches far frames by seeking to the key frame before each of them when a demux
pass shows that the file's timestamps identify frames exactly (:mod:`videomap.data.seek`); whenever that
cannot be trusted it reads from the first frame, so both paths return the same frames.

All frame tensors are ``uint8 (T, H, W, 3)`` RGB.
"""

from __future__ import annotations

import logging
import os
from collections import OrderedDict
from typing import NamedTuple, Sequence

import numpy as np
import torch

from .seek import SKIPPABLE_CODECS, Feed, PacketIndex, RunChecker, SeekRejected, index_problem, plan_runs, stats

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
    The packet list is kept (per process, a few files) for :func:`decode_frames` to seek with.
    Raises :class:`VideoDecodeError` when the file has no video packet at all.
    """
    return len(_packet_index(path))


# ------------------------------------------------------------------------------------- packet index

# The dataset counts a video's frames and then decodes it in the same process: keeping the last few
# indices saves the second demux pass. Keyed by size and modification time, so a rewritten file is re-read.
_INDEX_CACHE: OrderedDict[tuple, PacketIndex] = OrderedDict()
_INDEX_CACHE_SIZE = 16


def _packet_index(path) -> PacketIndex:
    """The :class:`PacketIndex` of ``path`` (cached), or :class:`VideoDecodeError` without any packet."""
    _av()  # a cached index must not hide a missing PyAV
    try:
        st = os.stat(path)
        cache_key = (os.fspath(path), st.st_size, st.st_mtime_ns)
    except (OSError, TypeError, ValueError):
        cache_key = None  # _open reports a missing file
    if cache_key is not None and cache_key in _INDEX_CACHE:
        _INDEX_CACHE.move_to_end(cache_key)
        return _INDEX_CACHE[cache_key]
    index = _read_packet_index(path)
    if cache_key is not None:
        _INDEX_CACHE[cache_key] = index
        while len(_INDEX_CACHE) > _INDEX_CACHE_SIZE:
            _INDEX_CACHE.popitem(last=False)
    return index


def _read_packet_index(path) -> PacketIndex:
    """Demux every video packet of ``path`` (no decoding) into a :class:`PacketIndex`."""
    av = _av()
    container, stream = _open(path)
    pts: list[int] = []
    key: list[bool] = []
    problem = None
    empty_seen = False
    with container:
        codec = stream.codec_context.name
        reorders = bool(stream.codec_context.has_b_frames)
        try:
            for packet in container.demux(stream):
                if not packet.size:
                    # PyAV ends the stream with empty flush packets; an empty packet before real ones
                    # is a dropped frame (AVI) that the decoder may treat as the end of the stream.
                    empty_seen = True
                    continue
                if empty_seen:
                    problem = problem or "empty packets inside the stream"
                if packet.pts is None:
                    problem = problem or "a packet without a presentation timestamp"
                elif packet.is_corrupt or packet.is_discard:
                    problem = problem or "corrupt or discarded packets"
                pts.append(-1 if packet.pts is None else packet.pts)
                key.append(bool(packet.is_keyframe))
        except (av.error.FFmpegError, OSError) as e:
            if not pts:
                raise VideoDecodeError(path, f"cannot read packets ({_describe(e)})") from None
            log.debug("%s: demux stopped after %d packets: %s", path, len(pts), e)
            problem = problem or f"demuxing stopped early ({_describe(e)})"
    if not pts:
        raise VideoDecodeError(path, "no video frames")
    return PacketIndex(np.asarray(pts, dtype=np.int64), np.asarray(key, dtype=bool), codec, reorders, problem)


# ------------------------------------------------------------------------------------ full read


def _iter_frames(path, stop: int | None, strict: bool):
    """Yield ``(index, av.VideoFrame)`` in decoder output order, up to and including index ``stop``."""
    av = _av()
    container, stream = _open(path)
    with container:
        i = -1
        try:
            for i, frame in enumerate(container.decode(stream)):
                stats.frames_decoded += 1
                yield i, frame
                if stop is not None and i >= stop:
                    return
        except (av.error.FFmpegError, OSError) as e:
            # A damaged tail is common in crawled datasets: keep the frames decoded so far.
            if i < 0 or strict:
                raise VideoDecodeError(path, f"decoding failed after {i + 1} frames ({_describe(e)})") from None
            log.debug("%s: decoding stopped after %d frames: %s", path, i + 1, e)


class _RGBFrames:
    """Decoded frames → ``uint8 (H, W, 3)`` RGB arrays, every one at the first frame's size.

    One reformatter serves a whole video: ``frame.to_ndarray(format="rgb24")`` builds a new scaler context
    for every frame, which on the small clips of the tests and the study costs more than the conversion
    (measured 0.27 against 0.12 ms per 32² frame); the pixels are the same.
    """

    def __init__(self):
        from av.video.reformatter import VideoReformatter

        self._reformatter = VideoReformatter()
        # Reformat every frame to the first frame's size: a mid-stream resolution change would otherwise
        # make the frames impossible to stack.
        self.size: tuple[int, int] | None = None

    def __call__(self, frame) -> np.ndarray:
        width, height = self.size or (None, None)
        array = self._reformatter.reformat(frame, format="rgb24", width=width, height=height).to_ndarray()
        self.size = self.size or (array.shape[1], array.shape[0])
        return array


def decode_video(path, *, max_frames: int | None = None, strict: bool = False) -> torch.Tensor:
    """Decode every frame (or the first ``max_frames``) of ``path``.

    Returns:
        ``uint8 (T, H, W, 3)`` with ``T`` the number of frames actually decoded (≥ 1).

    Raises:
        VideoDecodeError: nothing decodable (with ``strict=True``, also any decoding error).
    """
    frames: list[np.ndarray] = []
    stop = None if max_frames is None else max_frames - 1
    if stop is not None and stop < 0:
        raise ValueError("max_frames must be positive")
    to_rgb = _RGBFrames()
    for _, frame in _iter_frames(path, stop, strict):
        frames.append(to_rgb(frame))
    if not frames:
        raise VideoDecodeError(path, "no video frames")
    return torch.from_numpy(np.stack(frames))


def _decode_frames_sequential(path, idx: np.ndarray, strict: bool) -> torch.Tensor:
    """:func:`decode_frames` by reading from the first frame to the largest index (the definition)."""
    stats.sequential_calls += 1
    wanted = set(idx.tolist())
    stop = int(idx.max())
    kept: dict[int, np.ndarray] = {}
    last_i, last_frame, to_rgb = -1, None, _RGBFrames()
    for i, frame in _iter_frames(path, stop, strict):
        last_i, last_frame = i, frame
        if i in wanted:
            kept[i] = to_rgb(frame)
    if last_i < 0:
        raise VideoDecodeError(path, "no video frames")
    if last_i < stop and last_i not in kept:
        kept[last_i] = to_rgb(last_frame)
    out = np.minimum(idx, last_i)
    return torch.from_numpy(np.stack([kept[int(i)] for i in out]))


# ------------------------------------------------------------------------------------- seeking

_SEEK_ENV = "VIDEOMAP_DECODE_SEEK"
_SEEK_RETRIES = 3  # seeks per run: to the run's key frame, then to up to two earlier ones
_FALLBACK_LOGGED: set[str] = set()


def _seek_enabled(seek: bool | None) -> bool:
    if seek is not None:
        return bool(seek)
    return os.environ.get(_SEEK_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def _fall_back(path, reason: str) -> None:
    stats.fallbacks += 1
    key = os.fspath(path)
    if key not in _FALLBACK_LOGGED and len(_FALLBACK_LOGGED) < 10_000:
        _FALLBACK_LOGGED.add(key)
        log.debug("%s: reading from the first frame instead of seeking: %s", path, reason)


def _decode_frames_seeking(path, idx: np.ndarray) -> torch.Tensor | None:
    """:func:`decode_frames` by seeking; ``None`` when the file's index or decoder cannot be trusted."""
    av = _av()
    try:
        index = _packet_index(path)
    except VideoDecodeError:
        return None  # the full read raises the error that describes the file
    problem = index_problem(index)
    if problem is not None:
        _fall_back(path, problem)
        return None
    n = len(index)
    clamped = np.minimum(idx, n - 1)
    # Clamping like the full read needs proof that the last packet really decodes: the last run reads on
    # to the end of the stream.
    runs = plan_runs(index, np.unique(clamped), to_end=bool(idx.max() >= n - 1))
    try:
        kept = _decode_runs(path, index, runs)
    except SeekRejected as e:
        _fall_back(path, str(e))
        return None
    except (av.error.FFmpegError, OSError) as e:
        # The full read decides what a decoding error means (where the video ends, or strict failure).
        _fall_back(path, f"decoding error while seeking ({_describe(e)})")
        return None
    stats.seek_calls += 1
    frame_pts = index.frame_pts
    return torch.from_numpy(np.stack([kept[int(frame_pts[i])] for i in clamped]))


def _decode_runs(path, index: PacketIndex, runs) -> dict[int, np.ndarray]:
    """Execute the planned runs; returns pts → ``uint8 (H, W, 3)`` for every target."""
    container, stream = _open(path)
    ctx = stream.codec_context
    skippable = index.codec in SKIPPABLE_CODECS
    kept: dict[int, np.ndarray] = {}
    to_rgb = _RGBFrames()  # targets come out in ascending order: the first sets the size, as in the full read
    skip_mode = ctx.skip_frame
    with container:
        for r, run in enumerate(runs):
            check = RunChecker(index, run, skippable=skippable)
            # A fresh container already stands at the first packet.
            packets = _seek_before(container, stream, index, run.start) if r > 0 or run.start > 0 else \
                container.demux(stream)
            try:
                for packet in packets:
                    if not packet.size:  # PyAV's flush packet: the stream has ended
                        frames = ctx.decode(None)
                    else:
                        feed = check.packet(packet.pts)
                        if feed is Feed.BEFORE_START:
                            continue
                        mode = "DEFAULT" if feed is Feed.FULL else "NONREF"
                        if mode != skip_mode:
                            ctx.skip_frame = skip_mode = mode
                        frames = ctx.decode(packet)
                    drain = bool(packet.size) and check.fed_last and not check.done
                    if drain:
                        frames = list(frames) + list(ctx.decode(None))
                    for frame in frames:
                        stats.frames_decoded += 1
                        if check.frame(frame.pts):
                            kept[int(frame.pts)] = to_rgb(frame)
                    if drain:
                        check.drained()
                    if not packet.size:
                        check.end()
                    if check.done:
                        break
            finally:
                packets.close()
            if not check.done:
                raise SeekRejected("the stream ended before the run finished")
    return kept


def _seek_before(container, stream, index: PacketIndex, start: int):
    """Seek so that demuxing resumes at or before packet ``start``; returns the packet iterator.

    Demuxers without an exact index (MPEG-TS) may land a little after the requested time: then the
    seek is retried from earlier key frames.
    """
    keys = index.key_positions
    j = int(np.searchsorted(keys, start))
    for back in range(_SEEK_RETRIES):
        target = int(index.pts[keys[max(j - back, 0)]])
        container.seek(target, stream=stream, backward=True, any_frame=False)
        stats.seeks += 1
        packets = container.demux(stream)
        first = next(packets, None)
        pos = None if first is None or first.pts is None else index.position.get(int(first.pts))
        if pos is not None and pos <= start:
            return _resumed(first, packets)
        packets.close()
        if j - back <= 0:
            break
    raise SeekRejected(f"seeking did not reach the key frame at packet {start}")


def _resumed(first, packets):
    """``first`` then the rest of ``packets``, closing the demuxer generator when closed itself."""
    try:
        yield first
        yield from packets
    finally:
        packets.close()


def decode_frames(path, indices: Sequence[int] | np.ndarray | torch.Tensor, *, strict: bool = False,
                  seek: bool | None = None) -> torch.Tensor:
    """Decode the frames at ``indices`` (any order, repeats allowed).

    Frame ``i`` is the ``i``-th frame the decoder returns reading from the start. Only the requested
    frames are converted to RGB and kept, so long videos cost time, not memory. Indices beyond the last
    frame that actually decodes are clamped to it.

    Far frames are reached by seeking to the key frame before them when the file's packet timestamps
    identify frames exactly; otherwise — and on anything unexpected while seeking — the frames are read
    from the start up to the largest index. Both give the same frames (docs/data.md, "Seeking").

    Args:
        indices: int array of shape ``(K,)`` (or any shape; it is flattened), each ``>= 0``.
        strict: raise on any decoding error instead of ending the video where it breaks; this needs every
            frame up to the largest index, so it always reads from the start.
        seek: ``None`` (default) seeks unless the environment sets ``VIDEOMAP_DECODE_SEEK=0``; ``False``
            always reads from the start; ``True`` seeks whenever the file allows it.

    Returns:
        ``uint8 (K, H, W, 3)``.
    """
    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if idx.size == 0:
        raise ValueError("decode_frames needs at least one index")
    if idx.min() < 0:
        raise ValueError(f"frame indices must be >= 0, got {int(idx.min())}")
    if not strict and _seek_enabled(seek):
        frames = _decode_frames_seeking(path, idx)
        if frames is not None:
            return frames
    return _decode_frames_sequential(path, idx, strict)
