"""`videomap eval` and `videomap extract`: multi-view averaging, results.json with a corrupt video excluded
from the denominator, reports, feature shards and their index, and the command lines."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch
from torch import nn

from test_finetune import CLASSES, save_tiny_model, write_brightness_split

from videomap.data import read_annotations
from videomap.train import load_config
from videomap.apps.commands import eval_main, extract_main, finetune_main
from videomap.train.evaluate import average_views, build_test_dataset, predict, run_eval

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")


@pytest.fixture(scope="module")
def test_tree(tmp_path_factory) -> Path:
    """3 dark + 2 bright clips and one zero-byte 'dark' clip, listed in test.txt."""
    root = tmp_path_factory.mktemp("evaltree")
    write_brightness_split(root, "test", [0, 1, 0, 1, 0], seed=3, corrupt=1)
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("model") / "best")


# ------------------------------------------------------------------------------------- view averaging


def test_average_views_is_the_mean_of_per_view_softmax():
    logits = torch.tensor([[4.0, 0.0], [0.0, 1.0], [2.0, 2.0], [-3.0, 3.0]])  # 2 videos x 2 views
    probs = average_views(logits, 2)
    expected = torch.stack([logits[:2].softmax(-1).mean(0), logits[2:].softmax(-1).mean(0)])
    torch.testing.assert_close(probs, expected)
    assert not torch.allclose(probs[0], logits[:2].mean(0).softmax(-1))   # not the softmax of mean logits


class ViewsDataset(torch.utils.data.Dataset):
    """Videos whose V views are constant clips of known values; ``num_views`` like the real dataset."""

    def __init__(self, values, labels):
        self.values, self.labels, self.classes = torch.tensor(values), labels, ["a", "b", "c"]
        self.num_views = self.values.shape[1]

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        video = self.values[i].view(-1, 1, 1, 1, 1).expand(-1, 3, 2, 4, 4).clone()   # (V, C, T, H, W)
        return {"video": video, "label": self.labels[i], "index": i, "path": f"v{i}.mp4"}


class KnownLogits(nn.Module):
    """Logits ``[x, 2x, -x]`` for a clip of constant value ``x``."""

    def forward(self, x):
        v = x.mean(dim=(1, 2, 3, 4))
        return torch.stack([v, 2 * v, -v], dim=1)


def test_predict_averages_the_softmax_over_views_of_each_video():
    values = [[1.0, -2.0, 0.5, 3.0, 0.0, -1.0], [2.0, 2.0, 2.0, 2.0, 2.0, 2.0], [-1.0, 0.0, -3.0, 0.0, 0.0, 0.0]]
    data = ViewsDataset(values, [1, 1, 2])
    for clips_per_forward in (1, 4, 6, 18):     # chunking must not change the result
        preds = predict(KnownLogits(), data, clips_per_forward=clips_per_forward)
        for i, vals in enumerate(values):
            x = torch.tensor(vals)
            expected = torch.stack([x, 2 * x, -x], dim=1).softmax(-1).mean(0)
            torch.testing.assert_close(preds.probs[i], expected)
        assert preds.index.tolist() == [0, 1, 2] and preds.label.tolist() == [1, 1, 2]
    assert preds.probs.argmax(1).tolist() == [1, 1, 2]


def test_real_dataset_views_are_grouped_per_video(test_tree):
    """The test dataset's views (clip-major) reach the model adjacent, so averaging groups them right."""
    cfg = load_config(None, ["data.num_frames=4", "data.img_size=32"])
    ann = read_annotations(test_tree / "test.txt", classes=test_tree / "classes.txt")
    data = build_test_dataset(cfg, ann, clips=2, crops=3)
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(x.clone())
            return torch.zeros(x.shape[0], 2)

    preds = predict(Recorder(), data, clips_per_forward=6)
    assert preds.label.numel() == 5 and preds.failures.num_videos == 1
    clips = torch.cat(seen)
    assert clips.shape == (5 * 6, 3, 4, 32, 32)
    for i in range(5):
        torch.testing.assert_close(clips[6 * i:6 * i + 6], data[i]["video"])


# ------------------------------------------------------------------------------------------------ eval


class AlwaysBright(nn.Module):
    """Predicts class 1 for every clip."""

    num_classes = 2

    def forward(self, x):
        return torch.tensor([[0.0, 5.0]]).expand(x.shape[0], 2)


def test_results_exclude_the_corrupt_video_from_the_denominator(test_tree, model_dir, tmp_path):
    cfg = load_config(None, [f"model.checkpoint={model_dir}", f"data.test={test_tree / 'test.txt'}",
                             "data.num_frames=4", "data.img_size=32", "data.num_workers=0", "train.device=cpu",
                             f"eval.output_dir={tmp_path}", "data.test_clips=2", "data.test_crops=3"])
    results = run_eval(cfg, model=AlwaysBright())
    # 2 bright of the 5 that decode; counting the broken video would give 2 / 6.
    assert results["top1"] == pytest.approx(40.0) and results["top5"] == pytest.approx(100.0)
    assert results["mean_class_accuracy"] == pytest.approx(50.0)
    assert results["num_videos"] == 5 and results["num_listed"] == 6 and results["num_failed"] == 1
    broken = str(test_tree / "test" / "broken_0.mp4")
    assert [f["path"] for f in results["failed_videos"]] == [broken]
    assert results["failed_videos"][0]["reason"]
    assert "1 of 6" in results["note"] and (results["test_clips"], results["test_crops"]) == (2, 3)
    assert json.loads((tmp_path / "results.json").read_text()) == results

    rows = list(csv.DictReader(open(tmp_path / "per_class_accuracy.csv")))
    assert [(r["class_name"], r["videos"], r["correct"]) for r in rows] == [("dark", "3", "0"), ("bright", "2", "2")]
    assert float(rows[1]["accuracy"]) == 100.0
    assert (tmp_path / "confusion_matrix.png").stat().st_size > 0
    confusion = list(csv.reader(open(tmp_path / "confusion_matrix.csv")))
    assert confusion[1] == ["dark", "0", "3"] and confusion[2] == ["bright", "0", "2"]
    assert len(list(csv.DictReader(open(tmp_path / "predictions.csv")))) == 5


def test_eval_command_without_a_recipe(test_tree, model_dir, tmp_path, capsys):
    out = tmp_path / "ev"
    code = eval_main([f"model.checkpoint={model_dir}", f"data.test={test_tree / 'test.txt'}", "data.num_workers=0",
                      "train.device=cpu", f"eval.output_dir={out}"])
    assert code == 0
    results = json.loads((out / "results.json").read_text())
    assert set(results) >= {"top1", "top5", "mean_class_accuracy", "num_videos", "failed_videos"}
    assert results["num_videos"] == 5 and results["num_failed"] == 1
    saved = load_config(out / "config.yaml")   # the resolved config, sizes taken from the model folder
    assert (saved.data.num_frames, saved.data.img_size) == (4, 32)
    assert (saved.data.test_clips, saved.data.test_crops) == (1, 1)


def test_eval_refuses_a_model_without_a_head(test_tree, tmp_path, capsys):
    encoder = save_tiny_model(tmp_path / "encoder", num_classes=0, classes=None)
    code = eval_main([f"model.checkpoint={encoder}", f"data.test={test_tree / 'test.txt'}", "train.device=cpu",
                      f"eval.output_dir={tmp_path / 'x'}"])
    assert code == 1 and "no classifier head" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------- extract


@pytest.mark.parametrize("pool", ["cls", "avg", "frame"])
def test_extract_writes_shards_and_an_index(test_tree, model_dir, tmp_path, pool):
    from safetensors.torch import load_file

    from videomap.models import VideoMAP

    out = tmp_path / "features"
    code = extract_main([f"model.checkpoint={model_dir}", f"data.test={test_tree / 'test.txt'}", "data.num_workers=0",
                         "train.device=cpu", f"eval.output_dir={out}", f"eval.pool={pool}", "eval.layer=-1"])
    assert code == 0
    rows = list(csv.DictReader(open(out / "index.csv")))
    assert list(rows[0]) == ["path", "label", "shard", "key"] and len(rows) == 5
    meta = json.loads((out / "features.json").read_text())
    assert meta["num_failed"] == 1 and meta["failed_videos"][0]["path"].endswith("broken_0.mp4")
    assert meta["shape"] == ([4, 32] if pool == "frame" else [32]) and meta["classes"] == list(CLASSES)

    shard = load_file(str(out / rows[0]["shard"]))
    assert set(shard) == {r["key"] for r in rows}
    model = VideoMAP.from_pretrained(model_dir).eval()
    cfg = load_config(None, ["data.num_frames=4", "data.img_size=32"])
    data = build_test_dataset(cfg, read_annotations(test_tree / "test.txt", classes=list(CLASSES)))
    for row in rows[:2]:
        item = data[int(row["key"])]
        assert item["path"] == row["path"] and int(row["label"]) == item["label"]
        with torch.no_grad():
            tokens = model.forward_features(item["video"])           # (1, 1 + T'N, D), after the final norm
        expected = {"cls": tokens[0, 0], "avg": tokens[0, 1:].mean(0),
                    "frame": tokens[0, 1:].view(4, 4, 32).mean(1)}[pool]
        torch.testing.assert_close(shard[row["key"]], expected, atol=1e-5, rtol=1e-4)


def test_extract_an_earlier_layer(test_tree, model_dir, tmp_path):
    from safetensors.torch import load_file

    from videomap.models import VideoMAP

    out = tmp_path / "f"
    assert extract_main([f"model.checkpoint={model_dir}", f"data.test={test_tree / 'test.txt'}", "data.num_workers=0",
                         "train.device=cpu", f"eval.output_dir={out}", "eval.layer=0", "eval.pool=cls"]) == 0
    row = next(csv.DictReader(open(out / "index.csv")))
    model = VideoMAP.from_pretrained(model_dir).eval()
    cfg = load_config(None, ["data.num_frames=4", "data.img_size=32"])
    video = build_test_dataset(cfg, read_annotations(test_tree / "test.txt"))[int(row["key"])]["video"]
    with torch.no_grad():
        x = model.layers[0](model.prepare_tokens(video).float())
        expected = model.norm_f(x)[0, 0]
    torch.testing.assert_close(load_file(str(out / row["shard"]))[row["key"]], expected, atol=1e-5, rtol=1e-4)


# ------------------------------------------------------------------------------------------ command line


@pytest.mark.parametrize("main, keys", [
    (finetune_main, ["optim.layer_decay", "finetune.label_fraction", "finetune.ema", "data.classes",
                     "model.checkpoint", "train.output_dir"]),
    (eval_main, ["model.checkpoint", "data.test", "data.test_clips", "eval.output_dir"]),
    (extract_main, ["eval.pool", "eval.layer", "data.test"]),
])
def test_help_lists_the_config_keys(main, keys, capsys):
    assert main(["--help"]) == 0
    text = capsys.readouterr().out
    assert text.startswith("usage: videomap ")
    for key in keys:
        assert f"    {key} (" in text, key
    assert "Layer-wise lr decay" in text or main is not finetune_main   # field comments are shown


def test_bad_command_lines_exit_with_2(capsys):
    assert finetune_main(["optim.lrr=1"]) == 2
    assert "Did you mean 'lr'" in capsys.readouterr().err
    assert eval_main(["--config", "/no/such/recipe.yaml"]) == 2
    assert eval_main(["--bogus"]) == 2
    assert finetune_main(["train.output_dir=/tmp/x"]) == 1          # no data.train: a clear error, no traceback
    assert "data.train is not set" in capsys.readouterr().err
