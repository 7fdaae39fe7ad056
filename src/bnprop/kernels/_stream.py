"""Streaming copies: a large output written past the caches.

An ordinary store to a line that is not in cache first reads the line (read for
ownership): writing a 64 MB output moves 128 MB. A non-temporal ("streaming") store
writes whole lines without that read. It pays for an output that is large and not read
again soon; an output read right after would come back from memory instead of cache.

A narrow layer's passes (:mod:`bnprop.kernels.narrow`) compute each chunk of rows into
one chunk's buffer, which stays in cache for the chunk's GEMMs, then
:func:`copy_rows` streams the chunk to its rows of the output (``dA`` backward, ``Y``
forward). The copy is exact: the output has the computing kernel's bits. Measured on the
project's 2-core machine, 2 threads, both ways alternated in one process, narrow layer
backward pass (sigmoid, m x 16 -> 256)::

    m, dtype          dA bytes   ordinary   chunk buffer + np.copyto   streamed
    65536 float64     128 MB     42.9 ms    36.2 ms                    32.0 ms
    65536 float32      64 MB     18.3 ms    18.3 ms                    17.1 ms
    16384 float64      32 MB     11.3 ms                                8.3 ms
    32768 float32      32 MB      9.0 ms                                8.5 ms
    16384 float32      16 MB      4.47 ms                               4.48 ms
     8192 float32       8 MB      2.01 ms                               2.30 ms

and the forward pass's ``Y`` at 65536 x 16 -> 256 float32: 13.3 -> 12.7 ms. Hence
:data:`STREAM_BYTES`. (A layer that is not narrow gained nothing from streaming its
``Y`` and ``dA``: at 4096, 16384 and 65536 x 256 -> 256, from 9% faster to 5% slower a
pass, within the noise; ``docs/bench.md``.)

How: the body stores 64-byte vectors with LLVM's ``!nontemporal`` hint at addresses
aligned to 64 bytes (``vmovntps``/``vmovntdq`` on x86-64, ``stnp`` on AArch64, an ordinary
store where a target has neither); the unaligned head and the tail are ordinary stores.
Streamed stores are weakly ordered: a sequentially consistent fence after the body
(a locked instruction on x86-64, which drains the write-combining buffers) orders them
before every later store, so a thread that sees the copy finished sees its data. The
reference is :func:`numpy.copyto` (:func:`reference_copy`).
"""

from __future__ import annotations

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from bnprop.kernels._jit import JIT_OPTIONS

#: Bytes of a streamed vector and the alignment of its address.
VECTOR_BYTES = 64

#: Outputs from this size on are streamed (module docstring: 32 MB gained, 16 MB did not).
STREAM_BYTES = 32 << 20


def streams(nbytes: int) -> bool:
    """Whether an output of ``nbytes`` is written by :func:`stream_copy`."""
    return nbytes >= STREAM_BYTES


@intrinsic
def _address(typingctx, arr):  # type: ignore[no-untyped-def]
    """The address of ``arr``'s first element, as an integer."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, context.get_value_type(types.intp))
    return types.intp(arr), codegen


@intrinsic
def _stream_vector(typingctx, src, i, dst, j):  # type: ignore[no-untyped-def]
    """``dst[j : j + L] = src[i : i + L]``, ``L = VECTOR_BYTES / itemsize``: one unaligned
    vector load, one non-temporal store to ``&dst[j]``, which must be 64-byte aligned."""
    itemsize = src.dtype.bitwidth // 8
    lanes = VECTOR_BYTES // itemsize

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        src_arr, dst_arr = (context.make_array(sig.args[k])(context, builder, args[k])
                            for k in (0, 2))
        vector = ir.VectorType(context.get_value_type(sig.args[0].dtype), lanes).as_pointer()
        source = builder.bitcast(cgutils.gep(builder, src_arr.data, args[1]), vector)
        target = builder.bitcast(cgutils.gep(builder, dst_arr.data, args[3]), vector)
        store = builder.store(builder.load(source, align=itemsize), target,
                              align=VECTOR_BYTES)
        store.set_metadata("nontemporal",
                           builder.module.add_metadata([ir.Constant(ir.IntType(32), 1)]))
        return context.get_dummy_value()
    return types.void(src, i, dst, j), codegen


@intrinsic
def _store_fence(typingctx):  # type: ignore[no-untyped-def]
    """A sequentially consistent fence: the streamed stores before it are ordered before
    every store after it."""
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        builder.fence("seq_cst")
        return context.get_dummy_value()
    return types.void(), codegen


@njit(**JIT_OPTIONS)
def stream_copy(src, dst):  # pragma: no cover - compiled
    """``dst[:] = src``: 1D C-contiguous arrays of one float dtype and length (module
    docstring); bit for bit :func:`numpy.copyto`."""
    n = dst.shape[0]
    if src.shape[0] != n:
        raise ValueError("stream_copy: src and dst differ in length")
    size = dst.itemsize
    lanes = VECTOR_BYTES // size
    address = _address(dst)
    head = n if address % size else min(n, (-address) % VECTOR_BYTES // size)
    for k in range(head):
        dst[k] = src[k]
    k = head
    while k + lanes <= n:
        _stream_vector(src, k, dst, k)
        k += lanes
    for t in range(k, n):
        dst[t] = src[t]
    _store_fence()


def copy_rows(src: np.ndarray, dst: np.ndarray) -> None:
    """``dst[...] = src`` for C-contiguous arrays of one shape and dtype, streamed
    (:func:`stream_copy`)."""
    if not (src.flags.c_contiguous and dst.flags.c_contiguous) or src.shape != dst.shape \
            or src.dtype != dst.dtype:
        raise ValueError(f"copy_rows: expected C-contiguous arrays of one shape and dtype, "
                         f"got {src.dtype}{src.shape} and {dst.dtype}{dst.shape}")
    stream_copy(src.reshape(-1), dst.reshape(-1))


def reference_copy(src: np.ndarray, dst: np.ndarray) -> None:
    """The NumPy reference of :func:`copy_rows`."""
    np.copyto(dst, src)
