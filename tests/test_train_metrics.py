"""Classification metrics and the JSONL sink."""

import json
import math

import pytest
import torch

from videomap.train.metrics import (
    JsonlLogger,
    TensorBoardLogger,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    topk_accuracy,
)


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3], [0.2, 0.3, 0.5], [0.6, 0.3, 0.1]])
    target = torch.tensor([1, 2, 0, 2])
    acc = topk_accuracy(logits, target, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(0.25)
    assert acc[2] == pytest.approx(0.5)
    assert acc[5] == 1.0                                     # k beyond the class count: every row hits
    soft = torch.nn.functional.one_hot(target, 3).float() * 0.9 + 0.1 / 3
    assert topk_accuracy(logits, soft, ks=(1,))[1] == pytest.approx(0.25)


def test_confusion_and_class_accuracies():
    target = torch.tensor([0, 0, 0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 0, 0, 1, 1, 0, 2, 2])
    cm = confusion_matrix(pred, target, num_classes=4)
    assert cm.tolist() == [[3, 1, 0, 0], [1, 1, 0, 0], [0, 0, 2, 0], [0, 0, 0, 0]]
    acc = per_class_accuracy(cm)
    assert acc[:3].tolist() == pytest.approx([0.75, 0.5, 1.0]) and math.isnan(acc[3])
    assert mean_class_accuracy(cm) == pytest.approx(0.75)  # class 3 has no samples: not counted
    scores = torch.nn.functional.one_hot(pred, 4).float()
    assert torch.equal(confusion_matrix(scores, target, 4), cm)


def test_jsonl_logger_writes_strict_json(tmp_path):
    logger = JsonlLogger(tmp_path / "m" / "metrics.jsonl")
    logger.log({"step": 1, "loss": torch.tensor(0.5), "lr": 1e-3, "bad": float("nan"), "name": "x"})
    logger.log({"step": 2, "loss": 0.25})
    logger.close()
    lines = (tmp_path / "m" / "metrics.jsonl").read_text().splitlines()
    first = json.loads(lines[0])
    assert first == {"step": 1, "loss": 0.5, "lr": 1e-3, "bad": None, "name": "x"}
    assert json.loads(lines[1])["step"] == 2


def test_tensorboard_logger_is_optional(tmp_path):
    tb = TensorBoardLogger(tmp_path / "tb")
    tb.log({"train/loss": 1.0}, step=1)   # a no-op when tensorboard is not installed
    tb.close()
