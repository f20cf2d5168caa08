"""Which code wrote a checkpoint: a killed run is resumed only by the code that started it."""

from __future__ import annotations

import hashlib
import sys
from functools import cache
from pathlib import Path

from kdbench import benchmarks


@cache
def _folder_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*.py")):
        digest.update(str(path.relative_to(folder)).encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def code_fingerprint(module_name: str) -> str:
    """Hash of the source of the package holding ``module_name`` and of the harness.

    A method's training code is its module, the shared helpers of its package and the
    harness's loops, so an edit to any of them makes an older checkpoint unresumable.
    """
    module = sys.modules[module_name]
    parts = module_name.split(".")
    # kdbench's own packages are one level down (kdbench.methods); a plugin's is its top
    top = sys.modules[".".join(parts[:2] if parts[0] == "kdbench" else parts[:1])]
    source = Path(getattr(top, "__file__", None) or module.__file__).parent
    harness = Path(benchmarks.__file__).parent
    return hashlib.sha256(
        "".join(_folder_digest(folder) for folder in sorted({source, harness})).encode()
    ).hexdigest()[:16]
