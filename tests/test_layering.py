"""Dependencies flow one way (DESIGN §7): ``ops ← layers ← models ← pretrain, encoders ← train``, with
``data`` beside them, and no library package loads the applications (the command line, the demo, the
study, the benchmarks) or plotting.

Each package is imported in a fresh interpreter, and the test reads what that import put in
``sys.modules``; importing a module in this process would see whatever earlier tests loaded.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"

# What each library package may load of the others (itself included).
ALLOWED = {
    "ops": {"ops"},
    "layers": {"ops", "layers"},
    "models": {"ops", "layers", "models"},
    "pretrain": {"ops", "layers", "models", "pretrain"},
    "encoders": {"ops", "layers", "models", "encoders"},
    "data": {"data"},
    "train": {"ops", "layers", "models", "pretrain", "encoders", "data", "train"},
}

# Application modules: argument parsing, progress printing and plots for the commands. A library import
# never needs them.
APPLICATIONS = ("videomap.apps",)
HEAVY_OPTIONALS = ("matplotlib", "transformers", "huggingface_hub", "av")

PROBE = textwrap.dedent("""
    import importlib, json, sys
    importlib.import_module(sys.argv[1])
    print(json.dumps(sorted(sys.modules)))
""")


def modules_loaded_by(module: str, *, prelude: str = "") -> set[str]:
    """The names in ``sys.modules`` after a fresh interpreter imports ``module`` (after running ``prelude``)."""
    code = prelude + PROBE
    done = subprocess.run([sys.executable, "-c", code, module], capture_output=True, text=True, timeout=300,
                          env={**os.environ, "PYTHONPATH": str(SRC)})
    assert done.returncode == 0, done.stderr[-3000:]
    return set(json.loads(done.stdout.strip().splitlines()[-1]))


def videomap_packages(names: set[str]) -> set[str]:
    return {n.split(".")[1] for n in names if n.startswith("videomap.")}


def layering_violations(package: str, names: set[str]) -> list[str]:
    """What importing ``package`` loaded that DESIGN §7 forbids it, as readable lines."""
    problems = [f"videomap.{p} (above {package})" for p in sorted(videomap_packages(names) - ALLOWED[package])]
    problems += [n for n in sorted(names) if n.startswith(APPLICATIONS)]
    problems += [n for n in HEAVY_OPTIONALS if n in names]
    return problems


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_library_package_loads_nothing_above_it(package):
    names = modules_loaded_by(f"videomap.{package}")
    assert f"videomap.{package}" in names
    assert layering_violations(package, names) == []


def test_import_videomap_loads_only_the_core_until_a_name_is_used():
    names = modules_loaded_by("videomap")
    assert videomap_packages(names) == set()
    used = modules_loaded_by("videomap", prelude="import videomap; videomap.create_model\n")
    assert {"models", "layers", "ops"} <= videomap_packages(used) <= ALLOWED["models"]


def test_the_check_catches_a_forbidden_import(tmp_path):
    """The same check, run on a copy of the package where ``videomap.ops`` imports the models package,
    must report it: a layering test that cannot fail would prove nothing."""
    copy = tmp_path / "src"
    shutil.copytree(SRC / "videomap", copy / "videomap", ignore=shutil.ignore_patterns("__pycache__"))
    init = copy / "videomap" / "ops" / "__init__.py"
    init.write_text(init.read_text() + "\nfrom .. import models as _breaks_the_layering  # noqa\n")
    done = subprocess.run([sys.executable, "-c", PROBE, "videomap.ops"], capture_output=True, text=True,
                          timeout=300, env={**os.environ, "PYTHONPATH": str(copy)})
    assert done.returncode == 0, done.stderr[-3000:]
    names = set(json.loads(done.stdout.strip().splitlines()[-1]))
    assert "videomap.models (above ops)" in layering_violations("ops", names)
