"""A working video-LLM path: video → :class:`VideoEncoder` → token reducer → projector → ``inputs_embeds`` of
a Hugging Face causal language model.

Each sample's sequence is ``[bos] prompt-before-<video> [video tokens] prompt-after-<video> caption [eos]``.
The loss is on the caption (and its end token) only: every other position has label ``-100``. With the
encoder and the language model frozen (the default), the projector is what trains — LLaVA's first stage.

The language model is any local ``transformers`` causal-LM directory (with its tokenizer), or by default a
small randomly initialised Llama with the built-in :class:`~videomap.encoders.tokenizer.ByteTokenizer`, which
needs no download. ``transformers`` is imported only here (``pip install 'videomap[hf]'``).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from .encoder import VideoEncoder
from .projectors import build_projector
from .reducers import TokenReducer
from .tokenizer import ByteTokenizer

VIDEO_PLACEHOLDER = "<video>"
DEFAULT_PROMPT = "<video>\nCaption: "
IGNORE_INDEX = -100


def _transformers():
    try:
        import transformers
    except ImportError as error:
        raise ImportError(
            "the video-LLM path needs transformers: pip install 'videomap[hf]' (or pip install transformers)"
        ) from error
    return transformers


def tiny_llama_config(
    vocab_size: int,
    hidden_size: int = 128,
    num_layers: int = 2,
    num_heads: int = 4,
    intermediate_size: int | None = None,
    max_position_embeddings: int = 8192,
    bos_token_id: int = ByteTokenizer.bos_token_id,
    eos_token_id: int = ByteTokenizer.eos_token_id,
    pad_token_id: int = ByteTokenizer.pad_token_id,
):
    """A small Llama-style ``LlamaConfig`` (randomly initialised when built): the default language model."""
    transformers = _transformers()
    return transformers.LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size or 2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=bos_token_id,
        eos_token_id=eos_token_id,
        pad_token_id=pad_token_id,
        tie_word_embeddings=False,
    )


def load_language_model(
    path: str | os.PathLike | None = None,
    tokenizer_path: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
    **tiny_config,
):
    """``(causal LM, tokenizer)``.

    ``path=None`` gives a randomly initialised :func:`tiny_llama_config` model (``tiny_config`` sets its
    sizes) and a :class:`ByteTokenizer`. Otherwise ``AutoModelForCausalLM`` and ``AutoTokenizer`` read the
    local directory (``tokenizer_path`` if the tokenizer lives elsewhere); nothing is downloaded.
    """
    transformers = _transformers()
    if path is None:
        tokenizer = ByteTokenizer()
        model = transformers.LlamaForCausalLM(tiny_llama_config(len(tokenizer), **tiny_config))
        return (model.to(dtype) if dtype is not None else model), tokenizer
    kwargs = {"local_files_only": True}
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path), dtype=dtype, **kwargs) if dtype else \
        transformers.AutoModelForCausalLM.from_pretrained(str(path), **kwargs)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer_path or path), **kwargs)
    return model, tokenizer


class VideoLLM(nn.Module):
    """Encoder + reducer + projector + causal LM.

    Args:
        encoder: a :class:`VideoEncoder`.
        language_model: a ``transformers`` causal LM (anything with ``get_input_embeddings`` and
            ``generate`` that takes ``inputs_embeds``).
        tokenizer: ``encode(text, add_special_tokens=False)``, ``decode(ids, skip_special_tokens=True)`` and
            ``bos_token_id``/``eos_token_id``/``pad_token_id`` (a ``transformers`` tokenizer, or
            :class:`ByteTokenizer`).
        projector: a kind for :func:`~videomap.encoders.projectors.build_projector` (``"linear"``,
            ``"mlp2x_gelu"``) or a module mapping ``D`` to the LM's hidden size.
        reducer: a :class:`TokenReducer` applied to the encoder's ``(B, T', N, D)`` grid first.
        prompt: the default prompt; ``<video>`` marks where the video tokens go (at the front if absent).
    """

    def __init__(
        self,
        encoder: VideoEncoder,
        language_model: nn.Module,
        tokenizer,
        projector: str | nn.Module = "mlp2x_gelu",
        reducer: TokenReducer | None = None,
        prompt: str = DEFAULT_PROMPT,
    ):
        super().__init__()
        self.encoder = encoder
        self.language_model = language_model
        self.tokenizer = tokenizer
        width = language_model.get_input_embeddings().embedding_dim
        self.projector = build_projector(projector, encoder.hidden_size, width) if isinstance(projector, str) else projector
        self.reducer = reducer or TokenReducer()
        self.prompt = prompt

    # ------------------------------------------------------------------ parts

    def freeze_encoder(self) -> VideoLLM:
        self.encoder.freeze()
        return self

    def freeze_language_model(self) -> VideoLLM:
        self.language_model.requires_grad_(False)
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else self.tokenizer.eos_token_id

    def _embed_dtype(self) -> torch.dtype:
        return self.language_model.get_input_embeddings().weight.dtype

    def video_embeddings(self, video, chunk_frames: int | None = None) -> torch.Tensor:
        """Encoded, reduced and projected video tokens, ``(B, L_v, H)`` with ``L_v = T''·N'`` in time order."""
        out = self.encoder.encode_video(video, chunk_frames=chunk_frames)
        tokens = self.reducer(out.tokens, grid_hw=out.grid[1:])
        projected = self.projector(tokens.flatten(1, 2).to(next(self.projector.parameters(), tokens).dtype))
        return projected.to(self._embed_dtype())

    def num_video_tokens(self, grid: tuple[int, int, int]) -> int:
        """How many LLM positions a video of encoder grid ``(T', Hg, Wg)`` takes."""
        t, h, w = self.reducer.output_grid(grid)
        return t * h * w

    # ------------------------------------------------------------------ sequences

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer.encode(text, add_special_tokens=False)) if text else []

    @staticmethod
    def _per_sample(value, batch: int, what: str) -> list:
        if isinstance(value, str):
            return [value] * batch
        value = list(value)
        if len(value) != batch:
            raise ValueError(f"{len(value)} {what} for a batch of {batch} videos")
        return value

    def build_inputs(
        self,
        video,
        captions: str | Sequence[str] | None = None,
        prompt: str | Sequence[str] | None = None,
        chunk_frames: int | None = None,
    ) -> dict[str, torch.Tensor]:
        """``inputs_embeds (B, L, H)``, ``attention_mask (B, L)`` and, with ``captions``, ``labels (B, L)``
        (``-100`` everywhere but the caption tokens and the end token).

        Sequences are padded on the right when captions are given (training) and on the left otherwise
        (generation continues every row from its last real position).
        """
        visual = self.video_embeddings(video, chunk_frames)
        batch, device = visual.shape[0], visual.device
        prompts = self._per_sample(prompt if prompt is not None else self.prompt, batch, "prompts")
        targets = self._per_sample(captions, batch, "captions") if captions is not None else None
        embed = self.language_model.get_input_embeddings()
        bos = getattr(self.tokenizer, "bos_token_id", None)

        rows, row_labels = [], []
        for b in range(batch):
            before, sep, after = prompts[b].partition(VIDEO_PLACEHOLDER)
            if not sep:  # no placeholder: the video goes first
                before, after = "", prompts[b]
            head = ([bos] if bos is not None else []) + self._ids(before)
            middle = self._ids(after)
            tail = self._ids(targets[b]) + [self.tokenizer.eos_token_id] if targets is not None else []

            def emb(ids):
                return embed(torch.tensor(ids, dtype=torch.long, device=device))

            rows.append(torch.cat([emb(head), visual[b], emb(middle), emb(tail)], dim=0))
            row_labels.append([IGNORE_INDEX] * (len(head) + visual.shape[1] + len(middle)) + tail)

        length = max(r.shape[0] for r in rows)
        inputs = visual.new_zeros(batch, length, visual.shape[-1])
        mask = torch.zeros(batch, length, dtype=torch.long, device=device)
        labels = torch.full((batch, length), IGNORE_INDEX, dtype=torch.long, device=device)
        for b, row in enumerate(rows):
            n = row.shape[0]
            span = slice(0, n) if targets is not None else slice(length - n, length)
            inputs[b, span] = row
            mask[b, span] = 1
            labels[b, span] = torch.tensor(row_labels[b], dtype=torch.long, device=device)
        out = {"inputs_embeds": inputs, "attention_mask": mask}
        if targets is not None:
            out["labels"] = labels
        return out

    # ------------------------------------------------------------------ training and generation

    def forward(self, video, captions: str | Sequence[str], prompt=None, chunk_frames: int | None = None):
        """The language model's output for ``video`` followed by ``captions``; ``.loss`` is the mean
        cross-entropy over caption tokens."""
        return self.language_model(**self.build_inputs(video, captions, prompt, chunk_frames))

    @torch.no_grad()
    def generate(self, video, prompt=None, max_new_tokens: int = 32, chunk_frames: int | None = None,
                 **generate_kwargs) -> list[str]:
        """Continue ``prompt`` after each video; greedy unless ``generate_kwargs`` say otherwise."""
        inputs = self.build_inputs(video, None, prompt, chunk_frames)
        generate_kwargs.setdefault("do_sample", False)
        ids = self.language_model.generate(
            **inputs, max_new_tokens=max_new_tokens, eos_token_id=self.tokenizer.eos_token_id,
            pad_token_id=self.pad_token_id, **generate_kwargs,
        )
        return [self.tokenizer.decode(row.tolist(), skip_special_tokens=True) for row in ids]


def build_video_llm(
    encoder: str | os.PathLike | VideoEncoder = "videomap_tiny",
    language_model: str | os.PathLike | nn.Module | None = None,
    tokenizer=None,
    projector: str = "mlp2x_gelu",
    spatial_stride: int = 1,
    temporal_stride: int = 1,
    prompt: str = DEFAULT_PROMPT,
    freeze_encoder: bool = True,
    freeze_language_model: bool = True,
    encoder_kwargs: dict | None = None,
    llm_kwargs: dict | None = None,
) -> VideoLLM:
    """Assemble a :class:`VideoLLM`.

    Args:
        encoder: a :class:`VideoEncoder`, or what :meth:`VideoEncoder.from_pretrained` takes (with
            ``encoder_kwargs``).
        language_model: a causal-LM module (then pass ``tokenizer``), a local model directory, or ``None``
            for the tiny random Llama and the byte tokenizer (``llm_kwargs`` go to :func:`load_language_model`).
        projector: ``"linear"`` or ``"mlp2x_gelu"`` (or ``"mlp<n>x_gelu"``).
        spatial_stride, temporal_stride: token reduction before the projector.
        freeze_encoder, freeze_language_model: leave only the projector trainable (the defaults).
    """
    if not isinstance(encoder, VideoEncoder):
        encoder = VideoEncoder.from_pretrained(encoder, **(encoder_kwargs or {}))
    if language_model is None or isinstance(language_model, (str, os.PathLike)):
        language_model, loaded_tokenizer = load_language_model(language_model, **(llm_kwargs or {}))
        tokenizer = tokenizer or loaded_tokenizer
    elif tokenizer is None:
        raise ValueError("pass the tokenizer that goes with the language model module")
    llm = VideoLLM(encoder, language_model, tokenizer, projector=projector,
                   reducer=TokenReducer(spatial_stride, temporal_stride), prompt=prompt)
    if freeze_encoder:
        llm.freeze_encoder()
    if freeze_language_model:
        llm.freeze_language_model()
    return llm
