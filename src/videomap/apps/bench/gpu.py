"""The GPU check, one prepared command (``videomap bench gpu``; ``python benchmarks/gpu.py``) that prints one
table as it goes and writes it to ``--out`` as JSON and markdown:

1. **parity** of the ``triton`` (and ``cuda``, when mamba_ssm imports) scan and conv against ``reference`` on
   the device, forward and every gradient, at a short L (the reference loop is slow);
2. **scan speed**: forward and forward+backward time at (B=8, E=768, N=16, L=3136) and (B=1, E=768, N=16,
   L=50176), each against its memory-traffic bound (bytes the op must read and write ÷ the copy bandwidth
   measured in the same run);
3. **models**: ``videomap_small``, ``videomamba_small``, ``videovit_small`` at 16, 64 and 256 frames, 224²,
   bf16 autocast: forward clips/s, training-step clips/s, peak memory;
4. **memory**: fp32 training steps (no autocast, so the fused Mamba layer runs) at 16 frames with each
   ``$VIDEOMAP_FUSED_MAMBA`` path (``xz``, ``input``, ``0``) against the ViT: peak memory and time;
5. **fit**: the largest frame count each model's training step fits in the device's memory (doubling then
   bisection, out-of-memory caught, time-capped);
6. **training**: 30 steps of the frame-wise MAR pretraining objective and 30 of fine-tuning on generated
   clips (in memory: no video decoder needed), bf16: loss finite and decreasing.

Every stage has a time guard so the whole command stays inside ``--budget`` seconds (default 450). With
``--dry-run`` it runs end to end in seconds on a CPU: tiny shapes, the Triton kernels under
``TRITON_INTERPRET=1`` when triton is installed, and the stages that need a GPU's memory reduced to a probe.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

MODELS = ("videomap_small", "videomamba_small", "videovit_small")
FRAMES = (16, 64, 256)
SCAN_SHAPES = ((8, 768, 16, 3136), (1, 768, 16, 50176))


@dataclass
class Report:
    """Rows ``(stage, item, metric, value, note)``, printed as they arrive."""

    rows: list[dict] = field(default_factory=list)
    started: float = field(default_factory=time.perf_counter)

    def add(self, stage: str, item: str, metric: str, value, note: str = "") -> None:
        if isinstance(value, float):
            value = float(f"{value:.4g}")
        row = dict(stage=stage, item=item, metric=metric, value=value, note=note)
        self.rows.append(row)
        print(f"| {stage} | {item} | {metric} | {value} | {note} |", flush=True)

    def markdown(self) -> str:
        lines = ["| stage | item | metric | value | note |", "|---|---|---|---|---|"]
        lines += [f"| {r['stage']} | {r['item']} | {r['metric']} | {r['value']} | {r['note']} |" for r in self.rows]
        return "\n".join(lines)


class Deadline:
    """The whole command's time budget, shared by the stages."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_ms(fn, device, repeats: int, max_seconds: float) -> float:
    """Median time of ``fn`` after one warm-up call, stopping early after ``max_seconds``."""
    fn()
    _sync(device)
    times, started = [], time.perf_counter()
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1e3)
        if time.perf_counter() - started > max_seconds:
            break
    times.sort()
    return times[len(times) // 2]


def _is_oom(error: BaseException) -> bool:
    import torch

    return isinstance(error, torch.cuda.OutOfMemoryError) or "out of memory" in str(error).lower()


def _free(device) -> None:
    import gc

    import torch

    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


# -------------------------------------------------------------------------------------------------- 1. parity


def _scan_args(batch, channels, state, length, device, dtype, grouped: bool, seed=0):
    import torch

    g = torch.Generator().manual_seed(seed)
    shape_bc = (batch, 2, state, length) if grouped else (batch, state, length)
    t = dict(u=torch.randn(batch, channels, length, generator=g),
             delta=torch.randn(batch, channels, length, generator=g) * 0.5 - 1.0,
             A=-(torch.rand(channels, state, generator=g) * 1.5 + 0.1),
             B=torch.randn(*shape_bc, generator=g), C=torch.randn(*shape_bc, generator=g),
             D=torch.randn(channels, generator=g), z=torch.randn(batch, channels, length, generator=g),
             delta_bias=torch.randn(channels, generator=g) * 0.1,
             initial_state=torch.randn(batch, channels, state, generator=g))
    return {k: v.to(device=device, dtype=dtype if k in ("u", "delta", "z", "B", "C") else torch.float32)
            for k, v in t.items()}


def _scan_outputs(backend, args, reverse, use_h0):
    import torch

    from videomap.ops import scan_backend, selective_scan

    leaves = {k: v.clone().requires_grad_() for k, v in args.items() if use_h0 or k != "initial_state"}
    with scan_backend(backend):
        out, last = selective_scan(**{k: v for k, v in leaves.items() if k != "initial_state"}, delta_softplus=True,
                                   return_last_state=True, initial_state=leaves.get("initial_state"),
                                   reverse=reverse)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)
    ((out.float() * w).sum() + last.sum()).backward()
    return out.detach(), last.detach(), {k: v.grad for k, v in leaves.items()}


def _rel(a, b) -> float:
    scale = b.double().abs().max().item()
    return (a.double() - b.double()).abs().max().item() / (scale or 1.0)


def stage_parity(report: Report, device, dry: bool, deadline: Deadline) -> None:
    import torch

    from videomap.ops import scan_backend
    from videomap.ops.backend import unavailable_reason
    from videomap.ops.causal_conv import causal_conv1d

    shape = (2, 8, 4, 13) if dry else (2, 128, 16, 256)
    backends = [b for b in ("triton", "cuda")
                if unavailable_reason("scan", b, device, torch.float32) is None]
    if not backends:
        report.add("parity", "scan", "skipped", "-", "neither 'triton' nor 'cuda' can run here: " +
                   str(unavailable_reason("scan", "triton", device, torch.float32)))
    cases = [("fp32 shared", torch.float32, False, False, False),
             ("fp32 grouped+h0+reverse", torch.float32, True, True, True),
             ("bf16 shared", torch.bfloat16, False, False, False)]
    for backend in backends:
        for name, dtype, grouped, use_h0, reverse in cases:
            if deadline.left() < 30:
                report.add("parity", f"{backend} {name}", "skipped", "-", "time budget")
                continue
            if backend == "cuda" and use_h0:
                continue  # mamba_ssm has no initial state
            args = _scan_args(*shape, device, dtype, grouped)
            try:
                got = _scan_outputs(backend, args, reverse, use_h0)
                want = _scan_outputs("reference", args, reverse, use_h0)
            except Exception as error:  # noqa: BLE001 - a failing backend is a result, not a crash
                report.add("parity", f"{backend} {name}", "error", "-", f"{type(error).__name__}: {error}"[:200])
                continue
            fwd = max(_rel(got[0], want[0]), _rel(got[1], want[1]))
            grads = {k: _rel(got[2][k], want[2][k]) for k in want[2]}
            worst = max(grads, key=grads.get)
            limit_f, limit_g = (1e-4, 1e-3) if dtype == torch.float32 else (1e-2, 2e-2)
            report.add("parity", f"scan {backend} {name} L={shape[3]}", "fwd max rel err", fwd,
                       "ok" if fwd <= limit_f else f"ABOVE {limit_f:g}")
            report.add("parity", f"scan {backend} {name} L={shape[3]}", "grad max rel err", grads[worst],
                       f"worst d{worst}; " + ("ok" if grads[worst] <= limit_g else f"ABOVE {limit_g:g}"))
    conv_backends = [b for b in ("triton", "cuda") if unavailable_reason("conv", b, device, torch.float32) is None]
    for backend in conv_backends:
        g = torch.Generator().manual_seed(0)
        x = torch.randn(2, shape[1], 4 * shape[3], generator=g).to(device)
        w, b = torch.randn(shape[1], 4, generator=g).to(device), torch.randn(shape[1], generator=g).to(device)
        for reverse in (False, True):
            results = []
            for name in (backend, "reference"):
                leaves = [t.clone().requires_grad_() for t in (x, w, b)]
                with scan_backend(name):
                    out = causal_conv1d(*leaves, activation="silu", reverse=reverse)
                out.backward(torch.ones_like(out))
                results.append([out.detach()] + [t.grad for t in leaves])
            errs = [_rel(a, c) for a, c in zip(*results)]
            report.add("parity", f"conv {backend} reverse={reverse}", "fwd / max grad rel err",
                       f"{errs[0]:.2e} / {max(errs[1:]):.2e}", "ok" if max(errs) <= 1e-4 else "ABOVE 1e-4")


# ---------------------------------------------------------------------------------------------- 2. scan speed


def copy_bandwidth(device, nbytes: int) -> float:
    """Measured device copy bandwidth in bytes/s (a copy reads and writes ``nbytes`` each)."""
    import torch

    src = torch.empty(nbytes // 4, dtype=torch.float32, device=device).uniform_()
    dst = torch.empty_like(src)
    ms = _median_ms(lambda: dst.copy_(src), device, repeats=10, max_seconds=5)
    return 2 * nbytes / (ms / 1e3)


def scan_bytes(batch, channels, state, length, in_size: int, groups: int = 1) -> tuple[int, int]:
    """Bytes a scan must move at least: forward reads u, delta, z, B, C and writes out; forward+backward
    adds the backward's reads (the same inputs and the output gradient) and writes (du, ddelta, dz, dB, dC)."""
    bel, bnl = batch * channels * length, batch * groups * state * length
    fwd = (4 * bel + 2 * bnl) * in_size
    bwd = (4 * bel + 2 * bnl) * in_size + (3 * bel + 2 * bnl) * in_size
    return fwd, fwd + bwd


def stage_scan_speed(report: Report, device, dry: bool, deadline: Deadline, dtype_name: str) -> None:
    import torch

    from videomap.ops import scan_backend, selective_scan
    from videomap.ops.backend import unavailable_reason
    from videomap.apps.bench.scan import scan_inputs

    dtype = getattr(torch, dtype_name)
    bandwidth = copy_bandwidth(device, (16 if dry else 1024) * 2**20)
    report.add("scan speed", "device copy", "bandwidth GB/s", bandwidth / 1e9, "median of 10 copies")
    shapes = ((2, 16, 4, 64),) if dry else SCAN_SHAPES
    backends = [b for b in ("triton", "cuda") if unavailable_reason("scan", b, device, dtype) is None]
    if device.type == "cpu":
        # Timing the interpreter says nothing: the dry run times the CPU kernel to exercise the stage.
        backends = ["cpu"]
    for batch, channels, state, length in shapes:
        inputs = {k: (v.to(dtype) if k in ("u", "delta", "z", "B", "C") else v.float())
                  for k, v in scan_inputs(batch, channels, state, length, device, torch.float32).items()}
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        fwd_bytes, total_bytes = scan_bytes(batch, channels, state, length, torch.finfo(dtype).bits // 8)
        item_shape = f"B={batch} E={channels} N={state} L={length} {dtype_name}"
        for backend in backends:
            if deadline.left() < 60:
                report.add("scan speed", f"{backend} {item_shape}", "skipped", "-", "time budget")
                continue

            def forward():
                with torch.no_grad(), scan_backend(backend):
                    selective_scan(**inputs, delta_softplus=True)

            def forward_backward():
                for t in leaves.values():
                    t.grad = None
                with scan_backend(backend):
                    selective_scan(**leaves, delta_softplus=True).float().sum().backward()

            try:
                for label, fn, nbytes in (("fwd", forward, fwd_bytes), ("fwd+bwd", forward_backward, total_bytes)):
                    ms = _median_ms(fn, device, repeats=5, max_seconds=min(20, deadline.left() / 4))
                    bound = nbytes / bandwidth * 1e3
                    report.add("scan speed", f"{backend} {item_shape}", f"{label} ms", ms,
                               f"traffic bound {bound:.3g} ms ({nbytes / 2**20:.0f} MiB); {ms / bound:.1f}x the bound")
            except Exception as error:  # noqa: BLE001
                report.add("scan speed", f"{backend} {item_shape}", "error", "-", f"{type(error).__name__}: {error}"[:200])
            _free(device)


# -------------------------------------------------------------------------------------------------- 3. models


def _train_step_fn(net, x, device, optimizer=None, bf16=True):
    """One training step: forward (under bf16 autocast unless ``bf16`` is False), backward, and the
    optimizer's step when one is given."""
    import contextlib

    import torch

    def step():
        net.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext():
            loss = net(x).float().logsumexp(-1).mean()
        loss.backward()
        if optimizer is not None:
            optimizer.step()

    return step


def _model(name, frames, img_size, device):
    import torch

    from videomap.models import create_model

    torch.manual_seed(0)
    return create_model(name, num_frames=frames, img_size=img_size, num_classes=400).to(device)


def _peak_mib(fn, device) -> float:
    import torch

    if device.type != "cuda":
        fn()
        return float("nan")
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return torch.cuda.max_memory_allocated(device) / 2**20


def stage_models(report: Report, device, dry: bool, deadline: Deadline, models, frames_list) -> None:
    import torch

    img_size = 32 if dry else 224
    for name in models:
        for frames in frames_list:
            item = f"{name} T={frames} {img_size}²"
            if deadline.left() < 90:
                report.add("models", item, "skipped", "-", "time budget")
                continue
            net = x = optimizer = None
            try:
                net = _model(name, frames, img_size, device)
                x = torch.randn(1, 3, frames, img_size, img_size, device=device)
                cap = min(20.0, deadline.left() / 10)

                def forward():
                    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16):
                        net(x)

                net.eval()
                fwd_ms = _median_ms(forward, device, repeats=3, max_seconds=cap)
                fwd_mib = _peak_mib(forward, device)
                net.train()
                optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
                step = _train_step_fn(net, x, device, optimizer)
                train_ms = _median_ms(step, device, repeats=3, max_seconds=cap)
                train_mib = _peak_mib(step, device)
                report.add("models", item, "forward clips/s", 1e3 / fwd_ms, f"{fwd_ms:.1f} ms, peak {fwd_mib:.0f} MiB")
                report.add("models", item, "train-step clips/s", 1e3 / train_ms,
                           f"{train_ms:.1f} ms, peak {train_mib:.0f} MiB (AdamW, bf16 autocast)")
            except Exception as error:  # noqa: BLE001 - out of memory or a failure is a result
                what = "out of memory" if _is_oom(error) else f"{type(error).__name__}: {error}"[:200]
                report.add("models", item, "error", "-", what)
            del net, x, optimizer
            _free(device)


def _fits(name, frames, img_size, device) -> bool:
    import torch

    net = x = optimizer = None
    try:
        net = _model(name, frames, img_size, device).train()
        x = torch.randn(1, 3, frames, img_size, img_size, device=device)
        optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
        _train_step_fn(net, x, device, optimizer)()
        _sync(device)
        return True
    except Exception as error:  # noqa: BLE001
        if _is_oom(error):
            return False
        raise
    finally:
        del net, x, optimizer
        _free(device)


def largest_fit(name, device, img_size, start: int, limit: int, seconds: float) -> tuple[int, str]:
    """The largest frame count in ``[start, limit]`` whose training step fits: doubling, then bisection,
    stopping after ``seconds``. Returns ``(frames, note)``."""
    started = time.perf_counter()
    good, bad = 0, None
    frames = start
    while frames <= limit:
        if time.perf_counter() - started > seconds:
            return good, f"≥ {good} (time cap {seconds:.0f} s)"
        if _fits(name, frames, img_size, device):
            good, frames = frames, frames * 2
        else:
            bad = frames
            break
    if bad is None:
        return good, f"≥ {good} (the largest probed)"
    while bad - good > max(1, good // 16):
        if time.perf_counter() - started > seconds:
            return good, f"in [{good}, {bad}) (time cap {seconds:.0f} s)"
        mid = (good + bad) // 2
        if _fits(name, mid, img_size, device):
            good = mid
        else:
            bad = mid
    return good, f"{bad} does not fit"


def stage_fit(report: Report, device, dry: bool, deadline: Deadline, models) -> None:
    if device.type != "cuda" and not dry:
        report.add("fit", "-", "skipped", "-", "needs a CUDA device")
        return
    for name in models:
        if deadline.left() < 100:
            report.add("fit", name, "skipped", "-", "time budget")
            continue
        seconds = 4 if dry else min(60, (deadline.left() - 90) / 3)
        try:
            frames, note = largest_fit(name, device, 32 if dry else 224, start=2 if dry else 256,
                                       limit=8 if dry else 16384, seconds=seconds)
            report.add("fit", f"{name} 224² train step" if not dry else f"{name} 32² (dry run)",
                       "largest frames", frames, note)
        except Exception as error:  # noqa: BLE001
            report.add("fit", name, "error", "-", f"{type(error).__name__}: {error}"[:200])


# ----------------------------------------------------------------------------------- 4b. training memory


#: ``$VIDEOMAP_FUSED_MAMBA`` values the memory stage compares (the fused layer only runs without autocast).
MEMORY_STAGE_PATHS = ("xz", "input", "0")


def stage_memory(report: Report, device, dry: bool, deadline: Deadline, models, frames: int = 16) -> None:
    """fp32 training steps with each Mamba training path: peak memory and time (the fused layer's rows)."""
    import torch

    from videomap.layers.bimamba import FUSED_ENV_VAR

    img_size = 32 if dry else 224
    frames = 2 if dry else frames
    before = os.environ.get(FUSED_ENV_VAR)
    try:
        for name in models:
            modes = MEMORY_STAGE_PATHS if "vit" not in name else ("-",)
            for mode in modes:
                item = f"{name} T={frames} {img_size}² fp32" + ("" if mode == "-" else f" fused={mode}")
                if deadline.left() < 90:
                    report.add("memory", item, "skipped", "-", "time budget")
                    continue
                if mode != "-":
                    os.environ[FUSED_ENV_VAR] = mode
                net = x = None
                try:
                    net = _model(name, frames, img_size, device).train()
                    x = torch.randn(1, 3, frames, img_size, img_size, device=device)
                    step = _train_step_fn(net, x, device, bf16=False)
                    step_ms = _median_ms(step, device, repeats=3, max_seconds=min(20.0, deadline.left() / 10))
                    peak = _peak_mib(step, device)
                    report.add("memory", item, "train-step peak MiB", peak, f"{step_ms:.1f} ms per step")
                except Exception as error:  # noqa: BLE001 - out of memory or a failure is a result
                    what = "out of memory" if _is_oom(error) else f"{type(error).__name__}: {error}"[:200]
                    report.add("memory", item, "error", "-", what)
                del net, x
                _free(device)
    finally:
        if before is None:
            os.environ.pop(FUSED_ENV_VAR, None)
        else:
            os.environ[FUSED_ENV_VAR] = before


# ------------------------------------------------------------------------------------------------ 5. training


def moving_square_clips(batch: int, frames: int, size: int, generator, device):
    """In-memory clips ``(B, 3, T, H, W)`` of a bright square moving left or right over noise, labels ``(B,)``
    (1 = right): only the motion tells the label."""
    import torch

    labels = torch.randint(0, 2, (batch,), generator=generator)
    video = torch.rand(batch, 3, frames, size, size, generator=generator) * 0.2
    side = size // 4
    for i in range(batch):
        x0 = int(torch.randint(0, size - side, (1,), generator=generator))
        y0 = int(torch.randint(0, size - side, (1,), generator=generator))
        for t in range(frames):
            x = (x0 + (1 if labels[i] else -1) * t * max(1, size // (2 * frames))) % (size - side)
            video[i, :, t, y0:y0 + side, x:x + side] = 1.0
    return ((video - 0.45) / 0.25).to(device), labels.to(device)


def _loss_trend(losses: list[float]) -> tuple[bool, bool, str]:
    k = max(1, len(losses) // 5)
    first, last = sum(losses[:k]) / k, sum(losses[-k:]) / k
    finite = all(math.isfinite(v) for v in losses)
    return finite, last < first, f"mean of first {k} {first:.4f} → last {k} {last:.4f}"


def stage_training(report: Report, device, dry: bool, deadline: Deadline, steps: int) -> None:
    import torch

    from videomap.models import create_model
    from videomap.pretrain import MAPPretrainer

    if deadline.left() < 40:
        report.add("training", "-", "skipped", "-", "time budget")
        return
    frames, size, batch = (4, 32, 2) if dry else (8, 112, 8)
    kw = dict(embed_dim=32, schedule="MMA", num_heads=2) if dry else {}
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    note = "in-memory moving-square clips; bf16 autocast"
    try:
        encoder = create_model("videomap_tiny", num_classes=0, num_frames=frames, img_size=size, **kw)
        pretrainer = MAPPretrainer(encoder, **(dict(decoder_depth=2, decoder_dim=32, decoder_heads=2) if dry else {}))
        pretrainer.to(device).train()
        optimizer = torch.optim.AdamW(pretrainer.parameters(), lr=1e-3 if dry else 3e-4)
        clips, _ = moving_square_clips(batch, frames, size, g, device)  # one batch: the loss must fall on it
        losses = []
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = pretrainer(clips)["loss"]
            loss.float().backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        finite, falls, trend = _loss_trend(losses)
        report.add("training", f"pretrain (MAR, pixel) videomap_tiny {steps} steps", "loss finite and falling",
                   finite and falls, f"{trend}; {note}")

        classifier = create_model("videomap_tiny", num_classes=2, num_frames=frames, img_size=size, **kw)
        classifier.load_state_dict(encoder.state_dict(), strict=False)
        classifier.to(device).train()
        optimizer = torch.optim.AdamW(classifier.parameters(), lr=1e-3 if dry else 3e-4)
        losses = []
        clips, labels = moving_square_clips(batch * 2, frames, size, g, device)
        for _ in range(steps):
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16):
                loss = torch.nn.functional.cross_entropy(classifier(clips).float(), labels)
            loss.backward()
            optimizer.step()
            losses.append(float(loss.detach()))
        finite, falls, trend = _loss_trend(losses)
        report.add("training", f"finetune videomap_tiny {steps} steps", "loss finite and falling", finite and falls,
                   f"{trend}; {note}")
    except Exception as error:  # noqa: BLE001
        report.add("training", "-", "error", "-", f"{type(error).__name__}: {error}"[:200])


# ------------------------------------------------------------------------------------------------------- main


def run_gpu_check(out: str | os.PathLike | None = None, dry_run: bool = False, budget: float = 450.0,
                  stages=("parity", "scan", "models", "memory", "fit", "training"), models=MODELS, frames=FRAMES,
                  dtype: str = "bfloat16", steps: int = 30) -> Report:
    """Run the stages and return the report (also written to ``out``/gpu_check.{json,md})."""
    import torch

    from videomap.apps.bench.common import machine_summary

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.type != "cuda" and not dry_run:
        raise SystemExit("videomap bench gpu: no CUDA device; use --dry-run for the tiny CPU run")
    deadline = Deadline(budget)
    report = Report()
    print(f"videomap bench gpu — {machine_summary()}" + (" — DRY RUN (tiny shapes)" if dry_run else ""), flush=True)
    print("| stage | item | metric | value | note |\n|---|---|---|---|---|", flush=True)
    if "parity" in stages:
        stage_parity(report, device, dry_run, deadline)
    if "scan" in stages:
        stage_scan_speed(report, device, dry_run, deadline, dtype)
    if "models" in stages:
        stage_models(report, device, dry_run, deadline, models, (2,) if dry_run else frames)
    if "memory" in stages:
        stage_memory(report, device, dry_run, deadline, models)
    if "fit" in stages:
        stage_fit(report, device, dry_run, deadline, models)
    if "training" in stages:
        stage_training(report, device, dry_run, deadline, 3 if dry_run else steps)
    elapsed = time.perf_counter() - report.started
    print(f"\ndone in {elapsed:.0f} s", flush=True)
    if out is not None:
        folder = Path(out)
        folder.mkdir(parents=True, exist_ok=True)
        header = f"videomap bench gpu — {machine_summary()} — {elapsed:.0f} s\n\n"
        (folder / "gpu_check.md").write_text(header + report.markdown() + "\n")
        (folder / "gpu_check.json").write_text(json.dumps(
            {"machine": machine_summary(), "dry_run": dry_run, "seconds": elapsed, "rows": report.rows}, indent=1))
        print(f"written to {folder / 'gpu_check.md'} and gpu_check.json", flush=True)
    return report


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="videomap bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/bench_gpu", help="folder for gpu_check.json and gpu_check.md")
    parser.add_argument("--dry-run", action="store_true",
                        help="tiny shapes on the CPU (Triton under TRITON_INTERPRET=1): tests the command end to end")
    parser.add_argument("--budget", type=float, default=450.0, help="seconds for the whole command (default 450)")
    parser.add_argument("--stages", nargs="+", default=["parity", "scan", "models", "memory", "fit", "training"],
                        choices=["parity", "scan", "models", "memory", "fit", "training"])
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    parser.add_argument("--frames", type=int, nargs="+", default=list(FRAMES))
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16", "float16"],
                        help="input dtype of the scan-speed stage")
    parser.add_argument("--steps", type=int, default=30, help="pretraining and fine-tuning steps")
    args = parser.parse_args(argv)
    if args.dry_run:
        import importlib.util

        import torch

        if not torch.cuda.is_available() and importlib.util.find_spec("triton") is not None:
            # Read when the Triton kernels are first compiled, i.e. later in this process.
            os.environ.setdefault("TRITON_INTERPRET", "1")
    run_gpu_check(args.out, args.dry_run, args.budget, tuple(args.stages), tuple(args.models), tuple(args.frames),
                  args.dtype, args.steps)
    return 0


if __name__ == "__main__":
    sys.exit(main())
