"""`videomap predict`: top-k per video from files and folders, multi-view scores equal to a direct forward,
broken files reported without stopping the rest, outputs and command-line errors."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import write_video
from test_finetune import CLASSES, brightness_frames, save_tiny_model

from videomap.apps.commands import _split_predict_args, predict_main
from videomap.train.prediction import find_videos, top_k

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write fixture videos")


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """``one.mp4``; ``folder/`` with two clips in a subfolder, a zero-byte ``.mp4`` and a text file."""
    root = tmp_path_factory.mktemp("predict")
    rng = np.random.default_rng(0)
    write_video(root / "one.mp4", frames=brightness_frames(1, rng))
    write_video(root / "folder" / "sub" / "a.mp4", frames=brightness_frames(0, rng))
    write_video(root / "folder" / "b.mkv", frames=brightness_frames(1, rng))
    (root / "folder" / "broken.mp4").write_bytes(b"")
    (root / "folder" / "notes.txt").write_text("not a video\n")
    return root


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_tiny_model(tmp_path_factory.mktemp("model") / "best", num_classes=2)


def _direct_probs(model_dir: Path, path: Path) -> torch.Tensor:
    """The model's softmax on the one test view of ``path``, assembled here by hand: the 4 segment centres
    of the 8 decoded frames (1, 3, 5, 7), scaled to [0, 1] and normalised with ImageNet's statistics (the
    32² clip needs no resize or crop)."""
    from videomap.data import decode_video
    from videomap.models import VideoMAP

    model = VideoMAP.from_pretrained(model_dir).eval()
    frames = decode_video(str(path))
    assert frames.shape[0] == 8
    clip = frames[[1, 3, 5, 7]].permute(3, 0, 1, 2).float() / 255  # (C, T, H, W)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1, 1)
    with torch.no_grad():
        return model(((clip - mean) / std)[None]).softmax(-1)[0]


def test_files_and_folders_are_predicted_in_order_and_broken_ones_reported(videos, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = predict_main([str(videos / "one.mp4"), str(videos / "folder"), f"model.checkpoint={model_dir}",
                         "--topk", "2", "train.device=cpu", "data.num_workers=0", f"eval.output_dir={out}"])
    assert code == 0
    rows = json.loads((out / "predictions.json").read_text())
    expected_order = [videos / "one.mp4", videos / "folder" / "b.mkv", videos / "folder" / "broken.mp4",
                      videos / "folder" / "sub" / "a.mp4"]
    assert [r["path"] for r in rows] == [str(p) for p in expected_order]  # the text file is not a video
    broken = rows[2]
    assert set(broken) == {"path", "error"} and broken["error"]
    for row in (rows[0], rows[1], rows[3]):
        probs = [p["prob"] for p in row["topk"]]
        assert [p["class"] for p in row["topk"]] in (list(CLASSES), list(CLASSES[::-1]))
        assert probs == sorted(probs, reverse=True) and abs(sum(probs) - 1.0) < 1e-5
    table = capsys.readouterr().out
    assert "error:" in table and "3 of 4 videos predicted" in table
    with open(out / "predictions.csv") as f:
        assert [r["path"] for r in csv.DictReader(f)] == [rows[0]["path"], rows[1]["path"], rows[3]["path"]]


def test_probabilities_equal_a_direct_forward(videos, model_dir, tmp_path):
    out = tmp_path / "out"
    assert predict_main([str(videos / "one.mp4"), f"model.checkpoint={model_dir}", "train.device=cpu",
                         "data.num_workers=0", f"eval.output_dir={out}"]) == 0
    (row,) = json.loads((out / "predictions.json").read_text())
    got = {p["class"]: p["prob"] for p in row["topk"]}
    direct = _direct_probs(model_dir, videos / "one.mp4")
    for index, name in enumerate(CLASSES):
        assert got[name] == pytest.approx(direct[index].item(), abs=1e-5)


def test_all_broken_videos_exit_nonzero_and_are_all_listed(videos, model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    code = predict_main([str(videos / "folder" / "broken.mp4"), str(videos / "folder" / "notes.txt"),
                         f"model.checkpoint={model_dir}", "train.device=cpu", f"eval.output_dir={out}"])
    assert code == 1
    rows = json.loads((out / "predictions.json").read_text())
    assert [("error" in r) for r in rows] == [True, True]


def test_command_line_errors(videos, model_dir, tmp_path, capsys):
    assert predict_main([f"model.checkpoint={model_dir}"]) == 2
    assert "name at least one video" in capsys.readouterr().err
    assert predict_main([str(videos / "one.mp4"), f"model.checkpoint={model_dir}", "--topk", "zero"]) == 2
    missing = tmp_path / "nowhere.mp4"
    assert predict_main([str(missing), f"model.checkpoint={model_dir}", "train.device=cpu"]) == 1
    assert str(missing) in capsys.readouterr().err
    assert predict_main(["--help"]) == 0 and "VIDEO_OR_FOLDER" in capsys.readouterr().out


def test_argument_split_and_helpers(videos):
    videos_, rest, k = _split_predict_args(["a.mp4", "model.checkpoint=m", "-k", "3", "--config", "r.yaml", "dir"])
    assert videos_ == ["a.mp4", "dir"] and rest == ["model.checkpoint=m", "--config", "r.yaml"] and k == 3
    assert _split_predict_args(["--topk=0"])[2] is None
    with pytest.raises(FileNotFoundError, match="no video"):
        find_videos([])
    ranked = top_k(torch.tensor([[0.1, 0.7, 0.2]]), ["x", "y", "z"], 5)
    assert [p["class"] for p in ranked[0]] == ["y", "z", "x"] and ranked[0][0]["index"] == 1
