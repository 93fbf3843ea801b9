"""Video-LLM encoder benchmark: time and peak memory of :class:`~videomap.encoders.VideoEncoder` (and of
encoder + projector + language-model forward) against the number of frames, up to a memory budget.

    python benchmarks/encoder.py --out runs/bench_encoder                       # 8 -> 256 frames, 224²
    python benchmarks/encoder.py --frames 2 4 --img-size 64 --llm tiny --repeats 1   # a quick check

For each model and mode the frame count doubles until a configuration needs more than the budget (or fails
or times out); the table names the largest frame count each fits in. Each configuration runs in its own
subprocess, so one configuration's allocations never inflate the next one's peak.

Memory is the peak increase during one call (CUDA allocator peak, or peak RSS on CPU) plus the parameters
of what runs (encoder; encoder, projector and LM); that total is what is compared with the budget.
"""

from __future__ import annotations

import argparse
import os
import sys

from videomap.apps.bench.common import (add_sweep_arguments, frames_axis, pyplot_or_none, run_isolated, save_figure,
                                         sweep_preamble, write_report)

DEFAULT_MODELS = ("videomap_small", "videovit_small")
DEFAULT_FRAMES = (8, 16, 32, 64, 128, 256)
MODES = ("encoder", "encoder_llm")
MODE_TITLES = {"encoder": "encoder", "encoder_llm": "encoder + projector + LLM"}
# Random Llama-style language models, by size; "small" is about 150M parameters with a 32k vocabulary.
LLM_PRESETS = {
    "tiny": dict(hidden_size=128, num_layers=2, num_heads=4),
    "small": dict(hidden_size=1024, num_layers=8, num_heads=16, intermediate_size=2816, vocab_size=32000),
}
PROMPT = "<video>\nDescribe the video."


# ---------------------------------------------------------------------------------------------- one configuration


def _language_model(llm: str):
    """``(model, tokenizer)`` for a preset name or a local directory."""
    from videomap.encoders import ByteTokenizer
    from videomap.encoders.llm import load_language_model, tiny_llama_config

    if llm not in LLM_PRESETS:
        return load_language_model(llm)
    import transformers

    preset = dict(LLM_PRESETS[llm])
    vocab = preset.pop("vocab_size", len(ByteTokenizer()))
    config = tiny_llama_config(vocab, max_position_embeddings=1 << 17, **preset)
    return transformers.LlamaForCausalLM(config), ByteTokenizer()


def measure_configuration(
    model: str,
    frames: int,
    mode: str = "encoder",
    img_size: int = 224,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    amp: bool = False,
    layer: int = -2,
    chunk_frames: int | None = None,
    llm: str = "small",
    projector: str = "mlp2x_gelu",
    spatial_stride: int = 2,
    max_seconds: float | None = None,
) -> dict:
    """Time and peak memory of one (model, frames, mode) in this process, inference only.

    ``encoder``: ``VideoEncoder.encode_video`` on ``(batch_size, 3, frames, img_size, img_size)``.
    ``encoder_llm``: the same, then spatial pooling by ``spatial_stride``, the projector and one forward
    of the language model over prompt + video tokens (the prefill of generation; logits of the last
    position only).

    Returns ``{"model", "frames", "mode", "chunk_frames", "visual_tokens", "llm_tokens", "params",
    "median_ms", "peak_mib", "params_mib", "total_mib", "repeats"}``.
    """
    import warnings

    import torch

    from videomap.apps.bench.common import measure
    from videomap.encoders import VideoEncoder

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    dev = torch.device(device)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are what a timing needs
        encoder = VideoEncoder.from_pretrained(
            model, layer=layer, img_size=img_size, device=dev,
            dtype=torch.bfloat16 if amp else None, chunk_frames=chunk_frames,
        ).freeze()
    x = torch.randn(batch_size, 3, frames, img_size, img_size, device=dev)
    grid = encoder.model.grid_size(x)
    row = {"model": model, "frames": frames, "mode": mode, "chunk_frames": chunk_frames,
           "visual_tokens": grid[0] * grid[1] * grid[2], "llm_tokens": None}
    modules = [encoder]

    if mode == "encoder":
        def step():
            encoder.encode_video(x)
    else:
        from videomap.encoders.llm import build_video_llm

        language_model, tokenizer = _language_model(llm)
        video_llm = build_video_llm(encoder, language_model.to(dev), tokenizer=tokenizer, projector=projector,
                                    spatial_stride=spatial_stride, prompt=PROMPT).to(dev).eval()
        modules = [video_llm]

        def step():
            with torch.no_grad(), torch.autocast(dev.type, dtype=torch.bfloat16, enabled=amp):
                inputs = video_llm.build_inputs(x)
                video_llm.language_model(**inputs, logits_to_keep=1)

        with torch.no_grad():
            row["llm_tokens"] = int(video_llm.build_inputs(x)["attention_mask"].sum(1).max())

    params = {id(p): p for m in modules for p in m.parameters()}
    row["params"] = sum(p.numel() for p in params.values())
    row["params_mib"] = sum(p.numel() * p.element_size() for p in params.values()) / 2**20
    result = measure(step, dev, repeats=repeats, warmup=warmup, max_seconds=max_seconds)
    row.update(median_ms=result.median_ms, peak_mib=result.peak_mib, repeats=result.repeats,
               total_mib=result.peak_mib + row["params_mib"])
    return row


# ---------------------------------------------------------------------------------------------- the sweep


def _label(model: str, chunk_frames: int | None) -> str:
    return model if not chunk_frames else f"{model} (chunks of {chunk_frames})"


def run_encoder_benchmark(
    models=DEFAULT_MODELS,
    frames=DEFAULT_FRAMES,
    modes=MODES,
    memory_budget_gib: float = 16.0,
    img_size: int = 224,
    batch_size: int = 1,
    repeats: int = 3,
    warmup: int = 1,
    device: str = "cpu",
    amp: bool = False,
    chunk_frames: int | None = None,
    llm: str = "small",
    spatial_stride: int = 2,
    baseline: str | None = "videovit_small",
    threads: int | None = None,
    timeout_s: float | None = 900.0,
    max_seconds: float | None = None,
    isolate: bool = True,
    out_dir: str | os.PathLike | None = None,
    plot: bool = True,
    log=print,
) -> dict:
    """Sweep frames for every model and mode until the memory budget is exceeded.

    Args:
        models: registered names. frames: ascending frame counts to try.
        modes: among ``"encoder"``, ``"encoder_llm"``.
        memory_budget_gib: a configuration whose ``total_mib`` exceeds this stops the sweep for that model
            and mode (larger frame counts would only need more).
        chunk_frames: also measure each model's encoder with chunked encoding (a separate row per model).
        llm: ``"tiny"``, ``"small"`` (random Llama-style models) or a local causal-LM directory.
        spatial_stride: token pooling before the projector in ``encoder_llm``.
        baseline: ratios of time and memory are taken against this model at the same frames and mode.
        timeout_s: per-configuration limit (a timeout also ends that sweep).
        out_dir: write ``results.json``, ``table.md`` and ``encoder_vs_frames.png`` there.

    Returns:
        ``{"machine", "settings", "results", "largest", "table", "plot"}``; ``largest`` maps
        ``"<label> / <mode>"`` to the largest frame count that fitted (``None`` = not even the first).
    """
    from videomap.apps.bench.common import machine_summary

    log = log or (lambda *_: None)
    env = dict(os.environ)
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)
    budget_mib = memory_budget_gib * 1024
    settings = dict(img_size=img_size, batch_size=batch_size, repeats=repeats, warmup=warmup, device=device,
                    amp=amp, memory_budget_gib=memory_budget_gib, llm=llm, spatial_stride=spatial_stride,
                    chunk_frames=chunk_frames, threads=threads, baseline=baseline)
    variants = [(m, None) for m in models] + ([(m, chunk_frames) for m in models] if chunk_frames else [])
    results, largest = [], {}
    for mode in modes:
        for model, chunk in variants:
            if chunk and mode != "encoder":
                continue
            key = f"{_label(model, chunk)} / {mode}"
            largest[key] = None
            for n_frames in frames:
                config = dict(model=model, frames=n_frames, mode=mode, img_size=img_size, batch_size=batch_size,
                              repeats=repeats, warmup=warmup, device=device, amp=amp, chunk_frames=chunk, llm=llm,
                              spatial_stride=spatial_stride, max_seconds=max_seconds, threads=threads)
                log(f"{key} at {n_frames} frames ...")
                row = (run_isolated("videomap.apps.bench.encoder", config,
                                    {k: config[k] for k in ("model", "frames", "mode", "chunk_frames")}, timeout_s, env)
                       if isolate else _measure_in_process(config))
                row["fits"] = "error" not in row and row["total_mib"] <= budget_mib
                results.append(row)
                log("  " + _summary(row))
                if not row["fits"]:
                    break
                largest[key] = n_frames
    _add_ratios(results, baseline)
    report = {"machine": machine_summary(), "settings": settings, "results": results, "largest": largest,
              "table": format_table(results, largest, memory_budget_gib, baseline), "plot": None}
    if out_dir is not None:
        out = write_report(out_dir, report)
        if plot:
            report["plot"] = plot_vs_frames(results, out / "encoder_vs_frames.png", budget_mib,
                                            title=f"{report['machine']}\n{img_size}x{img_size}, batch {batch_size}")
    log("")
    log(report["table"])
    return report


def _measure_in_process(config: dict) -> dict:
    import torch

    config = dict(config)
    threads = config.pop("threads", None)
    if threads:
        torch.set_num_threads(threads)
    try:
        return measure_configuration(**config)
    except Exception as error:  # one failing configuration must not end the sweep
        keys = {k: config[k] for k in ("model", "frames", "mode", "chunk_frames")}
        return {**keys, "error": f"{type(error).__name__}: {error}"}


def _summary(row: dict) -> str:
    if "error" in row:
        return f"error: {row['error']}"
    verdict = "fits" if row["fits"] else "over budget"
    return f"{row['median_ms']:.0f} ms, {row['total_mib']:.0f} MiB ({verdict})"


def _add_ratios(results: list[dict], baseline: str | None) -> None:
    if not baseline:
        return
    base = {(r["frames"], r["mode"]): r for r in results
            if r["model"] == baseline and not r.get("chunk_frames") and "error" not in r}
    for row in results:
        ref = base.get((row["frames"], row["mode"]))
        if ref is None or "error" in row:
            continue
        row["time_ratio"] = row["median_ms"] / ref["median_ms"]
        if ref["total_mib"] > 0:
            row["memory_ratio"] = row["total_mib"] / ref["total_mib"]


def format_table(results: list[dict], largest: dict, memory_budget_gib: float, baseline: str | None = None) -> str:
    """Markdown: one row per measurement, then the largest frame count that fits, per model and mode."""
    from videomap.apps.bench.common import markdown_table

    headers = ["model", "mode", "frames", "visual tokens", "LLM tokens", "ms", "peak MiB", "total MiB"]
    if baseline:
        headers += [f"time ÷ {baseline}", f"memory ÷ {baseline}"]
    rows = []
    for r in sorted(results, key=lambda r: (r["mode"], r["frames"], _label(r["model"], r.get("chunk_frames")))):
        label = _label(r["model"], r.get("chunk_frames"))
        if "error" in r:
            rows.append([label, MODE_TITLES[r["mode"]], r["frames"], f"error: {r['error'][:60]}"]
                        + [""] * (len(headers) - 4))
            continue
        cells = [label, MODE_TITLES[r["mode"]], r["frames"], r["visual_tokens"], r["llm_tokens"] or "-",
                 r["median_ms"], r["peak_mib"], r["total_mib"]]
        if baseline:
            cells += [r.get("time_ratio", "-"), r.get("memory_ratio", "-")]
        rows.append(cells)
    fits = markdown_table(
        ["model / mode", f"largest frame count within {memory_budget_gib:g} GiB"],
        [[key, value if value is not None else "none"] for key, value in largest.items()],
    )
    return markdown_table(headers, rows) + "\n\n" + fits


def plot_vs_frames(results: list[dict], path, budget_mib: float, title: str = "") -> str | None:
    """Two panels, time and total memory against frames (log-log), one line per model and mode."""
    plt = pyplot_or_none("benchmarks/encoder.py")
    if plt is None:
        return None
    fig, (ax_time, ax_mem) = plt.subplots(1, 2, figsize=(11, 4.4))
    series = sorted({(_label(r["model"], r.get("chunk_frames")), r["mode"]) for r in results if "error" not in r})
    for label, mode in series:
        points = sorted((r["frames"], r["median_ms"], r["total_mib"]) for r in results
                        if "error" not in r and r["mode"] == mode and _label(r["model"], r.get("chunk_frames")) == label)
        xs, times, mems = zip(*points)
        style = "-" if mode == "encoder" else "--"
        name = f"{label}, {MODE_TITLES[mode]}"
        ax_time.plot(xs, times, style, marker="o", label=name)
        ax_mem.plot(xs, mems, style, marker="o", label=name)
    ax_mem.axhline(budget_mib, color="gray", linestyle=":", label="budget")
    frames = sorted({r["frames"] for r in results})
    frames_axis(ax_time, frames, "median time (ms)")
    frames_axis(ax_mem, frames, "memory (MiB)")
    ax_mem.legend(fontsize=7)
    return save_figure(fig, plt, path, title)


# ---------------------------------------------------------------------------------------------- command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videomap bench encoder",
        description="Time and peak memory of the video-LLM encoder (and encoder + projector + LLM) against frames.",
    )
    add_sweep_arguments(parser, models=DEFAULT_MODELS, frames=DEFAULT_FRAMES, modes=MODES, device="auto",
                        timeout_s=900.0)
    parser.add_argument("--memory-budget-gib", type=float, default=16.0)
    parser.add_argument("--chunk-frames", type=int, default=None, help="also measure chunked encoding")
    parser.add_argument("--llm", default="small", help=f"{' or '.join(LLM_PRESETS)} (random), or a local model directory")
    parser.add_argument("--spatial-stride", type=int, default=2, help="token pooling before the projector")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    status = sweep_preamble(args, measure_configuration)
    if status is not None:
        return status
    if sorted(args.frames) != list(args.frames):
        print("--frames must be ascending (the sweep stops at the first one over budget)", file=sys.stderr)
        return 2
    run_encoder_benchmark(
        models=args.models, frames=args.frames, modes=args.modes, memory_budget_gib=args.memory_budget_gib,
        img_size=args.img_size, batch_size=args.batch_size, repeats=args.repeats, warmup=args.warmup,
        device=args.device, amp=args.amp, chunk_frames=args.chunk_frames, llm=args.llm,
        spatial_stride=args.spatial_stride, baseline=args.baseline or None, threads=args.threads,
        timeout_s=args.timeout, max_seconds=args.max_seconds, isolate=not args.in_process, out_dir=args.out,
        plot=not args.no_plot,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
