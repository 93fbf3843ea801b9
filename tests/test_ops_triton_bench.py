"""``videomap bench gpu --dry-run``: the GPU check runs end to end on a CPU with tiny shapes."""

import json
import os
import subprocess
import sys


def test_gpu_check_dry_run_writes_its_table(tmp_path):
    cmd = [sys.executable, "-m", "videomap", "bench", "gpu", "--dry-run", "--out", str(tmp_path),
           "--models", "videovit_small", "videomap_small", "--budget", "300"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    env.pop("TRITON_INTERPRET", None)  # the command sets it itself for the dry run
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "| stage | item | metric | value | note |" in done.stdout
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["dry_run"] is True
    stages = {row["stage"] for row in report["rows"]}
    assert stages == {"parity", "scan speed", "models", "memory", "fit", "training"}
    fused = {row["item"].rsplit("fused=", 1)[-1] for row in report["rows"] if "fused=" in row["item"]}
    assert fused == {"xz", "input", "0"}
    assert not [row for row in report["rows"] if row["metric"] == "error"], report["rows"]
    assert all(row["note"].startswith("ok") or "ok" in row["note"]
               for row in report["rows"] if row["stage"] == "parity" and "err" in row["metric"])
    assert all(row["value"] is True for row in report["rows"] if row["stage"] == "training")
    assert (tmp_path / "gpu_check.md").read_text().count("\n|") >= len(report["rows"])
