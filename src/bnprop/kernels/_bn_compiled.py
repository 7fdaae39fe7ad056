"""The compiled batch-norm kernels (Numba); :mod:`bnprop.kernels.bn` documents their
equations, memory traffic and rounding, and wraps each in a checked public function.

Every kernel is serial, releases the GIL, and is compiled lazily once per dtype with the
options of :mod:`bnprop.kernels._jit`.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._moments import _add_term, _block_sums, _moments  # noqa: F401 - re-exported
from bnprop.kernels.activations import (
    activation_row,
    identity,
    per_activation,
    per_derivative,
    relu,
)


@njit(**JIT_OPTIONS)
def _var_inv_std(M2, count, eps, var, inv_std):  # pragma: no cover - compiled
    """``var = M2 / count`` (biased), ``inv_std = 1 / sqrt(var + eps)``, in float64: the
    reference's :func:`bnprop.batchnorm.biased_var` and
    :func:`bnprop.batchnorm.inverse_std` (IEEE division and square root)."""
    for j in range(var.shape[0]):
        var[j] = M2[j] / count
        inv_std[j] = 1.0 / np.sqrt(var[j] + eps)


@njit(**JIT_OPTIONS)
def _forward_apply(Z, mean, inv_std, gamma, beta, act, Obar, Y, A):  # pragma: no cover
    """``Obar = (Z - mu_B) * inv_std`` (float64, rounded on the store), ``A = gamma * Obar +
    beta``, ``Y = sigma(A)``, a row at a time; ``Obar`` may be ``Z`` (the same rows), and
    ``Obar`` or ``A`` None is not kept (:func:`_forward_rows`)."""
    inplace = Obar is not None and Obar.ctypes.data == Z.ctypes.data
    _forward_by_act(act, Z, mean, inv_std, gamma, beta, Obar, Y, A, inplace)


#: Elements of ``A`` formed before a sigmoid or tanh runs over them as one flat block.
ACTIVATE_BLOCK = 2048


def _forward_rows(f):  # type: ignore[no-untyped-def]
    """:func:`_forward_apply` for one activation ``f`` (compiled per ``f``,
    :func:`bnprop.kernels.activations.per_activation`), one store a loop (two stores in
    one loop need more runtime overlap tests than LLVM makes, and run scalar; in place
    only ``Obar`` is indexed, as two views of one row fail the test). relu and identity,
    and every ``f`` when ``Obar`` is not kept: ``Y = f(A)`` in the loop that forms ``A``.
    sigmoid and tanh otherwise: ``A`` of a block of rows, then ``f`` over the block as one
    flat run, which vectorizes however narrow a row (a row of 16 is under LLVM's vector
    width times its unroll). The same bits; one thread, against one call of the row-wise
    activation a row: float32 relu 4.10 -> 0.84-1.12 ms at 100352 x 16, 1.20 -> 0.43-0.47
    at 25088 x 32 (a convolution's rows); sigmoid in place 7.8 -> 7.4 us at 60 x 100,
    5.35 -> 4.49 ms at 100352 x 16; float64 sigmoid in place 1.17 -> 0.92 ms at
    512 x 1024 (but with Obar apart 1.82 -> 2.33 ms at 25088 x 32)."""
    flat_run = f is not relu and f is not identity

    def rows(Z, mean, inv_std, gamma, beta, Obar, Y, A, inplace):  # pragma: no cover
        m, n = Z.shape
        one = np.ones(1, Z.dtype)[0]
        scratch = np.empty(n if Obar is None else 0, Z.dtype)
        per = max(1, ACTIVATE_BLOCK // n) if flat_run and Obar is not None else 1
        block = np.empty(per * n if per > 1 and A is None else 0, Z.dtype)
        for i0 in range(0, m, per):
            i1 = min(i0 + per, m)
            for i in range(i0, i1):
                o = scratch if Obar is None else Obar[i]
                if inplace:
                    for j in range(n):
                        o[j] = (o[j] - mean[j]) * inv_std[j]
                else:
                    z = Z[i]
                    for j in range(n):
                        o[j] = (z[j] - mean[j]) * inv_std[j]
                if per > 1:  # A's row into the block, f after the block
                    a = block[(i - i0) * n:(i - i0 + 1) * n] if A is None else A[i]
                    for j in range(n):
                        a[j] = gamma[j] * o[j] + beta[j]
                elif A is None:
                    y = Y[i]
                    for j in range(n):
                        y[j] = f(gamma[j] * o[j] + beta[j], one)
                else:
                    a, y = A[i], Y[i]
                    for j in range(n):
                        aj = gamma[j] * o[j] + beta[j]
                        a[j] = aj
                        y[j] = f(aj, one)
            if per > 1:
                a_run = block[:(i1 - i0) * n] if A is None else A[i0:i1].reshape(-1)
                y_run = Y[i0:i1].reshape(-1)
                for k in range(y_run.shape[0]):
                    y_run[k] = f(a_run[k], one)
    return rows


_forward_by_act = per_activation(_forward_rows)


@njit(**JIT_OPTIONS)
def _scale_shift_activate(Obar, gamma, beta, act, Y):  # pragma: no cover - compiled
    """``Y = sigma(gamma * Obar + beta)`` row by row, ``A`` not kept (:func:`_forward_apply`
    from a given ``Obar``: ``A``'s rounding is that of :func:`bnprop.batchnorm.scale_shift`)."""
    m, n = Obar.shape
    one = np.ones(1, Obar.dtype)[0]
    a = np.empty(n, Obar.dtype)
    for i in range(m):
        o = Obar[i]
        for j in range(n):
            a[j] = gamma[j] * o[j] + beta[j]
        activation_row(act, a, one, Y[i])


@njit(**JIT_OPTIONS)
def _add_sums_row(G, Obar, sum_G, sum_GObar, c0, c1):  # pragma: no cover - compiled
    """``sum_G += G``, ``sum_GObar += G Obar`` for the columns ``[c0, c1)`` of one row, in
    float64."""
    for j in range(np.uint64(c0), np.uint64(c1)):
        g = np.float64(G[j])
        sum_G[j] += g
        sum_GObar[j] += g * Obar[j]


@njit(**JIT_OPTIONS)
def _backward_sums(dY, Y, Obar, act, sum_G, sum_GObar):  # pragma: no cover
    """``sum_G = sum_i G_i``, ``sum_GObar = sum_i G_i Obar_i`` (float64, rows in order),
    ``G = sigma'(A) * dY`` formed in dY's dtype and summed as it is formed."""
    sum_G[:] = 0.0
    sum_GObar[:] = 0.0
    _sums_by_act(act, dY, Y, Obar, sum_G, sum_GObar, None, 0, dY.shape[1])


def _sums_rows(d):  # type: ignore[no-untyped-def]
    """:func:`_backward_sums` for one activation's derivative ``d`` (compiled per ``d``,
    :func:`bnprop.kernels.activations.per_derivative`: the loop vectorizes, 3.0 -> 1.45 us
    at 60 x 100, the same bits as a row of ``G`` stored first, then summed); ``dA`` not
    None: ``G`` is stored there first, then summed (:func:`_add_sums_row`; in one loop
    with the sums, a store too many for LLVM's overlap tests: 4.5 -> 3.0 us at 60 x 100
    float32, 1440 -> 1220 us at 4096 x 256 float64, one thread, the same bits). Over
    the columns ``[c0, c1)`` (all: ``0, n``): each column is summed alone, rows in
    order, so any cut of the columns gives the whole pass's bits. (A loop over the
    columns of a whole row: slicing each row instead cost 15-20% at 60 x 100. Its index
    is unsigned: a signed one from a bound LLVM cannot prove >= 0 keeps NumPy's
    negative-index test in every access, and the loop ran scalar, 4-5x slower.)"""
    def sums(dY, Y, Obar, sum_G, sum_GObar, dA, c0, c1):  # pragma: no cover - compiled
        one = np.ones(1, dY.dtype)[0]
        for i in range(dY.shape[0]):
            dy, y, o = dY[i], Y[i], Obar[i]
            if dA is None:
                for j in range(np.uint64(c0), np.uint64(c1)):
                    g = np.float64(d(y[j], dy[j], one))
                    sum_G[j] += g
                    sum_GObar[j] += g * o[j]
            else:
                ga = dA[i]
                for j in range(np.uint64(c0), np.uint64(c1)):
                    ga[j] = d(y[j], dy[j], one)
                _add_sums_row(ga, o, sum_G, sum_GObar, c0, c1)
    return sums


_sums_by_act = per_derivative(_sums_rows)


@njit(**JIT_OPTIONS)
def _backward_sums_into(dY, Y, Obar, act, sum_G, sum_GObar, dA):  # pragma: no cover
    """:func:`_backward_sums` that also stores ``G = sigma'(A) * dY`` in ``dA`` (m, n)."""
    sum_G[:] = 0.0
    sum_GObar[:] = 0.0
    _sums_by_act(act, dY, Y, Obar, sum_G, sum_GObar, dA, 0, dY.shape[1])


def _grad_rows(d):  # type: ignore[no-untyped-def]
    """``dA = G = sigma'(A) * dY`` stored, ``sum_G += G`` (float64, rows in order), for
    one activation's derivative ``d`` (:func:`_sums_rows` without ``Obar``)."""
    def grads(dY, Y, sum_G, dA):  # pragma: no cover - compiled
        one = np.ones(1, dY.dtype)[0]
        for i in range(dY.shape[0]):
            dy, y, ga = dY[i], Y[i], dA[i]
            for j in range(dy.shape[0]):
                gj = d(y[j], dy[j], one)
                ga[j] = gj
                sum_G[j] += np.float64(gj)
    return grads


#: ``_grad_sums(act, dY, Y, sum_G, dA)``: the first pass of a narrow layer's backward
#: (:mod:`bnprop.kernels.narrow`); ``sum_G`` accumulates.
_grad_sums = per_derivative(_grad_rows)


@njit(**JIT_OPTIONS)
def _dZ_coefficients(gamma, inv_std, sum_G, sum_GObar, m_total, dt_like):  # pragma: no cover
    n = gamma.shape[0]
    mean_G = np.empty(n, dt_like.dtype)
    mean_GObar = np.empty(n, dt_like.dtype)
    for j in range(n):
        mean_G[j] = sum_G[j] / m_total  # rounded to the arrays' dtype, as the reference
        mean_GObar[j] = sum_GObar[j] / m_total
    return mean_G, mean_GObar, _dZ_scale(gamma, inv_std, dt_like)


@njit(**JIT_OPTIONS)
def _dZ_scale(gamma, inv_std, dt_like):  # pragma: no cover - compiled
    """``scale = gamma * inv_std`` in float64, rounded to ``dt_like``'s dtype (the
    reference's ``scale.astype(dt)``)."""
    scale = np.empty(gamma.shape[0], dt_like.dtype)
    for j in range(scale.shape[0]):
        scale[j] = np.float64(gamma[j]) * inv_std[j]
    return scale


@njit(**JIT_OPTIONS)
def _backward_apply(
    dY, Y, Obar, gamma, inv_std, sum_G, sum_GObar, m_total, act, dZ,
):  # pragma: no cover
    """``dZ = ((G - mean_G) - Obar mean_GObar) scale`` (exact statistics), ``G =
    sigma'(A) * dY`` formed in place; ``dZ`` may be ``dY``."""
    mean_G, mean_GObar, scale = _dZ_coefficients(gamma, inv_std, sum_G, sum_GObar, m_total, Y)
    # In place (dZ is dY): one array read and written, which LLVM vectorizes without a
    # runtime overlap test (two views of one row fail it and run scalar: 6 against 1.5 us).
    inplace = dZ.ctypes.data == dY.ctypes.data
    _apply_by_act(act, dY, Y, Obar, mean_G, mean_GObar, scale, dZ, inplace, 0, dY.shape[1])


def _apply_rows(d):  # type: ignore[no-untyped-def]
    """:func:`_backward_apply` for one activation's derivative ``d`` (compiled per ``d``,
    2.9 -> 1.5 us at 60 x 100). Each ``G[j]`` is formed from ``dY[j]`` before ``dZ[j]``
    is written, so ``dZ`` may be ``dY`` (``inplace``: then only ``dZ`` is indexed). Over
    the columns ``[c0, c1)``, as :func:`_sums_rows`."""
    def apply(dY, Y, Obar, mean_G, mean_GObar, scale, dZ, inplace, c0,
              c1):  # pragma: no cover - compiled
        one = np.ones(1, dY.dtype)[0]
        for i in range(dY.shape[0]):
            y, o, dz = Y[i], Obar[i], dZ[i]
            if inplace:
                for j in range(np.uint64(c0), np.uint64(c1)):
                    g = d(y[j], dz[j], one)
                    dz[j] = ((g - mean_G[j]) - o[j] * mean_GObar[j]) * scale[j]
            else:
                dy = dY[i]
                for j in range(np.uint64(c0), np.uint64(c1)):
                    g = d(y[j], dy[j], one)
                    dz[j] = ((g - mean_G[j]) - o[j] * mean_GObar[j]) * scale[j]
    return apply


_apply_by_act = per_derivative(_apply_rows)


@njit(**JIT_OPTIONS)
def _backward_frozen(dY, Y, Obar, gamma, inv_std, act, sum_G, sum_GObar, dZ):  # pragma: no cover
    """The frozen ``dZ = G * scale`` (``scale = gamma * inv_std`` rounded to dY's dtype)
    with :func:`_backward_sums`' two sums, in one pass; ``dZ`` may be ``dY``."""
    scale = _dZ_scale(gamma, inv_std, dY)
    sum_G[:] = 0.0
    sum_GObar[:] = 0.0
    inplace = dZ.ctypes.data == dY.ctypes.data
    _frozen_by_act(act, dY, Y, Obar, scale, sum_G, sum_GObar, dZ, inplace, 0, dY.shape[1])


def _frozen_rows(d):  # type: ignore[no-untyped-def]
    """:func:`_backward_frozen` for one activation's derivative ``d`` (compiled per ``d``,
    as :func:`_sums_rows`; the same bits as a row of ``G`` stored first). In place
    (``dZ`` is ``dY``) only ``dZ`` is indexed, as in :func:`_apply_rows`. Over the
    columns ``[c0, c1)``, as :func:`_sums_rows`."""
    def frozen(dY, Y, Obar, scale, sum_G, sum_GObar, dZ, inplace, c0,
               c1):  # pragma: no cover - compiled
        one = np.ones(1, dY.dtype)[0]
        for i in range(dY.shape[0]):
            y, o, dz = Y[i], Obar[i], dZ[i]
            if inplace:
                for j in range(np.uint64(c0), np.uint64(c1)):
                    gj = d(y[j], dz[j], one)
                    g = np.float64(gj)
                    sum_G[j] += g
                    sum_GObar[j] += g * o[j]
                    dz[j] = gj * scale[j]
            else:
                dy = dY[i]
                for j in range(np.uint64(c0), np.uint64(c1)):
                    gj = d(y[j], dy[j], one)
                    g = np.float64(gj)
                    sum_G[j] += g
                    sum_GObar[j] += g * o[j]
                    dz[j] = gj * scale[j]
    return frozen


_frozen_by_act = per_derivative(_frozen_rows)
