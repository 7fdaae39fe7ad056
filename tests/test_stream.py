"""Streaming copies (bnprop.kernels._stream): equal to numpy.copyto, writing nothing outside
the destination, compiled to non-temporal stores, and used by a narrow layer's passes
without changing a bit of what they return."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import layer_inputs, small_parts
from numba import njit

import bnprop
from bnprop import threads
from bnprop.kernels import _stream, narrow
from bnprop.kernels._stream import (
    STREAM_BYTES,
    VECTOR_BYTES,
    copy_rows,
    reference_copy,
    stream_copy,
    streams,
)

GRADS = ("dA", "dgamma", "dbeta", "dZ", "dW", "dO")
M, N_IN, N_OUT = 4501, 5, 40  # narrow (8 * 5 <= 40); chunks of 700 rows and a short tail


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_stream_copy_equals_copyto_at_every_alignment_and_length(dtype: str) -> None:
    rng = np.random.default_rng(0)
    lanes = VECTOR_BYTES // np.dtype(dtype).itemsize
    for n in (0, 1, lanes - 1, lanes, lanes + 1, 3 * lanes + 5, 1000):
        for offset in range(lanes + 1):  # every position of the destination in a vector
            src = rng.standard_normal(n + 7).astype(dtype)[7:]  # unaligned source
            guard = np.full(n + offset + 2 * lanes, -7.0, dtype)
            dst = guard[offset + lanes: offset + lanes + n]
            want = np.empty_like(src)
            reference_copy(src, want)
            stream_copy(src, dst)
            np.testing.assert_array_equal(dst, want)
            outside = np.concatenate([guard[:offset + lanes], guard[offset + lanes + n:]])
            assert (outside == -7.0).all(), (n, offset)  # nothing written beside it


def test_stream_copy_keeps_nan_inf_and_signed_zero_bits() -> None:
    src = np.array([np.nan, np.inf, -np.inf, -0.0, 0.0, 1e-45] * 20, np.float32)
    dst = np.empty_like(src)
    stream_copy(src, dst)
    np.testing.assert_array_equal(dst.view(np.uint32), src.view(np.uint32))


def test_copy_rows_copies_a_2d_chunk_and_rejects_what_it_cannot_stream() -> None:
    src = np.arange(12.0).reshape(3, 4)
    dst = np.zeros((6, 4))
    copy_rows(src, dst[2:5])
    np.testing.assert_array_equal(dst[2:5], src)
    assert (dst[:2] == 0).all() and (dst[5:] == 0).all()
    with pytest.raises(ValueError, match="C-contiguous"):
        copy_rows(src, dst[:, :3].T[:3])  # not C-contiguous: reshape would copy it
    with pytest.raises(ValueError, match="one shape and dtype"):
        copy_rows(src, np.zeros((3, 4), np.float32))


def test_stream_copy_refuses_arrays_of_two_lengths() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        stream_copy(np.ones(10), np.empty(12))


def test_the_body_is_compiled_to_non_temporal_stores() -> None:
    fresh = njit(stream_copy.py_func)  # not from the on-disk cache, whose IR is not kept
    fresh(np.ones(64, np.float32), np.empty(64, np.float32))
    llvm = fresh.inspect_llvm(fresh.signatures[0])
    assert "!nontemporal" in llvm and "fence seq_cst" in llvm


def test_only_large_outputs_are_streamed() -> None:
    assert streams(STREAM_BYTES) and not streams(STREAM_BYTES - 1)
    assert STREAM_BYTES > 16 << 20  # 16 MB outputs measured no faster streamed


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
@pytest.mark.parametrize("activation", ["sigmoid", "relu"])
@pytest.mark.parametrize("n_threads", [1, 2])
def test_a_streamed_narrow_layer_returns_the_same_bits(two_threads: None, dtype: str,
                                                       stats: str, activation: str,
                                                       n_threads: int,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Y forward and every gradient backward, streamed (every output counts as large)
    and not, bit for bit; the narrow passes are the ones taken."""
    small_parts(monkeypatch, N_OUT)
    threads.set_threads(n_threads)
    O, W, gamma, beta, dY = layer_inputs(M, N_IN, N_OUT, dtype, seed=4)
    calls: list[int] = []
    real = narrow.backward
    monkeypatch.setattr(narrow, "backward", lambda *a, **k: calls.append(1) or real(*a, **k))
    copies: list[int] = []
    real_copy = _stream.stream_copy

    def counting(src: np.ndarray, dst: np.ndarray) -> None:
        copies.append(src.size)
        real_copy(src, dst)

    monkeypatch.setattr(_stream, "stream_copy", counting)

    def run() -> tuple[np.ndarray, object]:
        cache = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
        return cache.Y, bnprop.layer_backward(dY, cache, stats=stats)

    monkeypatch.setattr(_stream, "STREAM_BYTES", 1 << 62)
    Y_plain, plain = run()
    assert copies == [] and calls == [1]
    monkeypatch.setattr(_stream, "STREAM_BYTES", 0)
    Y_streamed, streamed = run()
    assert sum(copies) == 2 * M * N_OUT and calls == [1, 1]  # all of Y, then all of dA
    np.testing.assert_array_equal(Y_streamed, Y_plain)
    for name in GRADS:
        np.testing.assert_array_equal(getattr(streamed, name), getattr(plain, name),
                                      err_msg=name)
