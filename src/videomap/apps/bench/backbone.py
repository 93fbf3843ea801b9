"""Backbone benchmark: forward and forward+backward time and peak memory of whole models against the number
of frames, with ratios to an all-attention baseline measured in the same run.

    python benchmarks/backbone.py --frames 8 16 32 64 --out runs/bench_backbone

Each (model, frames) configuration runs in its own subprocess, so one model's allocations never inflate the
next one's peak and a configuration that runs out of memory or time is recorded and skipped.
"""

from __future__ import annotations

import argparse
import os
import sys

from videomap.apps.bench.common import (add_sweep_arguments, frames_axis, pyplot_or_none, run_isolated, save_figure,
                                         sweep_preamble, write_report)

DEFAULT_MODELS = ("videomap_small", "videomamba_small", "videovit_small")
DEFAULT_FRAMES = (8, 16, 32, 64)
MODES = ("forward", "forward_backward")
MODE_TITLES = {"forward": "forward", "forward_backward": "forward+backward"}


# ---------------------------------------------------------------------------------------------- one configuration


def measure_configuration(
    model: str,
    frames: int,
    modes=MODES,
    img_size: int = 224,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    amp: bool = False,
    max_seconds: float | None = None,
    grad_checkpointing: bool = False,
) -> dict:
    """Time and peak memory of one model at one number of frames, in this process.

    Returns ``{"model", "frames", "tokens", "params", "scan_backend", "fused_mamba", "<mode>": {"median_ms",
    "peak_mib", "repeats"}}``. ``forward`` runs in eval mode without autograd; ``forward_backward`` runs a
    training step's forward and backward (no optimizer), with every layer checkpointed when
    ``grad_checkpointing``. ``fused_mamba`` is the Mamba layer's training path (``$VIDEOMAP_FUSED_MAMBA``:
    ``xz``, ``input`` or ``off``).
    """
    import torch

    from videomap.apps.bench.common import measure
    from videomap.layers.bimamba import fused_mamba_mode
    from videomap.models import create_model
    from videomap.ops import resolve_backend

    dev = torch.device(device)
    torch.manual_seed(0)
    net = create_model(model, num_frames=frames, img_size=img_size, num_classes=400).to(dev)
    net.set_grad_checkpointing(grad_checkpointing)
    x = torch.randn(batch_size, 3, frames, img_size, img_size, device=dev)
    grid = net.grid_size(x)
    row = {
        "model": model,
        "frames": frames,
        "tokens": 1 + grid[0] * grid[1] * grid[2],
        "params": sum(p.numel() for p in net.parameters()),
        "scan_backend": resolve_backend(dev, torch.float32) if "M" in net.schedule else "-",
        "fused_mamba": (fused_mamba_mode() or "off") if "M" in net.schedule else "-",
        "grad_checkpointing": bool(grad_checkpointing),
    }

    def autocast():
        return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp)

    def forward():
        with torch.no_grad(), autocast():
            net(x)

    def forward_backward():
        net.zero_grad(set_to_none=True)
        with autocast():
            loss = net(x).float().sum()
        loss.backward()

    steps = {"forward": (forward, net.eval), "forward_backward": (forward_backward, net.train)}
    for mode in modes:
        fn, set_mode = steps[mode]
        set_mode()
        result = measure(fn, dev, repeats=repeats, warmup=warmup, max_seconds=max_seconds)
        row[mode] = {"median_ms": result.median_ms, "peak_mib": result.peak_mib, "repeats": result.repeats}
    return row


# ---------------------------------------------------------------------------------------------- the sweep


def run_backbone_benchmark(
    models=DEFAULT_MODELS,
    frames=DEFAULT_FRAMES,
    modes=MODES,
    img_size: int = 224,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    amp: bool = False,
    baseline: str | None = "videovit_small",
    threads: int | None = None,
    scan_backend: str | None = None,
    fused_mamba: str | None = None,
    grad_checkpointing: bool = False,
    memory_budget_gib: float | None = 16.0,
    isolate: bool = True,
    timeout_s: float | None = None,
    max_seconds: float | None = None,
    out_dir: str | os.PathLike | None = None,
    plot: bool = True,
    log=print,
) -> dict:
    """Measure every model at every number of frames.

    Args:
        models, frames, modes: what to sweep (modes among ``"forward"``, ``"forward_backward"``).
        img_size, batch_size: input ``(batch_size, 3, frames, img_size, img_size)``.
        repeats, warmup: timed and untimed runs per measurement (the median is reported).
        device: ``"cpu"`` or ``"cuda"``. amp: run under bf16 autocast.
        baseline: the model the ratios are taken against, at the same frames (``None`` = no ratios).
        threads: ``torch`` intra-op threads in each worker (default: torch's choice).
        scan_backend: ``VIDEOMAP_SCAN_BACKEND`` for the workers (default: inherited / ``auto``).
        fused_mamba: ``VIDEOMAP_FUSED_MAMBA`` for the workers (``1``/``xz``, ``input``, ``0``; default: inherited).
        grad_checkpointing: checkpoint every layer in ``forward_backward``.
        memory_budget_gib: report, per model, the largest frame count whose training step fits in this much
            memory, from a straight-line fit of the measured ``forward_backward`` peaks (``None`` = no report).
        isolate: one subprocess per configuration (needed for a clean CPU peak memory).
        timeout_s: per-configuration wall-clock limit when isolated.
        max_seconds: stop repeating a measurement once it has taken this long.
        out_dir: if given, write ``results.json``, ``table.md`` and ``time_vs_frames.png`` there.
        plot: write the PNG (needs matplotlib).
        log: called with progress lines (``None`` = silent).

    Returns:
        ``{"machine", "settings", "results": [row, ...], "table": markdown, "plot": path or None,
        "frames_within_budget": {model: frames}}``; each row is :func:`measure_configuration`'s dict plus
        ``"<mode>_time_ratio"``/``"<mode>_memory_ratio"`` to the baseline, or ``{"model", "frames", "error"}``.
    """
    from videomap.apps.bench.common import machine_summary

    log = log or (lambda *_: None)
    env = dict(os.environ)
    if scan_backend:
        env["VIDEOMAP_SCAN_BACKEND"] = scan_backend
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    if fused_mamba is not None:
        env["VIDEOMAP_FUSED_MAMBA"] = fused_mamba
    settings = dict(img_size=img_size, batch_size=batch_size, repeats=repeats, warmup=warmup, device=device,
                    amp=amp, baseline=baseline, threads=threads, scan_backend=env.get("VIDEOMAP_SCAN_BACKEND", "auto"),
                    fused_mamba=env.get("VIDEOMAP_FUSED_MAMBA", "1"), grad_checkpointing=grad_checkpointing)
    results = []
    for n_frames in frames:
        for model in models:
            config = dict(model=model, frames=n_frames, modes=list(modes), img_size=img_size,
                          batch_size=batch_size, repeats=repeats, warmup=warmup, device=device, amp=amp,
                          max_seconds=max_seconds, threads=threads, grad_checkpointing=grad_checkpointing)
            log(f"{model} at {n_frames} frames ...")
            if isolate:
                row = run_isolated("videomap.apps.bench.backbone", config,
                                   {"model": config["model"], "frames": config["frames"]}, timeout_s, env)
            else:
                row = _measure_in_process(config, scan_backend, fused_mamba)
            results.append(row)
            log("  " + _summary(row, modes))
    _add_ratios(results, modes, baseline)
    report = {"machine": machine_summary(), "settings": settings, "results": results,
              "table": format_table(results, modes, baseline), "plot": None, "frames_within_budget": {}}
    if memory_budget_gib and "forward_backward" in modes:
        report["frames_within_budget"] = frames_within_budget(results, memory_budget_gib * 1024)
    if out_dir is not None:
        out = write_report(out_dir, report)
        if plot:
            report["plot"] = plot_time_vs_frames(
                results, modes, out / "time_vs_frames.png", title=report["machine"],
                xlabel=f"frames ({img_size}x{img_size}, batch {batch_size})",
            )
    log("")
    log(report["table"])
    for model, most in report["frames_within_budget"].items():
        log(f"{model}: a training step fits in {memory_budget_gib:g} GiB up to ~{most} frames "
            "(straight-line fit of the measured forward+backward peaks)")
    return report


def frames_within_budget(results: list[dict], budget_mib: float) -> dict[str, int]:
    """Per model, the largest frame count whose ``forward_backward`` peak stays within ``budget_mib``, from a
    least-squares line through the measured (frames, peak) points (memory grows linearly with the tokens
    for every layer kind here: attention runs as a fused kernel). Models measured at fewer than two frame
    counts are left out."""
    out = {}
    for model in sorted({r["model"] for r in results if "error" not in r}):
        points = [(r["frames"], r["forward_backward"]["peak_mib"]) for r in results
                  if r.get("model") == model and "forward_backward" in r and r["forward_backward"]["peak_mib"] > 0]
        if len({f for f, _ in points}) < 2:
            continue
        n = len(points)
        mean_f = sum(f for f, _ in points) / n
        mean_m = sum(m for _, m in points) / n
        slope = sum((f - mean_f) * (m - mean_m) for f, m in points) / sum((f - mean_f) ** 2 for f, _ in points)
        if slope <= 0:
            continue
        out[model] = int((budget_mib - (mean_m - slope * mean_f)) // slope)
    return out


def _measure_in_process(config: dict, scan_backend: str | None, fused_mamba: str | None = None) -> dict:
    import contextlib

    import torch

    from videomap.ops import scan_backend as use_backend

    config = dict(config)
    threads = config.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)
    context = use_backend(scan_backend) if scan_backend else contextlib.nullcontext()
    previous = os.environ.get("VIDEOMAP_FUSED_MAMBA")
    if fused_mamba is not None:
        os.environ["VIDEOMAP_FUSED_MAMBA"] = fused_mamba
    try:
        with context:
            return measure_configuration(**config)
    except Exception as error:  # one failing configuration must not end the sweep
        return {"model": config["model"], "frames": config["frames"], "error": f"{type(error).__name__}: {error}"}
    finally:
        if fused_mamba is not None:
            if previous is None:
                os.environ.pop("VIDEOMAP_FUSED_MAMBA", None)
            else:
                os.environ["VIDEOMAP_FUSED_MAMBA"] = previous


def _summary(row: dict, modes) -> str:
    if "error" in row:
        return f"error: {row['error']}"
    return ", ".join(f"{MODE_TITLES[m]} {row[m]['median_ms']:.0f} ms / {row[m]['peak_mib']:.0f} MiB"
                     for m in modes if m in row)


def _add_ratios(results: list[dict], modes, baseline: str | None) -> None:
    if not baseline:
        return
    base = {r["frames"]: r for r in results if r.get("model") == baseline and "error" not in r}
    for row in results:
        ref = base.get(row.get("frames"))
        if ref is None or "error" in row:
            continue
        for mode in modes:
            if mode in row and mode in ref:
                row[f"{mode}_time_ratio"] = row[mode]["median_ms"] / ref[mode]["median_ms"]
                if ref[mode]["peak_mib"] > 0:
                    row[f"{mode}_memory_ratio"] = row[mode]["peak_mib"] / ref[mode]["peak_mib"]


def format_table(results: list[dict], modes=MODES, baseline: str | None = None) -> str:
    """Markdown table: one row per (model, frames); time (ms), peak memory (MiB) and ratios per mode."""
    from videomap.apps.bench.common import markdown_table

    headers = ["model", "frames", "tokens"]
    for mode in modes:
        title = MODE_TITLES[mode]
        headers += [f"{title} ms", f"{title} MiB"]
        if baseline:
            headers += [f"{title} time ÷ {baseline}", f"{title} memory ÷ {baseline}"]
    rows = []
    for r in sorted(results, key=lambda r: (r.get("frames", 0), r.get("model", ""))):
        if "error" in r:
            rows.append([r["model"], r["frames"], "-"] + [f"error: {r['error'][:60]}"] + [""] * (len(headers) - 4))
            continue
        cells = [r["model"], r["frames"], r["tokens"]]
        for mode in modes:
            m = r.get(mode, {})
            cells += [m.get("median_ms", "-"), m.get("peak_mib", "-")]
            if baseline:
                cells += [r.get(f"{mode}_time_ratio", "-"), r.get(f"{mode}_memory_ratio", "-")]
        rows.append(cells)
    return markdown_table(headers, rows)


def plot_time_vs_frames(results: list[dict], modes, path, title: str = "", xlabel: str = "frames") -> str | None:
    """Line plot of median time against frames, one panel per mode, one line per model (log-log)."""
    plt = pyplot_or_none("benchmarks/backbone.py")
    if plt is None:
        return None
    fig, axes = plt.subplots(1, len(modes), figsize=(5.5 * len(modes), 4.2), squeeze=False)
    models = sorted({r["model"] for r in results if "error" not in r})
    for ax, mode in zip(axes[0], modes):
        for model in models:
            points = sorted((r["frames"], r[mode]["median_ms"]) for r in results
                            if r.get("model") == model and mode in r)
            if points:
                xs, ys = zip(*points)
                ax.plot(xs, ys, marker="o", label=model)
        frames_axis(ax, sorted({r["frames"] for r in results if mode in r}), "median time (ms)", xlabel)
        ax.set_title(MODE_TITLES[mode])
        ax.legend()
    return save_figure(fig, plt, path, title)


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videomap bench backbone",
        description="Forward and forward+backward time and peak memory of whole backbones against frames.",
    )
    add_sweep_arguments(parser, models=DEFAULT_MODELS, frames=DEFAULT_FRAMES, modes=MODES, device="cpu",
                        timeout_s=None)
    parser.add_argument("--scan-backend", default=None, choices=["auto", "reference", "cpu", "cuda"])
    parser.add_argument("--fused-mamba", default=None, choices=["1", "xz", "input", "0"],
                        help="the Mamba layer's training path ($VIDEOMAP_FUSED_MAMBA; default: fused, keeping xz)")
    parser.add_argument("--grad-checkpointing", action="store_true", help="checkpoint every layer in training steps")
    parser.add_argument("--memory-budget", type=float, default=16.0,
                        help="GiB: report the largest frame count whose training step fits (0 = no report)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = sweep_preamble(args, measure_configuration)
    if status is not None:
        return status
    run_backbone_benchmark(
        models=args.models, frames=args.frames, modes=args.modes, img_size=args.img_size,
        batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup, device=args.device, amp=args.amp,
        baseline=args.baseline or None, threads=args.threads, scan_backend=args.scan_backend,
        fused_mamba=args.fused_mamba, grad_checkpointing=args.grad_checkpointing,
        memory_budget_gib=args.memory_budget or None,
        isolate=not args.in_process, timeout_s=args.timeout, max_seconds=args.max_seconds, out_dir=args.out,
        plot=not args.no_plot,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
