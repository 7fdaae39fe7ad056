"""The IDX file format (MNIST's), read and written with NumPy.

Layout, every multi-byte number big-endian::

    offset  size       field
    0       2          magic: 0x00 0x00
    2       1          type code: 0x08 uint8, 0x09 int8, 0x0B int16, 0x0C int32,
                                  0x0D float32, 0x0E float64
    3       1          ndim >= 1
    4       4 * ndim   sizes d_1 .. d_ndim, each an unsigned 32-bit integer
    4+4*ndim           the data: d_1 * ... * d_ndim items in C (row-major) order

so a valid file is exactly ``4 + 4 * ndim + itemsize * prod(d)`` bytes long. A file that
starts with the gzip magic ``0x1f 0x8b`` is decompressed first and the rule applies to
the decompressed bytes.

Every problem with a file raises :class:`bnprop._validate.InputError` with one line that
starts with the file's path, e.g.::

    train-images-idx3-ubyte: truncated: header promises 47040000 data bytes, file has 1000 (...)

Writes are atomic: a temporary file in the target's directory is written, flushed to
disk with ``fsync`` and renamed over the target with ``os.replace``, so a reader sees
either the old file or the complete new one.
"""

from __future__ import annotations

import gzip
import math
import os
import zlib

import numpy as np

from bnprop._atomic import atomic_writer
from bnprop._validate import InputError

#: IDX type code -> big-endian NumPy dtype of the stored items.
IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(">u1"),
    0x09: np.dtype(">i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODES = {dt.newbyteorder("="): code for code, dt in IDX_DTYPES.items()}
_CODE_LIST = ", ".join(f"0x{code:02X}" for code in IDX_DTYPES)
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """Read an IDX file, plain or gzip-compressed.

    Parameters
    ----------
    path : str or os.PathLike
        The file. If it starts with the gzip magic ``1f 8b`` it is decompressed first.

    Returns
    -------
    numpy.ndarray
        Shape ``(d_1, ..., d_ndim)`` from the header, in the native byte order of the
        type code's dtype (``0x08`` -> uint8, ..., ``0x0E`` -> float64). Writeable.

    Raises
    ------
    InputError
        One line naming the file and the problem: missing or unreadable file, bad
        gzip stream, magic not ``00 00``, unknown type code, ``ndim`` = 0, and a length
        other than the header promises (truncated or trailing bytes).

    Examples
    --------
    >>> write_idx("labels", np.array([3, 1, 4], dtype=np.uint8))  # doctest: +SKIP
    >>> read_idx("labels")  # doctest: +SKIP
    array([3, 1, 4], dtype=uint8)
    """
    name = os.fspath(path)
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise InputError(f"{name}: no such file.") from None
    except OSError as exc:
        raise InputError(f"{name}: cannot read ({exc.strerror or exc}).") from None
    where = "file"
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as exc:
            raise InputError(
                f"{name}: gzip-compressed but cannot be decompressed ({exc})."
            ) from None
        where = "decompressed file"

    if len(raw) < 4:
        raise InputError(
            f"{name}: truncated: {len(raw)} bytes, shorter than the 4-byte IDX header."
        )
    if raw[0] != 0 or raw[1] != 0:
        raise InputError(
            f"{name}: not an IDX file: expected magic bytes 00 00, "
            f"got {raw[0]:02x} {raw[1]:02x} instead."
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise InputError(
            f"{name}: unknown IDX type code 0x{code:02X}: expected one of {_CODE_LIST}."
        )
    if ndim == 0:
        raise InputError(f"{name}: header gives 0 dimensions: expected at least 1.")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(
            f"{name}: truncated: header promises {ndim} dimension sizes ({4 * ndim} bytes), "
            f"{where} has {len(raw) - 4}."
        )
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    need = dtype.itemsize * math.prod(shape)
    have = len(raw) - header
    if have != need:
        kind = "truncated" if have < need else f"{have - need} trailing bytes"
        raise InputError(
            f"{name}: {kind}: header promises {need} data bytes, {where} has {have} "
            f"(shape {shape}, {dtype.newbyteorder('=').name})."
        )
    data = np.frombuffer(bytearray(memoryview(raw)[header:]), dtype=dtype).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def write_idx(path: str | os.PathLike, array: np.ndarray, *, compress: bool = False) -> None:
    """Write ``array`` as an IDX file, atomically.

    Parameters
    ----------
    path : str or os.PathLike
        The target file; its directory must exist. Replaced atomically if present.
    array : array_like
        At least 1-D, each size < 2**32, of dtype uint8, int8, int16, int32, float32 or
        float64 (type codes 0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E).
    compress : bool, default=False
        Gzip the file (``read_idx`` recognizes it by its magic bytes).

    Raises
    ------
    InputError
        If ``array`` has a dtype without a type code, 0 or more than 255 dimensions,
        or a size of 2**32 or more.
    """
    array = np.asarray(array)
    native = array.dtype.newbyteorder("=")
    if native not in _CODES:
        names = ", ".join(dt.newbyteorder("=").name for dt in IDX_DTYPES.values())
        raise InputError(
            f"array: expected one of the IDX dtypes {names}, got {array.dtype} instead."
        )
    if not 1 <= array.ndim <= 255:
        raise InputError(f"array: expected 1 to 255 dimensions, got a {array.ndim}D array instead.")
    if max(array.shape) >= 2**32:
        raise InputError(f"array: expected every size < 2**32, got shape {array.shape} instead.")
    code = _CODES[native]
    header = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, dtype=">u4").tobytes()
    body = np.ascontiguousarray(array, dtype=IDX_DTYPES[code]).tobytes()
    with atomic_writer(path) as f:
        if compress:
            with gzip.GzipFile(fileobj=f, mode="wb", mtime=0) as gz:
                gz.write(header)
                gz.write(body)
        else:
            f.write(header)
            f.write(body)

