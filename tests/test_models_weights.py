"""The one model-folder writer (`save_pretrained`) and the one loader (`load_model`): what they write, that a
failed write loses nothing, and that every public way of loading reads a folder the same way."""

import json

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

import videomap
from videomap.encoders import VideoEncoder
from videomap.models import VideoMAP, create_model, load_model, save_pretrained
from videomap.models import weights

TINY = dict(num_frames=4, img_size=32, embed_dim=32, schedule="MMA", num_heads=2)


def tiny(num_classes=3, seed=0):
    torch.manual_seed(seed)
    return create_model("videomap_tiny", num_classes=num_classes, **TINY)


def test_a_plain_module_with_tied_weights_is_written_with_its_config(tmp_path):
    m = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3))
    m[1].weight = m[0].weight  # tied weights share storage, which safetensors refuses unless copied
    out = save_pretrained(m, tmp_path / "enc", config={"dim": 4})
    tensors = load_file(out / "model.safetensors")
    assert set(tensors) == set(m.state_dict())
    assert all(torch.equal(tensors[k], v) for k, v in m.state_dict().items())
    assert json.loads((out / "config.json").read_text()) == {"dim": 4}


def test_extra_files_are_written_as_json_beside_the_weights(tmp_path):
    out = save_pretrained(tiny(), tmp_path / "m", files={"classes.json": ["ä", "b", "c"], "info.json": {"step": 3}})
    assert json.loads((out / "classes.json").read_text(encoding="utf-8")) == ["ä", "b", "c"]
    assert json.loads((out / "info.json").read_text()) == {"step": 3}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]  # no temporary folder left behind


def test_a_failed_write_leaves_the_previous_folder_whole(tmp_path, monkeypatch):
    folder = tmp_path / "best"
    first = tiny(seed=0)
    save_pretrained(first, folder, files={"classes.json": ["a", "b", "c"]})
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    real_write = weights.atomic_write

    def disk_full_at_the_classes(path, write, mode="wb"):
        if path.name == "classes.json":  # the new weights are already written by then
            raise OSError("disk full")
        return real_write(path, write, mode)

    monkeypatch.setattr(weights, "atomic_write", disk_full_at_the_classes)
    with pytest.raises(OSError, match="disk full"):
        save_pretrained(tiny(seed=1), folder, files={"classes.json": ["x", "y", "z"]})
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before  # old weights with old classes
    monkeypatch.undo()
    save_pretrained(tiny(seed=1), folder, files={"classes.json": ["x", "y", "z"]})  # a later write recovers
    assert json.loads((folder / "classes.json").read_text()) == ["x", "y", "z"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best"]


def test_files_of_yours_in_the_folder_are_kept(tmp_path):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("keep me")
    model = tiny()
    save_pretrained(model, folder)
    assert (folder / "notes.txt").read_text() == "keep me"
    assert torch.equal(load_model(folder).head.weight, model.head.weight)


def test_every_public_loader_reads_a_folder_the_same_way(tmp_path):
    model = tiny()
    model.save_pretrained(tmp_path / "m")
    x = torch.randn(1, 3, 8, 32, 32, generator=torch.Generator().manual_seed(0))
    ref = model.eval().forward_features(torch.nn.functional.interpolate(x, size=(4, 32, 32)))
    loaded = [load_model(tmp_path / "m"), VideoMAP.from_pretrained(tmp_path / "m"),
              create_model("videomap_tiny", checkpoint_path=tmp_path / "m", **TINY)]
    for other in loaded:
        other.eval()
        assert other.schedule == "MMA"
        assert torch.equal(other.forward_features(torch.nn.functional.interpolate(x, size=(4, 32, 32))), ref)
    encoder = VideoEncoder.from_pretrained(tmp_path / "m", layer=-1, norm=True)
    assert encoder.model.num_classes == 0
    own = {k: v for k, v in model.state_dict().items() if not k.startswith("head.")}
    assert encoder.model.state_dict().keys() == own.keys()
    assert all(torch.equal(encoder.model.state_dict()[k], v) for k, v in own.items())


def test_bare_weights_need_their_architecture_and_keep_their_head(tmp_path):
    model = tiny(num_classes=5)
    torch.save(model.state_dict(), tmp_path / "w.pt")
    with pytest.raises(ValueError, match="without a config.json.*name their architecture"):
        load_model(tmp_path / "w.pt")
    again = load_model(tmp_path / "w.pt", "videomap_tiny", **{k: v for k, v in TINY.items()})
    assert again.num_classes == 5 and torch.equal(again.head.weight, model.head.weight)
    headless = load_model(tmp_path / "w.pt", "videomap_tiny", with_head=False, num_classes=0, **TINY)
    assert headless.num_classes == 0


def test_match_name_refuses_another_architecture_but_a_plain_load_takes_it(tmp_path):
    tiny().save_pretrained(tmp_path / "m")
    with pytest.raises(ValueError, match="is not a videomap_small"):
        load_model(tmp_path / "m", "videomap_small", match_name=True)
    assert load_model(tmp_path / "m", "videomap_small").embed_dim == 32  # the folder's config decides


def test_top_level_names_resolve_lazily_to_the_same_objects():
    assert videomap.create_model is create_model and videomap.VideoMAP is VideoMAP
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        videomap.not_a_name
