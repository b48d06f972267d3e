"""Atomic file writes: a temporary file in the target's folder, then ``os.replace``.

A reader never sees a half-written file: the content goes to ``.tmp-*`` beside the target (same
file system, so the rename is atomic), is flushed, given its permissions, and renamed over the
target. On any failure the temporary file is removed and the target is left as it was.

``tempfile.mkstemp`` creates files readable by their owner only (0600); files this project
writes are meant to be read by others (a Triton server running as another user reads
``config.pbtxt``), so the default mode is 0644. Models, which can come with an external data
file, are staged as a folder instead (:func:`onnx_compress.model_io.staged_output`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO

__all__ = ["write_atomic"]


def write_atomic(
    path: str | os.PathLike[str],
    content: str | bytes | Callable[[BinaryIO], object],
    *,
    mode: int = 0o644,
) -> Path:
    """Write ``content`` to ``path`` atomically and return the path.

    Args:
        path: the file to write; its folder must exist.
        content: text (written as UTF-8), bytes, or a function that writes to a binary handle
            (e.g. ``lambda f: np.savez(f, **arrays)``).
        mode: the file's permissions (0644: readable by everyone, writable by the owner).
    """
    out = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=out.suffix, dir=out.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            if isinstance(content, str):
                handle.write(content.encode("utf-8"))
            elif isinstance(content, bytes):
                handle.write(content)
            else:
                content(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out
