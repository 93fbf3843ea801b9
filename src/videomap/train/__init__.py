"""videomap.train: the training machinery shared by ``videomap pretrain``, ``finetune`` and ``eval``.

One module per job:

* :mod:`~videomap.train.config`: typed dataclass configs, YAML recipes, dotted overrides;
* :mod:`~videomap.train.runtime`: one process or ``torchrun`` (DDP), device, seeding, bf16 autocast;
* :mod:`~videomap.train.optim`: parameter groups (weight-decay split, layer-wise lr decay), AdamW;
* :mod:`~videomap.train.schedule`: warmup + cosine as pure functions of the step;
* :mod:`~videomap.train.batches`: resumable, rank-sharded data order;
* :mod:`~videomap.train.checkpoint`: atomic ``weights_only`` checkpoints and model folders;
* :mod:`~videomap.train.loop`: the :class:`Trainer`;
* :mod:`~videomap.train.callbacks`: hooks for periodic extras, evaluation, exports;
* :mod:`~videomap.train.failures`: the synced, checkpointed count of undecodable training videos;
* :mod:`~videomap.train.metrics`: accuracy metrics, ``metrics.jsonl``, TensorBoard.
"""

from .batches import ResumableBatches, epoch_permutation, sample_seed
from .callbacks import Callback, Every, ExportModel
from .checkpoint import (
    CheckpointError,
    checkpoint_path,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from .config import (
    Config,
    ConfigError,
    DataConfig,
    EvalConfig,
    FinetuneConfig,
    ModelConfig,
    OptimConfig,
    PretrainConfig,
    TrainConfig,
    apply_overrides,
    load_config,
    save_config,
)
from .failures import FailureCounter, stand_in_clip
from .loop import NonFiniteLossError, Trainer, TrainResult
from .metrics import JsonlLogger, confusion_matrix, mean_class_accuracy, per_class_accuracy, topk_accuracy
from .optim import build_optimizer, param_groups, set_lr
from .runtime import Runtime, autocast, runtime_scope, seed_everything, select_device
from .schedule import build_lr_fn, cosine, warmup_cosine

__all__ = [
    "Callback", "CheckpointError", "Config", "ConfigError", "DataConfig", "EvalConfig", "Every", "ExportModel",
    "FailureCounter", "FinetuneConfig", "JsonlLogger", "ModelConfig", "NonFiniteLossError", "OptimConfig",
    "PretrainConfig", "ResumableBatches", "Runtime", "TrainConfig", "Trainer", "TrainResult", "apply_overrides",
    "autocast", "build_lr_fn", "build_optimizer", "checkpoint_path", "confusion_matrix", "cosine",
    "epoch_permutation", "load_checkpoint", "load_config", "mean_class_accuracy", "param_groups",
    "per_class_accuracy", "resolve_resume", "runtime_scope", "sample_seed", "save_checkpoint", "save_config",
    "seed_everything", "select_device", "set_lr", "stand_in_clip", "topk_accuracy",
    "warmup_cosine",
]
