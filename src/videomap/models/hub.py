"""Hugging Face Hub integration: :class:`VideoMAPHub`, a :class:`VideoMAP` with ``push_to_hub`` and hub ids.

Needs ``huggingface_hub`` (``pip install 'videomap[hub]'``). The files on the hub are the ones
:meth:`VideoMAP.save_pretrained` writes (``config.json`` + ``model.safetensors``, plus a model card), so a
downloaded snapshot also loads with ``videomap.create_model(name, checkpoint_path=dir)``::

    from videomap.models.hub import VideoMAPHub

    model = VideoMAPHub.from_model(videomap.create_model("videomap_small"))
    model.push_to_hub("me/videomap-small-k400")                 # needs a token
    same = VideoMAPHub.from_pretrained("me/videomap-small-k400")  # or a local directory
"""

from __future__ import annotations

import os
from pathlib import Path

try:
    from huggingface_hub import PyTorchModelHubMixin, snapshot_download
except ImportError as error:  # pragma: no cover - exercised only without the optional dependency
    raise ImportError(
        "videomap.models.hub needs huggingface_hub: pip install 'videomap[hub]' (or pip install huggingface_hub)"
    ) from error

from .weights import CONFIG_NAME, WEIGHTS_NAME, from_pretrained, save_pretrained
from .videomap import VideoMAP


def resolve_model_dir(
    name_or_path: str | os.PathLike,
    revision: str | None = None,
    cache_dir: str | os.PathLike | None = None,
    force_download: bool = False,
    token: str | bool | None = None,
    local_files_only: bool = False,
) -> Path:
    """A local directory holding ``config.json`` + ``model.safetensors``: ``name_or_path`` itself when it is
    a directory, otherwise a snapshot of that hub repository (only those two files are fetched)."""
    if Path(name_or_path).is_dir():
        return Path(name_or_path)
    return Path(
        snapshot_download(
            repo_id=str(name_or_path),
            revision=revision,
            cache_dir=cache_dir,
            force_download=force_download,
            token=token,
            local_files_only=local_files_only,
            allow_patterns=[CONFIG_NAME, WEIGHTS_NAME],
        )
    )


class VideoMAPHub(
    PyTorchModelHubMixin,
    VideoMAP,
    library_name="videomap",
    tags=["video-classification", "mamba", "videomap"],
    pipeline_tag="video-classification",
):
    """:class:`VideoMAP` plus the hub mixin: ``save_pretrained(dir, push_to_hub=..., repo_id=...)`` (also
    writes a model card), ``push_to_hub(repo_id)`` and ``from_pretrained(repo_id or dir, **overrides)``.

    The weights and config are read and written by videomap's own checkpoint code, so loading reports
    mismatched keys and resamples position embeddings exactly as :func:`videomap.create_model` does.
    """

    def _save_pretrained(self, save_directory: Path) -> None:
        save_pretrained(self, save_directory)

    @classmethod
    def from_pretrained(
        cls,
        pretrained_model_name_or_path: str | os.PathLike,
        *,
        strict: bool = True,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        force_download: bool = False,
        token: str | bool | None = None,
        local_files_only: bool = False,
        **overrides,
    ) -> VideoMAPHub:
        """Load from a local directory or a hub repository id; ``overrides`` change config fields
        (``num_frames=16`` resamples the temporal embedding, ``num_classes=174`` gives a new head)."""
        directory = resolve_model_dir(
            pretrained_model_name_or_path, revision=revision, cache_dir=cache_dir,
            force_download=force_download, token=token, local_files_only=local_files_only,
        )
        return from_pretrained(directory, strict=strict, model_class=cls, **overrides)

    @classmethod
    def from_model(cls, model: VideoMAP) -> VideoMAPHub:
        """The same architecture and weights as ``model``, with the hub methods."""
        hub = cls(model.config)
        hub.load_state_dict(model.state_dict())
        return hub.to(next(model.parameters()).device)
