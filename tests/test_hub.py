"""Interoperability: the hub mixin (offline, on local directories), the transformers wrapper and hubconf.py."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

import videomap
from videomap.models import CheckpointMismatchError, VideoMAP

REPO_ROOT = Path(__file__).resolve().parents[1]
ARCH = dict(schedule="MMA", embed_dim=64, num_heads=2)  # a small stand-in for the registered rows
SMALL = dict(num_frames=2, img_size=32, num_classes=3, **ARCH)


def _model(**kw):
    torch.manual_seed(0)
    return videomap.create_model("videomap_tiny", **{**SMALL, **kw}).eval()


def _x(frames=2):
    return torch.randn(2, 3, frames, 32, 32, generator=torch.Generator().manual_seed(1))


# ---------------------------------------------------------------------------------------------- hub mixin


def test_hub_model_round_trips_through_a_directory(tmp_path):
    hub = pytest.importorskip("videomap.models.hub", reason="huggingface_hub is not installed")
    model = _model()
    wrapped = hub.VideoMAPHub.from_model(model)
    wrapped.save_pretrained(tmp_path / "m")
    assert {p.name for p in (tmp_path / "m").iterdir()} == {"config.json", "model.safetensors", "README.md"}
    assert "library_name: videomap" in (tmp_path / "m" / "README.md").read_text()
    loaded = hub.VideoMAPHub.from_pretrained(tmp_path / "m").eval()
    assert isinstance(loaded, hub.VideoMAPHub) and loaded.config == model.config
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))
        # The same directory is an ordinary videomap checkpoint, and the reverse holds too.
        assert torch.equal(videomap.create_model("videomap_tiny", checkpoint_path=tmp_path / "m", **ARCH).eval()(_x()), model(_x()))
        model.save_pretrained(tmp_path / "plain")
        assert torch.equal(hub.VideoMAPHub.from_pretrained(tmp_path / "plain").eval()(_x()), model(_x()))
    longer = hub.VideoMAPHub.from_pretrained(tmp_path / "m", num_frames=4)
    assert longer.temporal_pos_embedding.shape[1] == 4


def test_push_to_hub_and_load_by_repo_id_offline(tmp_path, monkeypatch):
    hub = pytest.importorskip("videomap.models.hub", reason="huggingface_hub is not installed")
    import huggingface_hub.hub_mixin as mixin

    remote = tmp_path / "remote"

    class FakeApi:  # records what push_to_hub would upload, instead of talking to the network
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            return type("Url", (), {"repo_id": repo_id})()

        def upload_folder(self, repo_id, folder_path, **kwargs):
            shutil.copytree(folder_path, remote / repo_id)
            return f"https://example.invalid/{repo_id}"

    def fake_snapshot_download(repo_id, allow_patterns=None, **kwargs):
        assert set(allow_patterns) == {"config.json", "model.safetensors"}
        return str(remote / repo_id)

    monkeypatch.setattr(mixin, "HfApi", FakeApi)
    monkeypatch.setattr(hub, "snapshot_download", fake_snapshot_download)
    model = _model()
    hub.VideoMAPHub.from_model(model).push_to_hub("someone/videomap-test")
    assert (remote / "someone/videomap-test" / "model.safetensors").exists()
    loaded = hub.VideoMAPHub.from_pretrained("someone/videomap-test").eval()
    with torch.no_grad():
        assert torch.equal(loaded(_x()), model(_x()))
    # The video-LLM encoder takes hub ids too.
    from videomap.encoders import VideoEncoder

    encoder = VideoEncoder.from_pretrained("someone/videomap-test", layer=-1)
    with torch.no_grad():
        torch.testing.assert_close(encoder.encode_video(_x()).tokens.flatten(1, 2), model.forward_features(_x())[:, 1:])


def test_hub_loading_reports_missing_keys(tmp_path):
    hub = pytest.importorskip("videomap.models.hub", reason="huggingface_hub is not installed")
    from safetensors.torch import load_file, save_file

    _model().save_pretrained(tmp_path / "m")
    state = load_file(tmp_path / "m" / "model.safetensors")
    del state["layers.0.mixer.A_log"]
    save_file(state, tmp_path / "m" / "model.safetensors")
    with pytest.raises(CheckpointMismatchError, match=r"layers\.0\.mixer\.A_log"):
        hub.VideoMAPHub.from_pretrained(tmp_path / "m")


# ---------------------------------------------------------------------------------------------- transformers


def test_transformers_wrapper_matches_and_round_trips(tmp_path):
    hf = pytest.importorskip("videomap.models.hf", reason="transformers is not installed")
    from transformers import AutoConfig, AutoModelForVideoClassification

    model = _model()
    wrapped = hf.VideoMAPForVideoClassification.from_videomap(model, id2label={0: "a", 1: "b", 2: "c"}).eval()
    pixel_values = _x().permute(0, 2, 1, 3, 4)  # transformers video layout (B, T, C, H, W)
    labels = torch.tensor([0, 2])
    with torch.no_grad():
        out = wrapped(pixel_values=pixel_values, labels=labels, output_hidden_states=True)
        expected = model(_x())
    assert torch.equal(out.logits, expected)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(expected, labels))
    assert out.hidden_states[0].shape == (2, 1 + 2 * 4, 64)

    wrapped.save_pretrained(tmp_path / "hf")
    loaded = AutoModelForVideoClassification.from_pretrained(tmp_path / "hf").eval()
    assert isinstance(loaded, hf.VideoMAPForVideoClassification)
    assert loaded.config.id2label == {0: "a", 1: "b", 2: "c"}
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=pixel_values).logits, expected)
    assert loaded.to_videomap().config == model.config

    config = AutoConfig.for_model("videomap", videomap=dict(SMALL), num_labels=5)
    fresh = AutoModelForVideoClassification.from_config(config)
    assert fresh.videomap.num_classes == 5
    with pytest.raises(ValueError, match="B, T, C, H, W"):
        fresh(pixel_values=_x()[0])


# ---------------------------------------------------------------------------------------------- torch.hub


def test_hubconf_entry_points(tmp_path):
    model = torch.hub.load(str(REPO_ROOT), "videomap_tiny", source="local", **SMALL).eval()
    assert isinstance(model, VideoMAP) and model.num_classes == 3
    model.save_pretrained(tmp_path / "m")
    again = torch.hub.load(str(REPO_ROOT), "videomap_tiny", source="local", checkpoint_path=str(tmp_path / "m"),
                           **ARCH).eval()
    with torch.no_grad():
        assert torch.equal(again(_x()), model(_x()))
    encoder = torch.hub.load(str(REPO_ROOT), "video_encoder", str(tmp_path / "m"), source="local")
    assert encoder.hidden_size == 64
