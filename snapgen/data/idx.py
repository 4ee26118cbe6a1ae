"""Reader for the IDX format used by (Fashion-)MNIST (optionally gzip-compressed).

Format: 2 zero bytes, a type byte (0x08 = unsigned byte), the number of dimensions, then one
big-endian int32 per dimension, then the data. No library reads it without also pulling in a
dataset class and its own download logic, so this small reader is hand-written; it validates the
magic and the exact size so a corrupt or truncated file is reported, never silently used.
"""
from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from snapgen.errors import DataError

_GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """File contents, decompressed if gzip; a bad gzip stream is a DataError."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read: {e.strerror or e}", file=str(path)) from None
    if raw[:2] == _GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise DataError(f"corrupt gzip stream: {e}", file=str(path)) from None
    return raw


def parse_idx(raw: bytes, *, file: str = "<bytes>", expect_ndim: int | None = None) -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"not an unsigned-byte IDX file (bad magic {raw[:4].hex() or 'empty'})", file=file)
    ndim = raw[3]
    if expect_ndim is not None and ndim != expect_ndim:
        raise DataError(f"IDX file has {ndim} dimensions, expected {expect_ndim}", file=file)
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError("truncated IDX header", file=file)
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    n = int(np.prod(dims, dtype=np.int64))
    if len(raw) != header + n:
        raise DataError(f"IDX size mismatch: header says {dims} ({header + n} bytes), file has {len(raw)} bytes",
                        file=file)
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def read_idx(path: str | Path, expect_ndim: int | None = None) -> np.ndarray:
    return parse_idx(read_bytes(path), file=str(path), expect_ndim=expect_ndim)
