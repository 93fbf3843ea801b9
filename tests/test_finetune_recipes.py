"""The K400, SSv2, Breakfast and COIN fine-tuning recipes: VideoMamba's published protocol values, and a
tiny run of each on a small tree written in that dataset's own annotation format."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from conftest import write_video
from test_finetune import TINY, brightness_frames

from videomap.data import BREAKFAST_CLASSES
from videomap.models import VideoMAP
from videomap.train import load_config
from videomap.train.finetune import run_finetune

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")

RECIPES = Path(__file__).resolve().parents[1] / "configs" / "finetune"

# recipe -> (frames, epochs, lr, min_lr, drop path, global batch, test clips x crops, flip)
PROTOCOLS = {
    "k400": (16, 50, 8e-4, 4e-6, 0.35, 512, (4, 3), None),
    "ssv2": (16, 30, 1.6e-3, 4e-6, 0.35, 512, (2, 3), False),
    "breakfast": (32, 50, 4e-4, 2e-6, 0.4, 256, (4, 3), None),
    "coin": (32, 35, 4e-4, 2e-6, 0.4, 256, (10, 3), None),
}


def clip(path: Path, label: int, seed: int, codec: str = "libx264") -> None:
    write_video(path, frames=brightness_frames(label, np.random.default_rng(seed)), codec=codec)


# ------------------------------------------------------------------------------- trees in dataset formats


def kinetics_tree(root: Path) -> dict:
    """Official CSVs (label,youtube_id,time_start,time_end,split) and label folders."""
    rows = {"train": [("abseiling", "aaa", 0, 10), ("air drumming", "bbb", 5, 15), ("abseiling", "ccc", 1, 11),
                      ("air drumming", "ddd", 2, 12)],
            "val": [("abseiling", "eee", 0, 10), ("air drumming", "fff", 3, 13)]}
    for split, entries in rows.items():
        lines = ["label,youtube_id,time_start,time_end,split"]
        for i, (label, yt, start, end) in enumerate(entries):
            lines.append(f"{label},{yt},{start},{end},{split}")
            clip(root / "videos" / label / f"{yt}_{start:06d}_{end:06d}.mp4", int(label != "abseiling"), i)
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return {"train": root / "train.csv", "val": root / "val.csv", "test": root / "val.csv", "root": root / "videos"}


def ssv2_tree(root: Path) -> dict:
    """SSv2 JSON lists + labels.json; videos named by id."""
    root.mkdir(parents=True, exist_ok=True)
    templates = ["Pushing [something] from left to right", "Pushing [something] from right to left"]
    (root / "labels.json").write_text(json.dumps({t.replace("[", "").replace("]", ""): str(i)
                                                  for i, t in enumerate(templates)}))
    for split, ids in (("train", ["101", "102", "103", "104"]), ("validation", ["201", "202"])):
        entries = []
        for i, vid in enumerate(ids):
            entries.append({"id": vid, "label": "pushing a pen", "template": templates[i % 2], "placeholders": ["a pen"]})
            clip(root / "videos" / f"{vid}.mp4", i % 2, int(vid))
        (root / f"{split}.json").write_text(json.dumps(entries))
    return {"train": root / "train.json", "val": root / "validation.json", "test": root / "validation.json",
            "root": root / "videos"}


def breakfast_tree(root: Path) -> dict:
    """Breakfast split CSVs (file_name,duration,action,class_id); P03-cam01-P03_cereals -> P03/cam01/P03_cereals.avi."""
    splits = {"train": [("P03", "cam01", "cereals"), ("P03", "cam01", "tea"), ("P04", "webcam02", "cereals"),
                        ("P04", "webcam02", "tea")],
              "test": [("P05", "cam01", "cereals"), ("P05", "cam01", "tea")]}
    for split, entries in splits.items():
        lines = ["file_name,duration,action,class_id"]
        for i, (person, cam, dish) in enumerate(entries):
            label = BREAKFAST_CLASSES.index(dish)
            lines.append(f"{person}-{cam}-{person}_{dish},60,{dish},{label}")
            clip(root / "videos" / person / cam / f"{person}_{dish}.avi", int(dish == "tea"), i, codec="mpeg4")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")
    return {"train": root / "train.csv", "val": root / "test.csv", "test": root / "test.csv", "root": root / "videos"}


def coin_tree(root: Path) -> dict:
    """The official COIN.json with training and testing subsets; videos in recipe_type folders."""
    entries = {"v_tr0": (0, "training"), "v_tr1": (2, "training"), "v_tr2": (0, "training"), "v_tr3": (2, "training"),
               "v_te0": (0, "testing"), "v_te1": (2, "testing")}
    names = {0: "ChangeCarTire", 2: "MakeCoffee"}
    db = {}
    for i, (vid, (recipe, subset)) in enumerate(entries.items()):
        db[vid] = {"recipe_type": recipe, "class": names[recipe], "subset": subset, "start": 0, "end": 5,
                   "annotation": []}
        clip(root / "videos" / str(recipe) / f"{vid}.mp4", int(recipe == 2), i)
    (root / "COIN.json").write_text(json.dumps({"database": db}))
    return {"train": root / "COIN.json", "val": root / "COIN.json", "test": root / "COIN.json", "root": root / "videos"}


TREES = {"k400": kinetics_tree, "ssv2": ssv2_tree, "breakfast": breakfast_tree, "coin": coin_tree}


# ------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_recipe_follows_the_published_protocol(name):
    cfg = load_config(RECIPES / f"{name}_videomap_small.yaml")
    frames, epochs, lr, min_lr, drop_path, batch, views, flip = PROTOCOLS[name]
    assert cfg.model.name == "videomap_small"
    assert (cfg.data.num_frames, cfg.data.img_size, cfg.train.epochs) == (frames, 224, epochs)
    assert (cfg.optim.lr, cfg.optim.min_lr, cfg.model.drop_path_rate) == pytest.approx((lr, min_lr, drop_path))
    assert (cfg.optim.layer_decay, cfg.optim.weight_decay, cfg.optim.warmup_epochs) == (0.75, 0.05, 5.0)
    assert cfg.optim.betas == (0.9, 0.999) and cfg.train.batch_size == batch
    assert (cfg.data.test_clips, cfg.data.test_crops) == views and cfg.finetune.flip == flip
    ft = cfg.finetune
    assert (ft.mixup, ft.cutmix, ft.label_smoothing, ft.reprob, ft.repeated_aug) == (0.8, 1.0, 0.1, 0.25, 2)
    assert ft.rand_aug == "rand-m7-n4-mstd0.5-inc1" and cfg.data.sampling == "segment"
    assert cfg.data.format == {"k400": "kinetics_csv"}.get(name, name)


@pytest.mark.parametrize("name", sorted(PROTOCOLS))
def test_recipe_runs_tiny_on_a_tree_in_its_format(name, tmp_path):
    paths = TREES[name](tmp_path / "data")
    out = tmp_path / "run"
    cfg = load_config(RECIPES / f"{name}_videomap_small.yaml", TINY + [
        *(f"data.{k}={v}" for k, v in paths.items()), f"train.output_dir={out}", "train.max_steps=2",
        "train.batch_size=2", "train.precision=fp32", "train.eval_every=1"])
    summary = run_finetune(cfg)
    assert summary["steps"] == 2 and summary["num_failed"] == 0
    clips, crops = PROTOCOLS[name][6]
    test = summary["test"]
    assert (test["test_clips"], test["test_crops"]) == (clips, crops)       # multi-view test from the recipe
    assert test["num_videos"] == 2 and test["num_failed"] == 0 and test["top1"] is not None
    best = VideoMAP.from_pretrained(out / "best")
    classes = json.loads((out / "best" / "classes.json").read_text())
    assert best.num_classes == len(classes)
    expected = {"k400": ["abseiling", "air drumming"], "breakfast": list(BREAKFAST_CLASSES),
                "ssv2": ["Pushing something from left to right", "Pushing something from right to left"],
                "coin": ["ChangeCarTire", "1", "MakeCoffee"]}[name]
    assert classes == expected
    assert load_config(out / "config.yaml").finetune.flip == (name != "ssv2")   # SSv2 is never flipped
