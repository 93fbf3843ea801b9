"""Typed configs: YAML recipes, ``_base_`` inheritance, dotted overrides, unknown-key errors, round trip."""

from pathlib import Path

import pytest

from videomap.train.config import (
    Config,
    ConfigError,
    apply_overrides,
    config_to_dict,
    load_config,
    save_config,
)

REPO = Path(__file__).resolve().parents[1]
DEMO = REPO / "configs" / "pretrain" / "videomap_tiny_demo.yaml"


def test_defaults_have_the_documented_keys():
    cfg = Config()
    d = config_to_dict(cfg)
    assert set(d) == {"model", "data", "train", "optim", "pretrain", "finetune", "eval"}
    for dotted in [
        "model.name", "model.num_classes", "model.checkpoint", "model.drop_path_rate",
        "data.train", "data.val", "data.test", "data.root", "data.format", "data.num_frames", "data.img_size",
        "data.num_workers", "data.test_clips", "data.test_crops",
        "train.batch_size", "train.max_steps", "train.epochs", "train.output_dir", "train.seed", "train.resume",
        "train.precision", "train.grad_accum", "train.clip_grad", "train.log_every", "train.save_every",
        "train.max_bad_steps",
        "optim.lr", "optim.min_lr", "optim.weight_decay", "optim.warmup_steps", "optim.layer_decay", "optim.betas",
        "pretrain.target", "pretrain.predict", "pretrain.mask_ratio", "pretrain.clip_teacher",
    ]:
        section, key = dotted.split(".")
        assert key in d[section], dotted


def test_demo_recipe_loads():
    cfg = load_config(DEMO)
    assert cfg.model.name == "videomap_tiny"
    assert cfg.optim.betas == (0.9, 0.95)
    assert isinstance(cfg.optim.lr, float) and cfg.optim.lr == 5e-4
    assert cfg.pretrain.target == "pixel"
    assert cfg.train.resume == "auto"


def test_overrides_are_coerced_to_field_types():
    cfg = load_config(DEMO, [
        "optim.lr=1e-4",            # PyYAML reads this as a string; the field type makes it a float
        "train.max_steps=10",
        "train.clip_grad=0.5",
        "optim.betas=[0.9,0.99]",
        "model.num_classes=null",
        "data.test_clips=4",
        "train.precision=bf16",
        "pretrain.mask_whole_frames=true",
        "train.resume=/tmp/some run/last.pt",
        "model.kwargs={merge: sum}",
        "train.output_dir=123",
    ])
    assert cfg.optim.lr == pytest.approx(1e-4) and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_steps == 10 and isinstance(cfg.train.max_steps, int)
    assert cfg.train.clip_grad == 0.5
    assert cfg.optim.betas == (0.9, 0.99)
    assert cfg.model.num_classes is None
    assert cfg.data.test_clips == 4
    assert cfg.train.precision == "bf16"
    assert cfg.pretrain.mask_whole_frames is True
    assert cfg.train.resume == "/tmp/some run/last.pt"
    assert cfg.model.kwargs == {"merge": "sum"}
    assert cfg.train.output_dir == "123"


@pytest.mark.parametrize("override, needle", [
    ("optim.lrr=1e-4", "optim.lrr"),
    ("optim.lrr=1e-4", "Did you mean 'lr'"),
    ("optim.lrr=1e-4", "min_lr"),              # the valid keys are listed
    ("optimizer.lr=1e-4", "optimizer"),
    ("train.precision=fp16", "'fp32'"),
    ("train.max_steps=ten", "train.max_steps"),
    ("optim.betas=[0.9]", "optim.betas"),
    ("lr=1e-4", "section.key"),
    ("optim.lr", "section.key=value"),
])
def test_bad_overrides_name_the_problem(override, needle):
    with pytest.raises(ConfigError) as e:
        load_config(DEMO, [override])
    assert needle in str(e.value)


def test_unknown_key_in_recipe_is_an_error(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("train:\n  batch_size: 4\n  max_step: 10\n")
    with pytest.raises(ConfigError, match=r"train\.max_step.*max_steps"):
        load_config(p)


def test_base_inheritance_merges_sections(tmp_path):
    (tmp_path / "sub").mkdir()
    base = tmp_path / "base.yaml"
    base.write_text("model:\n  name: videomap_small\n  drop_path_rate: 0.1\noptim:\n  lr: 1.0e-3\n")
    child = tmp_path / "sub" / "child.yaml"
    child.write_text(f"_base_: [{DEMO}, ../base.yaml]\nmodel:\n  drop_path_rate: 0.2\n")
    cfg = load_config(child, ["optim.weight_decay=0.1"])
    assert cfg.model.name == "videomap_small"          # from the later base
    assert cfg.model.drop_path_rate == 0.2             # the file beats its bases
    assert cfg.optim.lr == 1e-3
    assert cfg.optim.betas == (0.9, 0.95)              # from the first base, untouched by the second
    assert cfg.optim.weight_decay == 0.1               # overrides beat the file


def test_base_cycle_is_reported(tmp_path):
    (tmp_path / "a.yaml").write_text("_base_: b.yaml\n")
    (tmp_path / "b.yaml").write_text("_base_: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_config(tmp_path / "a.yaml")


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(DEMO, ["optim.lr=3e-4", "model.num_classes=7", "model.kwargs={merge: sum}"])
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(path) == cfg


def test_apply_overrides_leaves_the_original_alone():
    cfg = Config()
    new = apply_overrides(cfg, ["optim.lr=0.5"])
    assert new.optim.lr == 0.5 and cfg.optim.lr != 0.5
