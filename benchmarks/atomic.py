"""Atomic file writes: a reader sees the previous file, the new one, or none; never part.

Every writer of kdbench (run records, leaderboard and claims CSVs, teachers, checkpoints,
artifacts, exported documents) goes through ``write_via``: the data is written to a
temporary file in the target's own folder (so ``os.replace`` never crosses a file system),
flushed to disk (fsync) and then moved over the target. On any error the temporary file is
removed and the target is left as it was; an ``OSError`` (read-only folder, full disk)
becomes an ``UnwritableError`` that names the file.
"""

from __future__ import annotations

import errno
import io
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.benchmarks.errors import KdbenchError


class UnwritableError(KdbenchError):
    """A file could not be written (read-only or full folder); the old file is untouched."""

    def __init__(self, path: Path, exc: OSError):
        self.path = path
        self.reason = ("no space left on the device" if exc.errno in (errno.ENOSPC, errno.EDQUOT)
                       else exc.strerror or str(exc))
        super().__init__(f"cannot write {path}: {self.reason}; the folder must be writable and "
                         "have free space (nothing there was changed)")


def write_via(path: Path, write: Callable[[str], object], *, keep_suffix: bool = False) -> None:
    """Replace ``path`` by what ``write(temporary_path)`` writes, atomically.

    ``keep_suffix``: the temporary name ends in the target's suffix (``torch.export.save``
    warns about any other); by default it ends in ``.tmp``, so globs for the target's
    suffix (``*.json``) never see a half-written file.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.",
                                   suffix=f".tmp{path.suffix}" if keep_suffix else ".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())  # on disk before it replaces the old file
        os.replace(tmp, path)
    except OSError as exc:
        raise UnwritableError(path, exc) from exc
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write_bytes(data: bytes | bytearray | memoryview, path: Path) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:
            f.write(data)

    write_via(path, write)


def write_text(text: str, path: Path) -> None:
    write_bytes(text.encode("utf-8"), path)


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "item"):  # numpy / torch scalars
        return obj.item()
    if isinstance(obj, (set, tuple)):
        return list(obj)
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} as JSON")


def write_json(data: Any, path: Path, *, indent: int | None = 2, sort_keys: bool = True) -> None:
    """JSON (numpy/torch scalars, tuples, sets and paths as plain values)."""
    write_text(json.dumps(data, indent=indent, sort_keys=sort_keys, default=_json_default), path)


def save_torch(obj: object, path: Path) -> None:
    """``torch.save`` to ``path``; equal objects give equal bytes.

    Saved to a named file, torch's zip archive takes the file's name as its root folder, so
    a random temp name would make every save of the same weights a different sha256 (and a
    teacher retrained bit for bit a different configuration). Serialised in memory, the
    archive's root is always ``archive``.
    """
    import torch

    buffer = io.BytesIO()
    torch.save(obj, buffer)
    write_bytes(buffer.getbuffer(), path)
