"""``torch.hub`` entry points for a local checkout::

    model = torch.hub.load("path/to/videomap", "videomap_small", source="local", num_classes=400)
    model = torch.hub.load("path/to/videomap", "videomap_small", source="local", checkpoint_path="run/model")
    encoder = torch.hub.load("path/to/videomap", "video_encoder", "path/to/model_dir", source="local")

One entry point per registered model (the names ``videomap.list_models()`` gives), each taking
:func:`videomap.create_model`'s keyword arguments, plus ``video_encoder`` taking
:meth:`videomap.encoders.VideoEncoder.from_pretrained`'s.
"""

import os as _os
import sys as _sys

dependencies = ["torch", "numpy", "safetensors", "einops"]

# A checkout has the package under src/; an installed videomap needs nothing added.
_SRC = _os.path.join(_os.path.dirname(_os.path.abspath(__file__)), "src")
if _os.path.isdir(_os.path.join(_SRC, "videomap")) and _SRC not in _sys.path:
    _sys.path.insert(0, _SRC)

from videomap.models import create_model as _create_model  # noqa: E402
from videomap.models import list_models as _list_models  # noqa: E402


def _entry_point(name):
    def entry(pretrained=False, checkpoint_path=None, **kwargs):
        return _create_model(name, pretrained=pretrained, checkpoint_path=checkpoint_path, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = (
        f"``videomap.create_model({name!r}, ...)``: pass ``checkpoint_path`` (a save_pretrained directory or a "
        f"weights file) for trained weights; other keyword arguments as create_model takes them."
    )
    return entry


for _name in _list_models():
    globals()[_name] = _entry_point(_name)


def video_encoder(path_or_name, **kwargs):
    """``videomap.encoders.VideoEncoder.from_pretrained(path_or_name, **kwargs)``."""
    from videomap.encoders import VideoEncoder

    return VideoEncoder.from_pretrained(path_or_name, **kwargs)
