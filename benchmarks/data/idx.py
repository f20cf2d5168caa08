"""IDX files (the MNIST / Fashion-MNIST format): read and write, gzip-compressed or plain.

Layout: a 4-byte big-endian magic ``00 00 <dtype> <ndim>``, then ``ndim`` big-endian uint32
dimensions, then the payload in C order. Only unsigned bytes (dtype code 0x08) are supported,
the only type the MNIST family uses. Every problem is a ``DatasetError`` naming the file and
what was expected, because these files come from downloads and disks that can be damaged.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path
from typing import NamedTuple

import numpy as np

from kdbench.benchmarks.errors import DatasetError

UBYTE = 0x08
_TYPE_NAMES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "int16", 0x0C: "int32",
               0x0D: "float32", 0x0E: "float64"}
_GZIP_MAGIC = b"\x1f\x8b"


class IdxContent(NamedTuple):
    """A parsed IDX file: the array (read-only view of ``data``) and the decompressed bytes."""

    array: np.ndarray
    data: bytes


def magic_of(ndim: int) -> int:
    """The magic number of an unsigned-byte IDX file with ``ndim`` dimensions."""
    return (UBYTE << 8) | ndim


def is_gzip_name(path: Path) -> bool:
    return path.suffix == ".gz"


def read_bytes(path: Path) -> bytes:
    """The file's content, gunzipped when the name ends in ``.gz``."""
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DatasetError(f"cannot read {path}: {e.strerror or e}") from e
    if not is_gzip_name(path):
        return raw
    try:
        return gzip.decompress(raw)
    # BadGzipFile (an OSError): not gzip or bad header/CRC; EOFError: cut short; zlib.error:
    # damaged deflate stream. All mean the same to the user: the file is corrupt.
    except (OSError, EOFError, zlib.error) as e:
        raise DatasetError(
            f"{path} is not a readable gzip file ({type(e).__name__}: {e}); it is probably "
            "truncated or corrupt: download it again (or use the uncompressed file under the "
            "name without .gz)"
        ) from e


def parse_idx(data: bytes, path: Path, ndim: int, what: str) -> np.ndarray:
    """Check the header of ``data`` (read from ``path``) and return the payload as an array.

    ``what`` describes the expected content in messages, e.g. ``"image"`` or ``"label"``.
    The payload must be exactly the product of the dimensions: a truncated file and one with
    trailing bytes are both errors, so a damaged file never loads silently.
    """
    expected = magic_of(ndim)
    if len(data) < 4:
        raise DatasetError(
            f"{path}: {len(data)} bytes, too short for an IDX header; expected an IDX {what} "
            f"file (magic 0x{expected:08X})"
        )
    magic = int.from_bytes(data[:4], "big")
    if magic != expected:
        if data[:2] == b"\x00\x00" and data[3] == ndim:
            code = data[2]
            raise DatasetError(
                f"{path}: IDX data type code 0x{code:02X} "
                f"({_TYPE_NAMES.get(code, 'unknown')}); expected 0x{UBYTE:02X} (unsigned byte)"
            )
        hint = ""
        if data[:2] == _GZIP_MAGIC:
            hint = "; the file is gzip-compressed: give it a .gz name"
        elif data[:3] == b"\x00\x00\x08":
            hint = f"; it is a {data[3]}-dimensional IDX file: is it the right one of the four?"
        raise DatasetError(
            f"{path}: magic number 0x{magic:08X}; expected 0x{expected:08X} (an IDX {what} file "
            f"of {ndim}-D unsigned bytes){hint}"
        )
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DatasetError(
            f"{path}: truncated IDX header: {len(data)} bytes, expected {header} "
            f"(magic + {ndim} dimensions)"
        )
    dims = struct.unpack(f">{ndim}I", data[4:header])
    need = math.prod(dims)
    found = len(data) - header
    if found != need:
        shape = " x ".join(str(d) for d in dims)
        state = "truncated" if found < need else "longer than its header says"
        raise DatasetError(
            f"{path} is {state}: its header declares {shape} = {need} bytes of data after the "
            f"{header}-byte header, found {found}; download it again"
        )
    return np.frombuffer(data, dtype=np.uint8, count=need, offset=header).reshape(dims)


def read_idx(path: Path, ndim: int, what: str) -> IdxContent:
    """Read and check one unsigned-byte IDX file (gzip if the name ends in ``.gz``)."""
    data = read_bytes(path)
    return IdxContent(parse_idx(data, path, ndim, what), data)


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of a uint8 array (header + C-order payload)."""
    if array.dtype != np.uint8 or not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX writer needs a uint8 array; got {array.dtype} {array.shape}")
    header = struct.pack(f">I{array.ndim}I", magic_of(array.ndim), *array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write ``array`` as an IDX file, gzip-compressed when the name ends in ``.gz``.

    The gzip header's timestamp is fixed (0), so equal arrays give byte-identical files.
    """
    data = encode_idx(array)
    if is_gzip_name(path):
        data = gzip.compress(data, compresslevel=6, mtime=0)
    path.write_bytes(data)
    return path
