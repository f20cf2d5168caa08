"""Unpickling of dataset files without running code from them.

A pickle can name any importable callable and call it while loading (``__reduce__``), so
plain ``pickle.loads`` on a planted or tampered CIFAR-100 file runs the attacker's code.
``loads`` here uses an unpickler whose ``find_class`` resolves only the few numpy globals
that numpy arrays are rebuilt from; any other global is refused with a ``DatasetError``
before anything is called.

What a CIFAR-100 python-version file needs (checked on the opcode stream of the official
release's layout and of ``fixtures.write_cifar100``): dicts, lists, ints and (Python-2)
strings, which need no global, plus one numpy array per split, pickled as
``numpy.core.multiarray._reconstruct(numpy.ndarray, ...)`` with a ``numpy.dtype`` (numpy 2
writes the module as ``numpy._core.multiarray``). Arrays re-pickled with protocol 5 (the
default from Python 3.14) use ``numpy.core.numeric._frombuffer`` instead. Nothing from
``copy_reg``/``copyreg`` or ``__builtin__``/``builtins`` is needed: every object in the files
is either a builtin container or a numpy array, and those never go through
``copy_reg._reconstructor``.
"""

from __future__ import annotations

import importlib
import io
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kdbench.benchmarks.errors import DatasetError


def _numpy_attr(modules: tuple[str, ...], name: str) -> Any:
    """``name`` from the first of ``modules`` that imports (numpy 2, then numpy 1 spelling)."""
    for module in modules:
        try:
            return getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError):
            continue
    raise ImportError(f"none of {modules} provides {name}")


def _allowed() -> dict[tuple[str, str], Callable[[], Any]]:
    # Resolved lazily, and by kdbench rather than by the pickle's module path: numpy 2 warns
    # when ``numpy.core`` is imported, and a name is never imported just because a file says so.
    multiarray = ("numpy._core.multiarray", "numpy.core.multiarray")
    numeric = ("numpy._core.numeric", "numpy.core.numeric")

    def reconstruct() -> Any:
        return _numpy_attr(multiarray, "_reconstruct")

    def frombuffer() -> Any:
        return _numpy_attr(numeric, "_frombuffer")

    def ndarray() -> Any:
        import numpy

        return numpy.ndarray

    def dtype() -> Any:
        import numpy

        return numpy.dtype

    return {
        ("numpy.core.multiarray", "_reconstruct"): reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): reconstruct,
        ("numpy.core.numeric", "_frombuffer"): frombuffer,
        ("numpy._core.numeric", "_frombuffer"): frombuffer,
        ("numpy", "ndarray"): ndarray,
        ("numpy", "dtype"): dtype,
    }


ALLOWED_GLOBALS: frozenset[tuple[str, str]] = frozenset(_allowed())
"""The ``(module, name)`` pairs a dataset pickle may refer to; everything else is refused."""


class RefusedGlobalError(DatasetError):
    """A pickle referred to a global outside ``ALLOWED_GLOBALS``; nothing in it was run.

    ``source``, ``module`` and ``name`` say which file and which global. (No custom
    ``__init__``, so the error itself still pickles, e.g. back from a submitit job.)
    """

    source: str
    module: str
    name: str


def _refused(source: str, module: str, name: str, remedy: str) -> RefusedGlobalError:
    err = RefusedGlobalError(
        f"{source} refers to the Python global {module}.{name}, which a genuine CIFAR-100 "
        "python-version file never contains: the file is not a genuine CIFAR-100 file and "
        "may be malicious (a pickle can run code while loading), so it was refused and "
        f"nothing in it was run. {remedy}"
    )
    err.source, err.module, err.name = source, module, name
    return err


_DEFAULT_REMEDY = (
    "Re-extract the file from the official archive, or, if it is in kdbench's synthetic "
    "cache, delete that cache folder (it is generated again on next use)."
)


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only ``ALLOWED_GLOBALS``.

    ``find_class`` is the one place every global (GLOBAL, STACK_GLOBAL, INST, OBJ and EXT*
    opcodes) is resolved, so without an allowed global no callable exists to be called.
    Persistent ids are refused by ``pickle.Unpickler`` itself (no ``persistent_load``).
    """

    def __init__(
        self,
        file: io.BufferedIOBase | io.BytesIO,
        *,
        source: str | Path,
        remedy: str = _DEFAULT_REMEDY,
        encoding: str = "bytes",
    ):
        super().__init__(file, encoding=encoding)
        self._source = str(source)
        self._remedy = remedy
        self._resolvers = _allowed()

    def find_class(self, module: str, name: str) -> Any:
        # Checked on the names as written in the file, before any fix_imports renaming.
        resolver = self._resolvers.get((module, name))
        if resolver is None:
            raise _refused(self._source, module, name, self._remedy)
        return resolver()


def loads(
    data: bytes,
    *,
    source: str | Path,
    remedy: str = _DEFAULT_REMEDY,
    encoding: str = "bytes",
) -> Any:
    """``pickle.loads(data, encoding=encoding)`` restricted to ``ALLOWED_GLOBALS``.

    ``source`` (the file's path) and ``remedy`` go into the ``RefusedGlobalError`` raised for
    any other global. Damaged data raises what ``pickle.loads`` would (``EOFError``,
    ``pickle.UnpicklingError``, ...).
    """
    return RestrictedUnpickler(
        io.BytesIO(data), source=source, remedy=remedy, encoding=encoding
    ).load()
