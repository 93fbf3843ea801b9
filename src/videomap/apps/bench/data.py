"""Data benchmark: seeking vs reading from the first frame in ``decode_frames`` on a long clip, and the
training loader's clips/s on short and long videos.

    python benchmarks/data.py                     # 3-minute 640×360 H.264 clip, key frame every 250
    python benchmarks/data.py --seconds 60 --loader-videos 4

The clips are written into a temporary folder (``--workdir`` keeps them) with PyAV's libx264: a slow
pan over a textured landscape with moving sprites, so the encoder uses B-frames as on camera footage.
Both decoding paths run side by side, alternating, and the table reports medians and their ratio; the
frames of the two paths are compared byte for byte.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SEEK_ENV = "VIDEOMAP_DECODE_SEEK"


# --------------------------------------------------------------------------------------------- clips


def _landscape(height: int, width: int, seed: int) -> np.ndarray:
    """``uint8 (H, W, 3)`` smooth multi-scale noise (hills, then finer texture)."""
    rng = np.random.default_rng(seed)
    img = np.zeros((height, width, 3), np.float32)
    for cells, amplitude in ((4, 70.0), (16, 40.0), (64, 20.0), (256, 8.0)):
        gh, gw = max(2, height * cells // 1024 + 2), max(2, width * cells // 1024 + 2)
        grid = rng.normal(0.0, 1.0, (gh, gw, 3)).astype(np.float32)
        ys, xs = np.linspace(0, gh - 1.001, height), np.linspace(0, gw - 1.001, width)
        y0, x0 = ys.astype(int), xs.astype(int)
        fy, fx = (ys - y0)[:, None, None], (xs - x0)[None, :, None]
        img += amplitude * (grid[y0][:, x0] * (1 - fy) * (1 - fx) + grid[y0 + 1][:, x0] * fy * (1 - fx)
                            + grid[y0][:, x0 + 1] * (1 - fy) * fx + grid[y0 + 1][:, x0 + 1] * fy * fx)
    return np.clip(128 + img, 0, 255).astype(np.uint8)


def write_clip(path, seconds: float, width: int = 640, height: int = 360, fps: int = 25, keyint: int = 250,
               preset: str = "medium") -> Path:
    """Encode a synthetic camera-like H.264 clip with a key frame exactly every ``keyint`` frames."""
    import av

    path = Path(path)
    big_h, big_w = height * 3, width * 3
    background = _landscape(big_h, big_w, 0)
    sprite = _landscape(64, 96, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": preset, "crf": "23",
                          "x264-params": f"keyint={keyint}:min-keyint={keyint}:scenecut=0"}
        for i in range(int(round(seconds * fps))):
            t = i / fps
            y = int((big_h - height) * (0.5 + 0.5 * np.sin(t * 0.05)))
            x = int((big_w - width) * (0.5 + 0.5 * np.sin(t * 0.031 + 1)))
            frame = background[y:y + height, x:x + width].copy()
            for k in range(3):
                cx = int((width - 96) * (0.5 + 0.5 * np.sin(t * (0.3 + 0.2 * k) + k)))
                cy = int((height - 64) * (0.5 + 0.5 * np.cos(t * (0.25 + 0.15 * k) + 2 * k)))
                frame[cy:cy + 64, cx:cx + 96] = sprite
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# ------------------------------------------------------------------------------------------ decoding


def _clear_index_cache() -> None:
    from videomap.data import decode

    decode._INDEX_CACHE.clear()


def measure_decode(path, num_frames: int = 16, repeats: int = 5) -> dict:
    """Median ``decode_frames`` time of ``num_frames`` TSN test frames, seeking and reading from the start.

    Returns ``{"frames", "indices", "seek_ms", "seek_cold_ms", "full_ms", "ratio", "identical",
    "seek_decoded", "full_decoded", "seeks", "fallbacks"}``; ``seek_cold_ms`` includes the demux pass
    that builds the packet index (the dataset pays it once in ``count_frames`` for both paths).
    """
    import torch

    from videomap.data import count_frames, decode_frames, segment_test_indices
    from videomap.data.seek import stats

    n = count_frames(path)
    idx = segment_test_indices(n, num_frames, 1).reshape(-1)
    seek_frames = decode_frames(path, idx, seek=True)  # warm-up, and the index is cached
    full_frames = decode_frames(path, idx, seek=False)
    seek_ms, cold_ms, full_ms = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        decode_frames(path, idx, seek=True)
        seek_ms.append((time.perf_counter() - t0) * 1e3)
        _clear_index_cache()
        t0 = time.perf_counter()
        decode_frames(path, idx, seek=True)
        cold_ms.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        decode_frames(path, idx, seek=False)
        full_ms.append((time.perf_counter() - t0) * 1e3)
    stats.reset()
    decode_frames(path, idx, seek=True)
    seek_counts = (stats.frames_decoded, stats.seeks, stats.fallbacks)
    stats.reset()
    decode_frames(path, idx, seek=False)
    full_decoded = stats.frames_decoded
    seek, cold, full = (statistics.median(v) for v in (seek_ms, cold_ms, full_ms))
    return {"frames": n, "indices": idx.tolist(), "seek_ms": seek, "seek_cold_ms": cold, "full_ms": full,
            "ratio": full / seek, "ratio_cold": full / cold, "identical": bool(torch.equal(seek_frames, full_frames)),
            "seek_decoded": seek_counts[0], "seeks": seek_counts[1], "fallbacks": seek_counts[2],
            "full_decoded": full_decoded}


# -------------------------------------------------------------------------------------------- loader


def measure_loader(paths: list[Path], *, workers: int, seek: bool, num_frames: int = 16, input_size: int = 224,
                   batch_size: int = 2) -> dict:
    """Clips/s of one epoch of the fine-tuning loader (``ResumableBatches`` over a training
    ``VideoClassificationDataset`` with its default augmentation) over ``paths``."""
    from videomap.data import VideoClassificationDataset, VideoRecord, VideoTrainTransform, collate_videos
    from videomap.train.batches import ResumableBatches

    records = [VideoRecord(str(p), i % 2) for i, p in enumerate(paths)]
    dataset = VideoClassificationDataset(records, ["a", "b"], mode="train", num_frames=num_frames,
                                         transform=VideoTrainTransform(input_size), input_size=input_size)
    batches = ResumableBatches(dataset, batch_size, seed=0, seed_keys=True, collate_fn=collate_videos,
                               num_workers=workers)
    _clear_index_cache()
    previous = os.environ.get(SEEK_ENV)
    os.environ[SEEK_ENV] = "1" if seek else "0"  # DataLoader workers inherit it
    try:
        t0 = time.perf_counter()
        clips = failed = 0
        for batch in batches(0):
            clips += len(batch["path"])
            failed += len(batch["failed"])
        elapsed = time.perf_counter() - t0
    finally:
        if previous is None:
            os.environ.pop(SEEK_ENV, None)
        else:
            os.environ[SEEK_ENV] = previous
    return {"clips": clips, "failed": failed, "seconds": elapsed, "clips_per_s": clips / elapsed}


# --------------------------------------------------------------------------------------------- report


def cpu_name() -> str:
    """``lscpu``'s model name (``/proc/cpuinfo`` when ``lscpu`` is missing)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, timeout=10).stdout
        for line in out.splitlines():
            if line.strip().startswith("Model name"):
                return line.split(":", 1)[1].strip()
    except (OSError, subprocess.SubprocessError):
        pass
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def run_data_benchmark(args) -> dict:
    import av

    from videomap.apps.bench.common import machine_summary, markdown_table

    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="videomap_bench_data_"))
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"CPU: {cpu_name()} ({os.cpu_count()} CPUs); {machine_summary()}; PyAV {av.__version__}")
    try:
        long_path = Path(args.clip) if args.clip else workdir / f"long_{args.seconds:g}s.mp4"
        if not long_path.exists():
            t0 = time.perf_counter()
            write_clip(long_path, args.seconds, args.width, args.height, args.fps, args.keyint, args.preset)
            print(f"wrote {long_path} ({args.seconds:g} s, {args.width}×{args.height}, key frame every "
                  f"{args.keyint}, preset {args.preset}) in {time.perf_counter() - t0:.0f} s")
        dec = measure_decode(long_path, args.frames, args.repeats)
        print(f"\n### decode_frames: {args.frames} TSN frames of a {dec['frames']}-frame clip "
              f"(median of {args.repeats})\n")
        print(markdown_table(
            ["path", "ms", "frames decoded", "seeks", "vs full read"],
            [["full read (seek=False)", dec["full_ms"], dec["full_decoded"], 0, "1.00×"],
             ["seek, packet index cached", dec["seek_ms"], dec["seek_decoded"], dec["seeks"], f"{dec['ratio']:.2f}×"],
             ["seek, index read in the call", dec["seek_cold_ms"], dec["seek_decoded"], dec["seeks"],
              f"{dec['ratio_cold']:.2f}×"]]))
        print(f"\nframes identical: {dec['identical']}; fallbacks: {dec['fallbacks']}")
        report = {"cpu": cpu_name(), "machine": machine_summary(), "decode": dec, "loader": []}
        if args.loader_videos > 0:
            report["loader"] = _loader_table(args, workdir, long_path, markdown_table)
        if args.out:
            Path(args.out).mkdir(parents=True, exist_ok=True)
            (Path(args.out) / "bench_data.json").write_text(json.dumps(report, indent=2))
        return report
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)


def _loader_table(args, workdir: Path, long_path: Path, markdown_table) -> list[dict]:
    short = workdir / f"short_{args.short_seconds:g}s.mp4"
    if not short.exists():
        write_clip(short, args.short_seconds, args.width, args.height, args.fps, args.keyint, args.preset)
    rows, results = [], []
    for kind, source, count in (("short", short, args.short_videos), ("long", long_path, args.loader_videos)):
        # Distinct paths, so no video's packet index is reused for another one.
        paths = []
        for i in range(count):
            p = workdir / f"{kind}_{i}{source.suffix}"
            if not p.exists():
                shutil.copyfile(source, p)
            paths.append(p)
        for workers in args.workers:
            timings: dict[bool, list[dict]] = {False: [], True: []}
            for _ in range(args.loader_repeats):  # alternate, so both paths meet the same machine load
                for seek in (False, True):
                    timings[seek].append(measure_loader(paths, workers=workers, seek=seek, num_frames=args.frames,
                                                        input_size=args.input_size, batch_size=args.batch_size))
            full, seeking = (statistics.median(t["clips_per_s"] for t in timings[s]) for s in (False, True))
            rows.append([f"{count} × {args.short_seconds if kind == 'short' else args.seconds:g} s", workers,
                         full, seeking, f"{seeking / full:.2f}×"])
            results.append({"videos": kind, "workers": workers, "full_clips_per_s": full,
                            "seek_clips_per_s": seeking, "full": timings[False], "seek": timings[True]})
    print(f"\n### training loader: clips/s (median of {args.loader_repeats} epochs), {args.frames} frames, "
          f"{args.input_size}², batch {args.batch_size}, default training augmentation\n")
    print(markdown_table(["videos", "workers", "full read clips/s", "seek clips/s", "speed-up"], rows))
    return results


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="videomap bench data", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=180.0, help="length of the long clip")
    parser.add_argument("--width", type=int, default=640)
    parser.add_argument("--height", type=int, default=360)
    parser.add_argument("--fps", type=int, default=25)
    parser.add_argument("--keyint", type=int, default=250, help="frames between key frames")
    parser.add_argument("--preset", default="medium", help="libx264 preset of the written clips")
    parser.add_argument("--clip", default=None, help="use this video as the long clip instead of writing one")
    parser.add_argument("--frames", type=int, default=16, help="TSN frames per clip")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--loader-videos", type=int, default=4, help="long videos per loader epoch (0: no loader)")
    parser.add_argument("--short-videos", type=int, default=12, help="short videos per loader epoch")
    parser.add_argument("--loader-repeats", type=int, default=3, help="epochs per loader configuration")
    parser.add_argument("--short-seconds", type=float, default=10.0)
    parser.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--workdir", default=None, help="keep the clips here (default: a temporary folder)")
    parser.add_argument("--out", default=None, help="folder for bench_data.json")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    run_data_benchmark(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
