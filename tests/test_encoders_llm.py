"""The video-LLM path: byte tokenizer, sequence building, projector training, generation, local LM directories."""

from __future__ import annotations

import pytest
import torch

import videomap
from videomap.encoders import ByteTokenizer, VideoEncoder

pytest.importorskip("transformers", reason="the video-LLM path needs transformers")

from videomap.encoders.llm import IGNORE_INDEX, build_video_llm, tiny_llama_config  # noqa: E402

ARCH = dict(schedule="MMMA", embed_dim=64, num_heads=2)
TINY_LM = dict(hidden_size=64, num_layers=2, num_heads=4)


def _encoder():
    torch.manual_seed(0)
    model = videomap.create_model("videomap_tiny", num_frames=4, img_size=32, num_classes=0, **ARCH)
    return VideoEncoder.from_pretrained(model)


def _llm(**kw):
    torch.manual_seed(0)
    return build_video_llm(_encoder(), llm_kwargs=TINY_LM, **kw)


def _frames(batch=2, frames=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (batch, frames, 32, 32, 3), generator=g, dtype=torch.uint8)


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    ids = tok.encode("a vidéo ✓", add_special_tokens=True)
    assert ids[0] == tok.bos_token_id and min(ids[1:]) >= tok.offset and len(tok) == 259
    assert tok.decode(ids) == "a vidéo ✓"
    assert tok.decode(ids + [tok.eos_token_id], skip_special_tokens=False) == "<s>a vidéo ✓</s>"


def test_inputs_put_labels_on_caption_tokens_only():
    llm = _llm(spatial_stride=2)
    video = _frames()
    captions = ["red", "a blue one"]
    inputs = llm.build_inputs(video, captions, prompt="<video> says:")
    n_video = llm.num_video_tokens((4, 2, 2))
    assert n_video == 4  # 4 frames x (2x2 patches pooled by 2)
    tok = llm.tokenizer
    prompt_len = 1 + 0 + n_video + len(tok.encode(" says:"))
    for b, caption in enumerate(captions):
        target = tok.encode(caption) + [tok.eos_token_id]
        labels = inputs["labels"][b]
        assert labels[:prompt_len].eq(IGNORE_INDEX).all()
        assert labels[prompt_len:prompt_len + len(target)].tolist() == target
        assert labels[prompt_len + len(target):].eq(IGNORE_INDEX).all()  # right padding
        assert inputs["attention_mask"][b].sum() == prompt_len + len(target)
    assert inputs["inputs_embeds"].shape == (2, prompt_len + len(tok.encode("a blue one")) + 1, 64)
    # Without captions (generation) rows are padded on the left and carry no labels.
    gen = llm.build_inputs(video, None, prompt=["<video>", "<video> longer prompt"])
    assert "labels" not in gen and gen["attention_mask"][0, 0] == 0 and gen["attention_mask"][:, -1].eq(1).all()


def test_projector_trains_and_the_rest_stays_frozen():
    llm = _llm(projector="mlp2x_gelu")
    trainable = {name for name, p in llm.named_parameters() if p.requires_grad}
    assert trainable and all(name.startswith("projector.") for name in trainable)
    video, captions = _frames(), ["a red square moves", "a blue circle waits"]
    optimizer = torch.optim.Adam(llm.trainable_parameters(), lr=1e-2)
    losses = []
    for _ in range(6):
        loss = llm(video, captions).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    assert all(p.grad is None for p in llm.encoder.parameters())
    assert all(p.grad is None for p in llm.language_model.parameters())


def test_generate_returns_text_per_video():
    llm = _llm(projector="linear", temporal_stride=2)
    texts = llm.generate(_frames(), max_new_tokens=5)
    assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
    chunked = llm.generate(_frames(frames=8), max_new_tokens=3, chunk_frames=4)
    assert len(chunked) == 2


def test_local_language_model_directory(tmp_path):
    """Any local causal-LM directory works through AutoModelForCausalLM / AutoTokenizer."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaForCausalLM, PreTrainedTokenizerFast

    words = ["<pad>", "<s>", "</s>", "[UNK]", "a", "red", "square", "Caption:", "moves"]
    backend = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>",
                                        pad_token="<pad>", unk_token="[UNK]")
    torch.manual_seed(0)
    LlamaForCausalLM(tiny_llama_config(len(words), **TINY_LM)).save_pretrained(tmp_path / "lm")
    tokenizer.save_pretrained(tmp_path / "lm")

    llm = build_video_llm(_encoder(), language_model=tmp_path / "lm", prompt="<video> Caption:")
    assert type(llm.tokenizer).__name__ != "ByteTokenizer"
    loss = llm(_frames(), ["a red square", "square moves"]).loss
    assert torch.isfinite(loss)
    assert len(llm.generate(_frames(), max_new_tokens=3)) == 2
