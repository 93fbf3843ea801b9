"""The allocator tuning reaches plain scripts: applied by the first CPU forward, never on import, and not at
all with VIDEOMAP_MALLOC_TUNING=0."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SNIPPET = r"""
import json, torch, videomap
from videomap.ops.allocator import cpu_allocator_tuned
after_import = cpu_allocator_tuned()
model = videomap.create_model("videomap_tiny", num_classes=0, num_frames=2, img_size=32, embed_dim=32,
                              schedule="MA", num_heads=2)
with torch.no_grad():
    model(torch.randn(1, 3, 2, 32, 32))
print(json.dumps({"after_import": after_import, "after_forward": cpu_allocator_tuned()}))
"""


def _run(env_value: str | None) -> dict:
    env = dict(os.environ)
    env.pop("VIDEOMAP_MALLOC_TUNING", None)
    if env_value is not None:
        env["VIDEOMAP_MALLOC_TUNING"] = env_value
    done = subprocess.run([sys.executable, "-c", SNIPPET], env=env, capture_output=True, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tuning is glibc's mallopt")
def test_a_script_gets_the_tuning_from_its_first_cpu_forward():
    state = _run(None)
    assert state == {"after_import": False, "after_forward": True}


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the tuning is glibc's mallopt")
def test_the_tuning_can_be_turned_off():
    assert _run("0") == {"after_import": False, "after_forward": False}


def test_entry_benchmark_runs_each_entry():
    from videomap.apps.bench.entry import run_entry

    script = run_entry("script", "videomap_tiny", frames=2, img_size=32, repeats=1)
    untuned = run_entry("untuned", "videomap_tiny", frames=2, img_size=32, repeats=1)
    assert script["median_ms"] > 0 and untuned["tuned"] is False
    assert script["tuned"] is sys.platform.startswith("linux")
    with pytest.raises(ValueError, match="unknown entry"):
        run_entry("daemon", "videomap_tiny", 2, 32, 1)
