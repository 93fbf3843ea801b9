"""Video classification dataset, batch collation and the corrupt-video policy (DESIGN §5).

A video that cannot be decoded is **never** replaced by another sample — a replacement would carry the
other video's label and silently change the data. Instead:

* the dataset returns a :class:`FailedVideo` marker for that item;
* :func:`collate_videos` drops markers from the batch and lists them under ``batch["failed"]``;
* a :class:`FailureLog` in the main process counts them and logs each file once. Training skips the
  failed items (:func:`skip_failed`); evaluation reports ``FailureLog.paths`` in ``results.json`` and
  leaves those videos out of the denominator.

The log lives in the main process because DataLoader workers are separate processes: a counter kept
by the dataset inside a worker would never be seen by the training loop.
"""

from __future__ import annotations

import logging
import os
from typing import Iterable, Iterator, Mapping, NamedTuple, Sequence

import torch
from torch.utils.data import Dataset, get_worker_info

from .annotations import Annotations, VideoRecord, read_annotations
from .decode import VideoDecodeError, count_frames, decode_frames
from .presets import DatasetPreset, get_preset
from .sampling import SAMPLING_METHODS, sample_indices
from .seeding import make_generator
from .transforms import VideoTestTransform, VideoTrainTransform

__all__ = [
    "FailedVideo",
    "VideoClassificationDataset",
    "collate_videos",
    "FailureLog",
    "skip_failed",
]

log = logging.getLogger(__name__)


class FailedVideo(NamedTuple):
    """Marker returned instead of a sample when the video at ``index`` cannot be decoded."""

    index: int
    path: str
    reason: str


class VideoClassificationDataset(Dataset):
    """Labelled videos → clips.

    ``mode="train"``: one clip per video, ``{"video": float (C, T, S, S), "label", "index", "path"}``.
    ``mode="test"``: every view of the video at once, ``"video"`` is ``(V, C, T, S, S)`` with
    ``V = test_clips × test_crops`` ordered clip-major (views ``0 … test_crops-1`` share clip 0).
    Memory per test item is ``V·C·T·S²`` floats (COIN's 10×3 views of 32 frames ≈ 580 MB): use a small
    evaluation batch for many views.

    An undecodable video yields a :class:`FailedVideo` instead (see the module docstring).

    Args:
        records: ``VideoRecord`` list, or an :class:`Annotations` (then ``classes`` defaults to its names).
        classes: class names; default ``"0" … str(max label)``.
        num_frames: frames per clip ``T``.
        sampling: ``"segment"`` (TSN: one frame per equal segment) or ``"dense"`` (``stride`` apart).
        test_clips, test_crops: test views (temporal × spatial).
        transform: ``callable(uint8 (T, H, W, 3), generator) -> tensor``; train: ``(C, T, S, S)``, test:
            ``(crops, C, T, S, S)``. Default: :class:`VideoTrainTransform` / :class:`VideoTestTransform`.
        seed: base seed of every random draw.

    Keys: an ``int`` index, or ``(index, seed)`` (as yielded by
    :class:`~videomap.train.batches.ResumableBatches` with ``seed_keys=True``) to fix that item's
    augmentation. With plain ``int`` keys, each process (main or DataLoader worker) draws from its own
    stream, seeded from ``seed``, the epoch (:meth:`set_epoch`) and the seed PyTorch gives the worker.
    """

    def __init__(self, records: Sequence[VideoRecord] | Annotations, classes: Sequence[str] | None = None, *,
                 mode: str = "train", num_frames: int = 16, sampling: str = "segment", stride: int = 4,
                 test_clips: int = 1, test_crops: int = 1, transform=None, input_size: int = 224, seed: int = 0):
        if isinstance(records, Annotations):
            classes = records.classes if classes is None else classes
            records = records.records
        if mode not in ("train", "test"):
            raise ValueError(f"mode must be 'train' or 'test', got {mode!r}")
        if sampling not in SAMPLING_METHODS:
            raise ValueError(f"sampling must be one of {SAMPLING_METHODS}, got {sampling!r}")
        self.records = [VideoRecord(str(r[0]), int(r[1])) for r in records]
        if classes is None:
            classes = [str(i) for i in range(max((r.label for r in self.records), default=-1) + 1)]
        self.classes = list(classes)
        bad = [r for r in self.records if not 0 <= r.label < len(self.classes)]
        if bad:
            raise ValueError(f"label {bad[0].label} of {bad[0].path} is outside [0, {len(self.classes)})")
        self.mode, self.num_frames, self.sampling, self.stride = mode, int(num_frames), sampling, int(stride)
        self.test_clips, self.test_crops = int(test_clips), int(test_crops)
        if transform is None:
            transform = (VideoTrainTransform(input_size) if mode == "train"
                         else VideoTestTransform(input_size, num_crops=self.test_crops))
        self.transform = transform
        self.seed, self.epoch = int(seed), 0
        self._stream: torch.Generator | None = None
        self._stream_key = None

    # ----------------------------------------------------------------------------- construction

    @classmethod
    def from_annotations(cls, path, fmt: str = "auto", root=None, *, classes=None, labels=None, split=None,
                         **kwargs) -> "VideoClassificationDataset":
        """Read annotations with :func:`read_annotations` and build the dataset (``kwargs`` → ``__init__``)."""
        ann = read_annotations(path, fmt, root, classes=classes, labels=labels, split=split)
        return cls(ann, **kwargs)

    @classmethod
    def from_preset(cls, preset: str | DatasetPreset, path, *, mode: str = "train", root=None, fmt: str = "auto",
                    classes=None, labels=None, split=None, seed: int = 0, **overrides) -> "VideoClassificationDataset":
        """Dataset with a :mod:`~videomap.data.presets` preset's sampling, views and augmentation.

        ``overrides`` replace preset fields (e.g. ``num_frames=8``, ``test_clips=1``). The COIN split
        defaults to ``"training"`` in train mode and ``"testing"`` otherwise.
        """
        p = get_preset(preset) if isinstance(preset, str) else preset
        if overrides:
            p = p.replace(**overrides)
        if classes is None and p.class_names is not None:
            classes = list(p.class_names)
        if split is None:  # only COIN's single JSON holds both splits
            split = "training" if mode == "train" else "testing"
        if mode == "train":
            transform = VideoTrainTransform(p.input_size, flip=p.flip, rand_augment=p.rand_augment, reprob=p.reprob)
        else:
            transform = VideoTestTransform(p.input_size, short_side=p.short_side, num_crops=p.test_crops)
        ann = read_annotations(path, fmt, root, classes=classes, labels=labels, split=split)
        return cls(ann, mode=mode, num_frames=p.num_frames, sampling=p.sampling, stride=p.stride,
                   test_clips=p.test_clips, test_crops=p.test_crops, transform=transform,
                   input_size=p.input_size, seed=seed)

    # --------------------------------------------------------------------------------- properties

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def num_views(self) -> int:
        return self.test_clips * self.test_crops if self.mode == "test" else 1

    @property
    def labels(self) -> list[int]:
        return [r.label for r in self.records]

    def __len__(self) -> int:
        return len(self.records)

    def set_epoch(self, epoch: int) -> None:
        """Start the epoch's random stream (main process; workers also mix in their own seed)."""
        self.epoch = int(epoch)

    # ------------------------------------------------------------------------------------ loading

    def _generator(self, index: int, seed: int | None) -> torch.Generator:
        if seed is not None:
            return make_generator(self.seed, int(seed))
        info = get_worker_info()
        key = (os.getpid(), self.epoch, None if info is None else info.seed)
        if self._stream is None or self._stream_key != key:
            self._stream = make_generator(self.seed, self.epoch, 0 if info is None else info.seed)
            self._stream_key = key
        return self._stream

    def __getstate__(self):
        # Worker processes build their own stream; never ship this process's one to them.
        state = self.__dict__.copy()
        state["_stream"], state["_stream_key"] = None, None
        return state

    def frame_indices(self, length: int, generator: torch.Generator):
        """Indices into a video of ``length`` frames: ``(T,)`` in train mode, ``(test_clips, T)`` in test mode."""
        return sample_indices(length, self.num_frames, method=self.sampling, train=self.mode == "train",
                              stride=self.stride, num_clips=self.test_clips, generator=generator)

    def __getitem__(self, key):
        index, seed = key if isinstance(key, tuple) else (key, None)
        index = int(index)
        record = self.records[index]
        g = self._generator(index, seed)
        try:
            indices = self.frame_indices(count_frames(record.path), g)
            frames = decode_frames(record.path, indices.reshape(-1))  # (K, H, W, 3) uint8
        except VideoDecodeError as e:
            log.debug("item %d: %s", index, e)
            return FailedVideo(index, record.path, e.reason)
        if self.mode == "train":
            video = self.transform(frames, g)
        else:
            clips = frames.view(self.test_clips, self.num_frames, *frames.shape[1:])
            views = [self.transform(clip, g) for clip in clips]
            video = torch.cat([v if v.ndim == 5 else v.unsqueeze(0) for v in views])
        return {"video": video, "label": record.label, "index": index, "path": record.path}

    def __repr__(self) -> str:
        return (f"VideoClassificationDataset(mode={self.mode!r}, videos={len(self)}, classes={self.num_classes}, "
                f"num_frames={self.num_frames}, sampling={self.sampling!r}, views={self.num_views}, "
                f"transform={self.transform!r})")


def collate_videos(batch: Sequence[dict | FailedVideo]) -> dict:
    """Stack the good samples and set the failed ones aside.

    Returns ``{"video": (B, ...) float or None if every item failed, "label": long (B,),
    "index": long (B,), "path": list[str], "failed": list[FailedVideo]}``.
    """
    good = [b for b in batch if not isinstance(b, FailedVideo)]
    failed = [b for b in batch if isinstance(b, FailedVideo)]
    return {
        "video": torch.stack([b["video"] for b in good]) if good else None,
        "label": torch.tensor([b["label"] for b in good], dtype=torch.long),
        "index": torch.tensor([b["index"] for b in good], dtype=torch.long),
        "path": [b["path"] for b in good],
        "failed": failed,
    }


def failed_video_records(reasons: Mapping[str, str]) -> list[dict]:
    """``[{"path", "reason"}, ...]`` sorted by path: how every report lists the videos that did not decode."""
    return [{"path": p, "reason": r} for p, r in sorted(reasons.items())]


def failure_summary(count: int, reasons: Mapping[str, str]) -> dict:
    """The failure keys of a training summary: loads that failed, distinct files, and each file's reason."""
    return {"failed_loads": int(count), "num_failed": len(reasons), "failed_videos": failed_video_records(reasons)}


class FailureLog:
    """Counts undecodable videos in the main process and logs each file the first time it fails.

    ``count`` is the number of failed loads (a file failing in three epochs counts three times);
    ``paths`` the distinct files, for ``results.json``.
    """

    def __init__(self, logger: logging.Logger | None = None, context: str = "training"):
        self.logger = logger or log
        self.context = context
        self.count = 0
        self.reasons: dict[str, str] = {}

    def update(self, failed: dict | Iterable[FailedVideo]) -> int:
        """Record failures from a collated batch (its ``"failed"`` list) or an iterable of markers.

        Returns the number of failures recorded.
        """
        items = failed["failed"] if isinstance(failed, dict) else failed
        n = 0
        for f in items:
            n += 1
            if f.path not in self.reasons:
                self.reasons[f.path] = f.reason
                self.logger.warning("%s: skipping undecodable video %s (%s); it is not replaced by another sample",
                                    self.context, f.path, f.reason)
        self.count += n
        return n

    def merge(self, other: "FailureLog") -> None:
        """Fold in another log (e.g. gathered from another rank)."""
        self.count += other.count
        for p, r in other.reasons.items():
            self.reasons.setdefault(p, r)

    @property
    def paths(self) -> list[str]:
        return sorted(self.reasons)

    @property
    def num_videos(self) -> int:
        return len(self.reasons)

    def summary(self) -> dict:
        """``{"failed_loads": count, "num_failed": distinct files, "failed_videos": [{"path", "reason"}]}``,
        JSON-ready; the same keys as every report that lists failed videos."""
        return failure_summary(self.count, self.reasons)

    def __len__(self) -> int:
        return self.count

    def __repr__(self) -> str:
        return f"FailureLog({self.context!r}, failed_loads={self.count}, videos={self.num_videos})"


def skip_failed(batches: Iterable[dict], failures: FailureLog) -> Iterator[dict]:
    """Yield collated batches after recording their failures in ``failures``; a batch in which every
    item failed is skipped. Wrap a DataLoader with it in training and evaluation loops."""
    for batch in batches:
        failures.update(batch["failed"])
        if batch["path"]:
            yield batch
