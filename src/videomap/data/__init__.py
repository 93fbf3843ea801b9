"""videomap.data: annotation readers, PyAV decoding, frame sampling, video transforms, Mixup/CutMix
and the video classification dataset (DESIGN §5).

Layout conventions: decoded clips are ``uint8 (T, H, W, 3)``; transforms work on ``(C, T, H, W)``;
the pipeline's output is normalised float ``(C, T, H, W)`` per clip, ``(B, C, T, H, W)`` per batch.
PyAV is imported only when a video is opened (``pip install av``).
"""

from .annotations import (
    BREAKFAST_CLASSES,
    FORMATS,
    VIDEO_EXTENSIONS,
    AnnotationError,
    Annotations,
    VideoRecord,
    detect_format,
    read_annotations,
    read_breakfast,
    read_class_names,
    read_coin,
    read_folder,
    read_kinetics_csv,
    read_list,
    read_ssv2,
)
from .dataset import (FailedVideo, FailureLog, VideoClassificationDataset, collate_videos, failed_video_records,
                      failure_summary, skip_failed)
from .decode import VideoDecodeError, VideoInfo, count_frames, decode_frames, decode_video, probe_video
from .mixup import Mixup, smooth_one_hot, soft_target_cross_entropy
from .presets import DATASET_PRESETS, DatasetPreset, get_preset
from .randaugment import RAND_AUGMENT_OPS, RandAugment
from .sampling import (
    clamp_indices,
    dense_test_indices,
    dense_train_indices,
    sample_indices,
    segment_test_indices,
    segment_train_indices,
)
from .seeding import make_generator, mix_seed, seed_worker
from .transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VideoTestTransform,
    VideoTrainTransform,
    center_crop,
    hflip,
    multi_scale_crop,
    normalize,
    random_erasing,
    random_hflip,
    random_resized_crop,
    resize,
    short_side_resize,
    spatial_crops,
    to_cthw,
)

__all__ = [
    # annotations
    "VideoRecord", "Annotations", "AnnotationError", "FORMATS", "VIDEO_EXTENSIONS", "BREAKFAST_CLASSES",
    "read_annotations", "read_list", "read_kinetics_csv", "read_ssv2", "read_breakfast", "read_coin",
    "read_folder", "read_class_names", "detect_format",
    # decoding
    "VideoDecodeError", "VideoInfo", "probe_video", "count_frames", "decode_video", "decode_frames",
    # sampling
    "segment_train_indices", "segment_test_indices", "dense_train_indices", "dense_test_indices",
    "sample_indices", "clamp_indices",
    # transforms
    "IMAGENET_MEAN", "IMAGENET_STD", "to_cthw", "resize", "short_side_resize", "center_crop", "spatial_crops",
    "random_resized_crop", "multi_scale_crop", "hflip", "random_hflip", "normalize", "random_erasing",
    "RandAugment", "RAND_AUGMENT_OPS", "VideoTrainTransform", "VideoTestTransform",
    # batches
    "Mixup", "smooth_one_hot", "soft_target_cross_entropy",
    "make_generator", "mix_seed", "seed_worker",
    # dataset
    "VideoClassificationDataset", "FailedVideo", "FailureLog", "collate_videos", "skip_failed", "failed_video_records",
    "failure_summary",
    "DatasetPreset", "DATASET_PRESETS", "get_preset",
]
