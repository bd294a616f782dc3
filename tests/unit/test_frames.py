"""The frame store between vae_decoder and video_encoder (t2vserve/serve/frames.py)."""

import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from t2vserve.schema import RequestValidationError
from t2vserve.serve import frames


def test_put_take_discard_round_trip(tmp_path):
    clip = torch.randint(0, 256, (5, 16, 32, 3), dtype=torch.uint8)
    handle = frames.put(clip, tmp_path)
    assert frames._HANDLE.fullmatch(handle)
    got = frames.take(handle, tmp_path)
    assert not got.flags.writeable and np.array_equal(got, clip.numpy())
    assert [p.name for p in tmp_path.iterdir()] == [handle]  # no partial file left
    frames.discard(handle, tmp_path)
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(RequestValidationError, match="no frames under handle"):
        frames.take(handle, tmp_path)
    frames.discard(handle, tmp_path)  # gone already: nothing to do


@pytest.mark.parametrize("handle", ["../../etc/passwd", "x.npy", "A" * 32 + ".npy", "", 7])
def test_a_handle_not_made_by_put_is_refused_by_name(tmp_path, handle):
    with pytest.raises(RequestValidationError, match="frames_handle must be a handle"):
        frames.take(handle, tmp_path)
    frames.discard(handle, tmp_path)  # and never deletes anything outside the store


@pytest.mark.parametrize("bad", [torch.zeros(5, 16, 32, 3), torch.zeros(5, 16, 32, 4, dtype=torch.uint8),
                                 torch.zeros(16, 32, 3, dtype=torch.uint8)])
def test_put_refuses_what_is_not_uint8_frames(tmp_path, bad):
    with pytest.raises(ValueError, match=r"uint8 \(F, H, W, 3\)"):
        frames.put(bad, tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_no_file(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise OSError("no space left on device")
    monkeypatch.setattr(torch.Tensor, "copy_", broken)
    with pytest.raises(OSError, match="no space"):
        frames.put(torch.zeros(1, 2, 2, 3, dtype=torch.uint8), tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_only_the_folders_of_dead_servers_are_removed(tmp_path, monkeypatch):
    monkeypatch.setattr(frames, "base_dir", lambda: tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    alive = frames.server_dir(os.getpid())
    gone = frames.server_dir(dead.pid)
    for folder in (alive, gone):
        folder.mkdir()
        (folder / ("0" * 32 + ".npy")).write_bytes(b"x")
    other = tmp_path / "t2vserve-frames-notapid"
    other.mkdir()
    assert frames.remove_stale() == [gone]
    assert alive.exists() and other.exists() and not gone.exists()
