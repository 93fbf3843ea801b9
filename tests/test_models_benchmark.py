"""The backbone benchmark runs end to end at a tiny size and reports ratios to its baseline."""

import json
from pathlib import Path

import pytest

from videomap.apps.bench import backbone as bench


def test_backbone_benchmark_in_process(tmp_path):
    report = bench.run_backbone_benchmark(
        models=["videomap_tiny", "videovit_tiny"], frames=[1], img_size=32, repeats=1, warmup=0,
        baseline="videovit_tiny", isolate=False, out_dir=tmp_path, plot=False, log=None,
    )
    rows = report["results"]
    assert len(rows) == 2 and not any("error" in r for r in rows)
    for row in rows:
        assert row["forward"]["median_ms"] > 0 and row["forward_backward"]["median_ms"] > 0
        assert row["tokens"] == 1 + row["frames"] * 4
    baseline_rows = [r for r in rows if r["model"] == "videovit_tiny"]
    assert all(r["forward_time_ratio"] == pytest.approx(1.0) for r in baseline_rows)
    assert "forward time ÷ videovit_tiny" in report["table"]
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"]["img_size"] == 32 and (tmp_path / "table.md").exists()


def test_backbone_benchmark_records_failures():
    rows = [{"model": "videomap_small", "frames": 64, "error": "timed out after 600 s"}]
    assert "error: timed out" in bench.format_table(rows, baseline="videovit_small")


def test_frames_within_budget_solves_the_fitted_line():
    # peak = 100 + 50 * frames MiB: 1000 MiB is reached at 18 frames.
    rows = [{"model": "m", "frames": f, "forward_backward": {"peak_mib": 100 + 50 * f}} for f in (2, 4, 8)]
    rows.append({"model": "single", "frames": 4, "forward_backward": {"peak_mib": 10}})
    assert bench.frames_within_budget(rows, 1000) == {"m": 18}


def test_backbone_benchmark_records_the_training_path(tmp_path):
    report = bench.run_backbone_benchmark(
        models=["videomap_tiny"], frames=[1, 2], modes=["forward_backward"], img_size=32, repeats=1, warmup=0,
        baseline=None, isolate=False, fused_mamba="input", grad_checkpointing=True, plot=False, log=None,
    )
    rows = report["results"]
    assert not any("error" in r for r in rows)
    assert {r["fused_mamba"] for r in rows} == {"input"} and all(r["grad_checkpointing"] for r in rows)
    assert report["settings"]["fused_mamba"] == "input"
