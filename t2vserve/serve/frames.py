"""A clip's decoded frames between vae_decoder and video_encoder, by handle.

The uint8 frames are a request's largest tensor (1280x704x121x3 is 327 MB). Returned as a
Triton output they were copied into vae_decoder's stub memory, out to t2v and in again to
video_encoder. Instead vae_decoder writes them once into a file in shared memory (on a GPU,
straight from device memory into the file) and answers with its name; video_encoder maps
that file read-only; t2v, which holds the request, deletes it when the request ends,
whatever the outcome. The frames never pass through t2v.

The folder is one per tritonserver (`t2vserve-frames-<server pid>` under /dev/shm): its stub
processes are the server's children. A folder whose server is gone is removed by the next
server's vae_decoder at start, so a crash leaks nothing for longer than a restart.
"""

import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path

import numpy as np
import torch

from t2vserve.schema import RequestValidationError

PREFIX = "t2vserve-frames-"
_HANDLE = re.compile(r"[0-9a-f]{32}\.npy")


def base_dir() -> Path:
    """Where the per-server folders live: /dev/shm where it exists (what the server's
    shared-memory check measures), else the temporary folder."""
    shm = Path("/dev/shm")
    return shm if shm.is_dir() else Path(tempfile.gettempdir())


def server_dir(server_pid: int | None = None) -> Path:
    """This server's folder; a stub's parent process is its tritonserver."""
    return base_dir() / f"{PREFIX}{server_pid or os.getppid()}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale() -> list[Path]:
    """Delete the folders of servers that no longer run; returns what it removed."""
    removed = []
    for path in base_dir().glob(PREFIX + "*"):
        pid = path.name[len(PREFIX):]
        if pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    return removed


def put(frames: torch.Tensor, folder: Path | None = None) -> str:
    """Write one clip's uint8 frames (F, H, W, 3), from any device, into a new file; returns
    its handle. The file appears under its final name only when complete."""
    if frames.dtype != torch.uint8 or frames.dim() != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 (F, H, W, 3), got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    folder = folder or server_dir()
    folder.mkdir(parents=True, exist_ok=True)
    handle = f"{uuid.uuid4().hex}.npy"
    partial = folder / f"{handle}.part"
    try:
        out = np.lib.format.open_memmap(partial, mode="w+", dtype=np.uint8,
                                        shape=tuple(frames.shape))
        torch.from_numpy(out).copy_(frames)  # device -> shared memory, the one host copy
        out.flush()
        del out
        os.replace(partial, folder / handle)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return handle


def _path(handle: str, folder: Path | None) -> Path:
    if not isinstance(handle, str) or not _HANDLE.fullmatch(handle):
        raise RequestValidationError(
            f"frames_handle must be a handle vae_decoder returned (32 hex digits + '.npy'), "
            f"got {handle!r:.80}")
    return (folder or server_dir()) / handle


def take(handle: str, folder: Path | None = None) -> np.ndarray:
    """The frames under a handle, mapped read-only (no copy)."""
    path = _path(handle, folder)
    try:
        return np.load(path, mmap_mode="r")
    except FileNotFoundError:
        raise RequestValidationError(
            f"no frames under handle {handle}: never written by this server's vae_decoder, "
            f"or its request has ended") from None


def discard(handle: str, folder: Path | None = None) -> None:
    """Delete a handle's file (nothing if it is gone or not a handle)."""
    try:
        _path(handle, folder).unlink(missing_ok=True)
    except RequestValidationError:
        pass
