"""Crash-safe file writes: write a temp file, fsync it, rename it over the target, fsync the dir.

A reader therefore sees either the old file or the whole new one, never half of either, even
after a power cut or kill -9. Every file distill writes that another stage reads goes through here.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_bytes_atomic(path: Path, data: bytes | memoryview) -> None:
    """Replace `path` with `data` atomically."""
    path = Path(path)
    tmp = path.with_name(path.name + TMP_SUFFIX)
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk or a file-size limit: no half-written temp file stays
        tmp.unlink(missing_ok=True)
        if e.filename is None:  # a failed write() does not say which file; the sentence the user gets must
            raise type(e)(e.errno, e.strerror, str(path)) from None
        raise
    os.replace(tmp, path)
    _fsync_dir(path.parent)


def write_json_atomic(path: Path, obj: Any) -> None:
    """Replace `path` with `obj` as indented JSON, atomically."""
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=False) + "\n").encode())
