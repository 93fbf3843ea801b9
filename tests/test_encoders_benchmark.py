"""The encoder benchmark runs end to end at tiny settings, stops at the memory budget and names the largest
frame count that fits."""

import json

import pytest

from videomap.apps.bench import encoder as bench

pytest.importorskip("transformers", reason="the encoder + LLM mode needs transformers")

TINY = dict(img_size=32, repeats=1, warmup=0, llm="tiny", baseline="videovit_tiny", isolate=False, log=None)


def test_encoder_benchmark_in_process(tmp_path):
    report = bench.run_encoder_benchmark(models=["videomap_tiny", "videovit_tiny"], frames=[2],
                                         memory_budget_gib=64, chunk_frames=1, out_dir=tmp_path, plot=True, **TINY)
    rows = report["results"]
    assert not any("error" in r for r in rows)
    # 2 models x 2 modes, plus a chunked encoder row for each model.
    assert len(rows) == 6
    for row in rows:
        assert row["median_ms"] > 0 and row["visual_tokens"] == row["frames"] * 4
        assert row["total_mib"] >= row["params_mib"] > 0
        if row["mode"] == "encoder_llm":
            assert row["llm_tokens"] > row["visual_tokens"] // 4  # pooled by 2 in space, plus the prompt
    assert all(v == 2 for v in report["largest"].values())
    assert "videomap_tiny (chunks of 1) / encoder" in report["largest"]
    assert all(r["time_ratio"] == pytest.approx(1.0) for r in rows
               if r["model"] == "videovit_tiny" and not r["chunk_frames"])
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["settings"]["memory_budget_gib"] == 64
    assert "largest frame count within 64 GiB" in (tmp_path / "table.md").read_text()
    assert (tmp_path / "encoder_vs_frames.png").stat().st_size > 0


def test_sweep_stops_at_the_memory_budget():
    report = bench.run_encoder_benchmark(models=["videovit_tiny"], frames=[1, 2], modes=["encoder"],
                                         memory_budget_gib=1e-6, plot=False, **TINY)
    assert len(report["results"]) == 1 and not report["results"][0]["fits"]
    assert report["largest"] == {"videovit_tiny / encoder": None}
    assert "| videovit_tiny / encoder | none |" in report["table"]


def test_isolated_worker_and_command_line(tmp_path, capsys):
    code = bench.main(["--models", "videovit_tiny", "--frames", "1", "--modes", "encoder", "--img-size", "32",
                       "--repeats", "1", "--warmup", "0", "--baseline", "", "--device", "cpu", "--out",
                       str(tmp_path), "--no-plot"])
    assert code == 0
    rows = json.loads((tmp_path / "results.json").read_text())["results"]
    assert len(rows) == 1 and "error" not in rows[0] and rows[0]["fits"]
    assert bench.main(["--frames", "4", "2"]) == 2
    failed = [{"model": "videomap_small", "frames": 64, "mode": "encoder", "chunk_frames": None,
               "error": "timed out after 900 s"}]
    assert "error: timed out" in bench.format_table(failed, {"videomap_small / encoder": 32}, 16)
