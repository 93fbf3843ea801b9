"""Per-dataset data defaults: annotation format, sampling, multi-view test views and augmentation.

Test views are ``test_clips`` temporal clips × ``test_crops`` spatial crops, predictions averaged per
video. The values follow VideoMamba's published fine-tuning protocols (segment sampling, 224² crops
from a 224 short side, RandAugment ``rand-m7-n4-mstd0.5-inc1``, random erasing 0.25, Mixup 0.8 /
CutMix 1.0, label smoothing 0.1, two repeated augmentations). Something-Something V2 is never flipped:
its classes name left/right.

| preset      | classes | format         | frames | test clips × crops | flip |
|-------------|---------|----------------|--------|--------------------|------|
| `k400`      | 400     | `kinetics_csv` | 16     | 4 × 3              | yes  |
| `ssv2`      | 174     | `ssv2`         | 16     | 2 × 3              | no   |
| `breakfast` | 10      | `breakfast`    | 32     | 4 × 3              | yes  |
| `coin`      | 180     | `coin`         | 32     | 10 × 3             | yes  |
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

from .annotations import BREAKFAST_CLASSES

__all__ = ["DatasetPreset", "DATASET_PRESETS", "get_preset"]


@dataclass(frozen=True)
class DatasetPreset:
    """Data-side defaults of one dataset (any field can be overridden with :meth:`replace`)."""

    name: str
    num_classes: int
    annotation_format: str
    num_frames: int = 16
    sampling: str = "segment"
    stride: int = 4  # only for sampling="dense"
    test_clips: int = 4
    test_crops: int = 3
    flip: bool = True
    input_size: int = 224
    short_side: int = 224
    rand_augment: str | None = "rand-m7-n4-mstd0.5-inc1"
    reprob: float = 0.25
    mixup: float = 0.8
    cutmix: float = 1.0
    label_smoothing: float = 0.1
    repeated_aug: int = 2
    class_names: tuple[str, ...] | None = None

    @property
    def num_views(self) -> int:
        return self.test_clips * self.test_crops

    def replace(self, **changes) -> "DatasetPreset":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        return asdict(self)


DATASET_PRESETS: dict[str, DatasetPreset] = {
    "k400": DatasetPreset("k400", 400, "kinetics_csv", num_frames=16, test_clips=4, test_crops=3),
    "ssv2": DatasetPreset("ssv2", 174, "ssv2", num_frames=16, test_clips=2, test_crops=3, flip=False),
    "breakfast": DatasetPreset("breakfast", 10, "breakfast", num_frames=32, test_clips=4, test_crops=3,
                               class_names=BREAKFAST_CLASSES),
    "coin": DatasetPreset("coin", 180, "coin", num_frames=32, test_clips=10, test_crops=3),
}

_ALIASES = {"kinetics": "k400", "kinetics400": "k400", "kinetics-400": "k400", "k-400": "k400",
            "sthsthv2": "ssv2", "something-something-v2": "ssv2", "sthv2": "ssv2"}


def get_preset(name: str) -> DatasetPreset:
    """The preset for ``name`` (case-insensitive; ``kinetics400`` and similar aliases accepted)."""
    key = name.lower()
    key = _ALIASES.get(key, key)
    if key not in DATASET_PRESETS:
        raise KeyError(f"no data preset {name!r}; known: {sorted(DATASET_PRESETS)}")
    return DATASET_PRESETS[key]
