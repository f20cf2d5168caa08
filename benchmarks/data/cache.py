"""Where generated datasets are cached, and how a cache folder is written atomically."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

from kdbench.benchmarks.errors import DatasetError


def default_cache_dir() -> Path:
    return Path.home() / ".cache" / "kdbench"


def write_folder_atomically(target: Path, write: Callable[[Path], object], what: str,
                            complete: Callable[[Path], bool]) -> None:
    """Run ``write`` on a staging folder beside ``target``, then rename it into place.

    Readers never see a half-written folder; when another process renamed its copy first,
    its folder stands (``complete(target)``) and ours is dropped.
    """
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".writing-", dir=target.parent))
    except OSError as e:
        raise DatasetError(f"cannot create the {what} cache under {target.parent}: {e}; "
                           "pass a writable cache_dir") from e
    try:
        write(staging)
        os.rename(staging, target)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        if not complete(target):  # not just another process that finished first
            raise DatasetError(f"cannot write the {what} to {target}: {e}") from e
