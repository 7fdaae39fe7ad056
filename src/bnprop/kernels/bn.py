"""Fused batch-norm kernels (Numba), each equal to its NumPy reference in :mod:`bnprop.batchnorm`.

Same conventions and equations as :mod:`bnprop.batchnorm` (rows are examples, biased
variance, float64 statistics); ``Z`` is row-major ``(m, n)``, so every loop runs over
the ``n`` contiguous features of one row and the per-feature accumulators stay in L1.

Each pass is split into a *reduce* kernel, whose per-feature results a distributed run
all-reduces, and an *apply* kernel that needs only the reduced (global) vectors::

    forward   reduce  moments          Z -> count, mean, M2                       (n,) f64
              (all-reduce with Chan's combination; inv_std = 1 / sqrt(M2 / count + eps))
              apply   forward_apply    Obar = (Z - mean) * inv_std                (m, n)
                                       A    = gamma * Obar + beta                 (m, n)
                                       Y    = sigma(A)                            (m, n)
    backward  reduce  backward_sums    G = sigma'(A) * dY  (from Y)
                                       sum_G = sum_rows(G), sum_GObar = sum_rows(G * Obar)
              (all-reduce the two sums)
              apply   backward_apply   dZ = gamma * inv_std * (G - sum_G / m - Obar * sum_GObar / m)
    frozen statistics, one pass:       backward_frozen: the two sums and dZ = gamma * inv_std * G

``dbeta = sum_G`` and ``dgamma = sum_GObar``. :func:`forward` and :func:`backward` run
reduce and apply for one process.

Memory traffic is what these kernels are about (``m x n`` arrays are read and written,
``n``-vectors live in cache):

* :func:`moments` reads ``Z`` once, in blocks of rows that fit in L2, accumulating in
  float64 relative to a fixed shift ``K`` (the first block's mean): ``S1 = sum(Z - K)``,
  ``S2 = sum((Z - K)^2)``, and the block's ``M2 = S2 - S1^2 / n_b`` when that loses at
  most one bit (``S1^2 / n_b <= S2 / 2``); otherwise (the first block, or rows whose
  mean drifts far from ``K``) an exact second pass over the cached block. Blocks are
  merged with Chan's combination (:func:`bnprop.batchnorm.chan_combine`) on means
  relative to ``K``, so no rounding relative to a large offset enters the merge. The
  result equals the two-pass reference to rounding.
* ``G`` is never stored: the backward kernels recompute ``sigma'(A) * dY`` from ``Y`` (an
  in-cache row), which costs less than writing and re-reading an ``(m, n)`` array.
* Outputs may overwrite inputs of the same shape: ``Obar`` may be ``Z`` and ``dZ`` may be
  ``dY`` (saving the buffer and, on the write, the read-for-ownership of a fresh one).
  ``A`` is written only when an array is given: the backward kernels do not need it.

Rounding: the element-wise operations are those of the reference, in the same order and
the same dtype (``Obar`` in float64 then rounded; ``A``, ``G`` and ``dZ`` in the arrays'
dtype), so they round alike; only the order of the float64 sums differs.

All kernels are serial (see :mod:`bnprop.threads` for why) and compiled lazily, once per
dtype, with the options of :mod:`bnprop.kernels._jit`.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from numba import njit

from bnprop import batchnorm as bn
from bnprop._validate import FLOAT_DTYPES, InputError, check_choice, check_positive
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels.activations import ACTIVATION_CODES, activation_row, derivative_row

#: Bytes of ``Z`` per block of :func:`moments`: small enough that a second pass over the
#: block (when its one-pass M2 would cancel) reads from cache. Speed hardly depends on it.
BLOCK_BYTES = 1 << 17

STATS_MODES = ("exact", "frozen")


# --------------------------------------------------------------------------- kernels


@njit(**JIT_OPTIONS)
def _block_sums(Z, start, stop, center, S1, S2):  # pragma: no cover - compiled
    """``S1 = sum_i (Z_i - center)``, ``S2 = sum_i (Z_i - center)^2`` over rows [start, stop)."""
    n = Z.shape[1]
    S1[:] = 0.0
    S2[:] = 0.0
    for i in range(start, stop):
        z = Z[i]
        for j in range(n):
            d = z[j] - center[j]
            S1[j] += d
            S2[j] += d * d


@njit(**JIT_OPTIONS)
def _moments(Z, block_rows, mean, M2):  # pragma: no cover - compiled
    m, n = Z.shape
    mean[:] = 0.0  # relative to K until the end
    M2[:] = 0.0
    if m == 0:
        return 0
    K = np.zeros(n)  # the shift: the first block's mean
    S1 = np.empty(n)
    S2 = np.empty(n)
    center = np.empty(n)
    offset = np.zeros(n)  # center - K
    count = 0
    for start in range(0, m, block_rows):
        stop = min(start + block_rows, m)
        n_b = stop - start
        _block_sums(Z, start, stop, K, S1, S2)  # the one pass over memory
        # The block's M2 = S2 - S1^2 / n_b loses more than one bit when S1^2 / n_b > S2 / 2
        # (the block's mean is far from K: the first block, or rows whose mean drifts);
        # then sum again around the block's own mean, from cache (corrected two-pass).
        cancels = count == 0
        for j in range(n):
            cancels |= S1[j] * S1[j] > 0.5 * n_b * S2[j]
        if cancels:
            for j in range(n):
                center[j] = K[j] + S1[j] / n_b
            if count == 0:
                K[:] = center
            for j in range(n):
                offset[j] = center[j] - K[j]
            _block_sums(Z, start, stop, center, S1, S2)
        # Chan, Golub & LeVeque: merge (count, mean - K, M2) with the block's
        # (n_b, offset + S1 / n_b, S2 - S1^2 / n_b).
        total = count + n_b
        w_b = n_b / total
        w_ab = (count / total) * n_b
        for j in range(n):
            d_mean = S1[j] / n_b
            delta = (offset[j] + d_mean) - mean[j]
            mean[j] += delta * w_b
            M2[j] += (S2[j] - S1[j] * d_mean) + delta * delta * w_ab
        if cancels:
            offset[:] = 0.0
        count = total
    for j in range(n):
        mean[j] += K[j]
    return count


@njit(**JIT_OPTIONS)
def _forward_apply(Z, mean, inv_std, gamma, beta, act, Obar, Y, A):  # pragma: no cover
    m, n = Z.shape
    one = np.ones(1, Z.dtype)[0]
    obar_row = np.empty(n, Z.dtype)
    a_scratch = np.empty(n, Z.dtype)
    for i in range(m):
        z = Z[i]
        for j in range(n):
            obar_row[j] = (z[j] - mean[j]) * inv_std[j]  # float64, rounded on the store
        # Z[i] is not read below, so Obar may be Z.
        o = Obar[i]
        a = a_scratch if A is None else A[i]
        for j in range(n):
            ob = obar_row[j]
            o[j] = ob
            a[j] = gamma[j] * ob + beta[j]
        activation_row(act, a, one, Y[i])


@njit(**JIT_OPTIONS)
def _backward_sums(dY, Y, Obar, act, sum_G, sum_GObar):  # pragma: no cover
    m, n = dY.shape
    one = np.ones(1, dY.dtype)[0]
    G = np.empty(n, dY.dtype)
    sum_G[:] = 0.0
    sum_GObar[:] = 0.0
    for i in range(m):
        derivative_row(act, dY[i], Y[i], one, G)
        o = Obar[i]
        for j in range(n):
            g = np.float64(G[j])
            sum_G[j] += g
            sum_GObar[j] += g * o[j]


@njit(**JIT_OPTIONS)
def _dZ_coefficients(gamma, inv_std, sum_G, sum_GObar, m_total, dt_like):  # pragma: no cover
    n = gamma.shape[0]
    mean_G = np.empty(n, dt_like.dtype)
    mean_GObar = np.empty(n, dt_like.dtype)
    scale = np.empty(n, dt_like.dtype)
    for j in range(n):
        mean_G[j] = sum_G[j] / m_total  # rounded to the arrays' dtype, as the reference
        mean_GObar[j] = sum_GObar[j] / m_total
        scale[j] = np.float64(gamma[j]) * inv_std[j]
    return mean_G, mean_GObar, scale


@njit(**JIT_OPTIONS)
def _backward_apply(
    dY, Y, Obar, gamma, inv_std, sum_G, sum_GObar, m_total, act, dZ,
):  # pragma: no cover
    m, n = dY.shape
    one = np.ones(1, dY.dtype)[0]
    mean_G, mean_GObar, scale = _dZ_coefficients(gamma, inv_std, sum_G, sum_GObar, m_total, Y)
    G = np.empty(n, dY.dtype)
    for i in range(m):
        derivative_row(act, dY[i], Y[i], one, G)
        # dY[i] is not read below, so dZ may be dY.
        o = Obar[i]
        dz = dZ[i]
        for j in range(n):
            dz[j] = ((G[j] - mean_G[j]) - o[j] * mean_GObar[j]) * scale[j]


@njit(**JIT_OPTIONS)
def _backward_frozen(dY, Y, Obar, gamma, inv_std, act, sum_G, sum_GObar, dZ):  # pragma: no cover
    m, n = dY.shape
    one = np.ones(1, dY.dtype)[0]
    scale = np.empty(n, dY.dtype)
    for j in range(n):
        scale[j] = np.float64(gamma[j]) * inv_std[j]
    G = np.empty(n, dY.dtype)
    sum_G[:] = 0.0
    sum_GObar[:] = 0.0
    for i in range(m):
        derivative_row(act, dY[i], Y[i], one, G)
        o = Obar[i]
        for j in range(n):
            g = np.float64(G[j])
            sum_G[j] += g
            sum_GObar[j] += g * o[j]
        # A separate loop: one with three stores would need too many runtime alias
        # checks for LLVM to vectorize it. G is in L1.
        dz = dZ[i]
        for j in range(n):
            dz[j] = G[j] * scale[j]


# --------------------------------------------------------------------------- checks


def _describe(x: object) -> str:
    if not isinstance(x, np.ndarray):
        return f"{type(x).__name__}"
    layout = "C-contiguous " if x.flags.c_contiguous else "non-contiguous "
    return f"a {layout}{x.dtype} array of shape {x.shape}"


def _check_rows(x: object, name: str, shape: tuple[int, ...] | None = None,
                dtype: np.dtype | None = None, *, out: bool = False) -> np.ndarray:
    """An (m, n) float array the kernels index directly: C-contiguous, no conversion."""
    ok = (
        isinstance(x, np.ndarray) and x.ndim == 2 and x.flags.c_contiguous
        and (x.dtype in FLOAT_DTYPES if dtype is None else x.dtype == dtype)
        and (shape is None or x.shape == shape)
        and (not out or x.flags.writeable)
    )
    if not ok:
        want_dtype = "float32 or float64" if dtype is None else str(dtype)
        want_shape = "(m, n)" if shape is None else str(shape)
        what = "writeable " if out else ""
        raise InputError(
            f"{name}: expected a {what}C-contiguous {want_dtype} array of shape {want_shape}, "
            f"got {_describe(x)} instead."
        )
    return x


def _vector(x: object, name: str, n: int, dtype: np.dtype) -> np.ndarray:
    """A per-feature (n,) input, converted to ``dtype`` (a copy only if needed)."""
    v = np.ascontiguousarray(x, dtype=dtype)
    if v.shape != (n,):
        raise InputError(f"{name}: expected shape ({n},), got shape {v.shape} instead.")
    return v


def _out_vector(x: np.ndarray | None, name: str, n: int) -> np.ndarray:
    """A per-feature float64 (n,) output, allocated when ``None``."""
    if x is None:
        return np.empty(n)
    if not (isinstance(x, np.ndarray) and x.dtype == np.float64 and x.shape == (n,)
            and x.flags.c_contiguous and x.flags.writeable):
        raise InputError(
            f"{name}: expected a writeable C-contiguous float64 array of shape ({n},), "
            f"got {_describe(x)} instead."
        )
    return x


def _activation_code(activation: str) -> int:
    return ACTIVATION_CODES[check_choice(activation, "activation", tuple(ACTIVATION_CODES))]


# --------------------------------------------------------------------------- API


def moments(
    Z: np.ndarray, *, mean: np.ndarray | None = None, M2: np.ndarray | None = None,
) -> tuple[int, np.ndarray, np.ndarray]:
    """Per-feature count, mean and centered sum of squares of ``Z``: the forward reduce.

    ``mean = (1/m) sum_i Z_i``, ``M2 = sum_i (Z_i - mean)^2``, in float64; equal to
    :func:`bnprop.batchnorm.batch_moments` to rounding, in one read of ``Z``.

    Parameters
    ----------
    Z : ndarray of shape (m, n), float32 or float64, C-contiguous
        ``m = 0`` gives ``(0, zeros, zeros)``, the identity of Chan's combination.
    mean, M2 : ndarray of shape (n,), float64, optional
        Output buffers; allocated when omitted.

    Returns
    -------
    count : int
    mean, M2 : ndarray of shape (n,), float64
    """
    Z = _check_rows(Z, "Z")
    n = Z.shape[1]
    mean = _out_vector(mean, "mean", n)
    M2 = _out_vector(M2, "M2", n)
    block_rows = max(1, BLOCK_BYTES // max(1, n * Z.itemsize))
    count = _moments(Z, block_rows, mean, M2)
    return int(count), mean, M2


def forward_apply(
    Z: np.ndarray, mean: np.ndarray, inv_std: np.ndarray, gamma: np.ndarray,
    beta: np.ndarray, *, activation: str, Obar: np.ndarray, Y: np.ndarray,
    A: np.ndarray | None = None,
) -> None:
    """The forward apply: ``Obar``, ``Y`` (and ``A`` if given) from the reduced statistics.

    ``Obar = (Z - mean) * inv_std`` (float64, rounded to Z's dtype),
    ``A = gamma * Obar + beta``, ``Y = sigma(A)`` (in Z's dtype).

    Parameters
    ----------
    Z : ndarray of shape (m, n), float32 or float64, C-contiguous
    mean, inv_std : array_like of shape (n,)
        Batch mean and ``1 / sqrt(var_B + eps)`` of the whole (possibly distributed)
        batch; used in float64.
    gamma, beta : array_like of shape (n,)
        Used in Z's dtype.
    activation : {"sigmoid", "tanh", "relu", "identity"}
    Obar, Y : ndarray of shape (m, n), Z's dtype
        Outputs. ``Obar`` may be ``Z`` itself (normalized in place).
    A : ndarray of shape (m, n), Z's dtype, optional
        Written only when given (the backward kernels need ``Y`` and ``Obar``, not ``A``).
    """
    Z = _check_rows(Z, "Z")
    n = Z.shape[1]
    dt = Z.dtype
    Obar = _check_rows(Obar, "Obar", Z.shape, dt, out=True)
    Y = _check_rows(Y, "Y", Z.shape, dt, out=True)
    if A is not None:
        A = _check_rows(A, "A", Z.shape, dt, out=True)
    _forward_apply(
        Z, _vector(mean, "mean", n, np.float64), _vector(inv_std, "inv_std", n, np.float64),
        _vector(gamma, "gamma", n, dt), _vector(beta, "beta", n, dt),
        _activation_code(activation), Obar, Y, A,
    )


class BNForward(NamedTuple):
    """What :func:`forward` returns: float64 statistics (n,) and the (m, n) outputs."""

    mean: np.ndarray
    var: np.ndarray
    inv_std: np.ndarray
    Obar: np.ndarray
    Y: np.ndarray
    A: np.ndarray | None


def forward(
    Z: np.ndarray, gamma: np.ndarray, beta: np.ndarray, *, activation: str = "sigmoid",
    eps: float = 1e-5, Obar: np.ndarray | None = None, Y: np.ndarray | None = None,
    A: np.ndarray | None = None,
) -> BNForward:
    """Batch norm and activation of one process's batch: :func:`moments` then :func:`forward_apply`.

    ``var = M2 / m`` (biased), ``inv_std = 1 / sqrt(var + eps)``
    (:func:`bnprop.batchnorm.inverse_std`). ``Obar`` and ``Y`` are allocated when omitted;
    ``Obar=Z`` normalizes in place; ``A`` is written only when given.

    Returns
    -------
    BNForward
        ``mean, var, inv_std`` (float64, (n,)) and ``Obar, Y, A``.
    """
    eps = check_positive(eps, "eps")
    Z = _check_rows(Z, "Z")
    if Z.shape[0] == 0:
        raise InputError("Z: expected at least one row, got shape (0, n) instead.")
    count, mean, M2 = moments(Z)
    var = M2 / count
    inv_std = bn.inverse_std(var, eps)
    Obar = np.empty_like(Z) if Obar is None else Obar
    Y = np.empty_like(Z) if Y is None else Y
    forward_apply(Z, mean, inv_std, gamma, beta, activation=activation, Obar=Obar, Y=Y, A=A)
    return BNForward(mean, var, inv_std, Obar, Y, A)


def backward_sums(
    dY: np.ndarray, Y: np.ndarray, Obar: np.ndarray, *, activation: str,
    sum_G: np.ndarray | None = None, sum_GObar: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The backward reduce: ``sum_rows(G)`` and ``sum_rows(G * Obar)``, ``G = sigma'(A) * dY``.

    Float64 accumulations (each product ``G * Obar`` formed in float64), equal to
    :func:`bnprop.batchnorm.backward_sums` of the reference's ``G`` to rounding. They
    are ``dbeta`` and ``dgamma``.

    Parameters
    ----------
    dY, Y, Obar : ndarray of shape (m, n), one float dtype, C-contiguous
        ``dF/dY``, the layer's output ``sigma(A)`` and its normalized ``Z``.
    activation : {"sigmoid", "tanh", "relu", "identity"}
    sum_G, sum_GObar : ndarray of shape (n,), float64, optional
        Output buffers; allocated when omitted.

    Returns
    -------
    sum_G, sum_GObar : ndarray of shape (n,), float64
    """
    dY = _check_rows(dY, "dY")
    n = dY.shape[1]
    Y = _check_rows(Y, "Y", dY.shape, dY.dtype)
    Obar = _check_rows(Obar, "Obar", dY.shape, dY.dtype)
    sum_G = _out_vector(sum_G, "sum_G", n)
    sum_GObar = _out_vector(sum_GObar, "sum_GObar", n)
    _backward_sums(dY, Y, Obar, _activation_code(activation), sum_G, sum_GObar)
    return sum_G, sum_GObar


def backward_apply(
    dY: np.ndarray, Y: np.ndarray, Obar: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray,
    sum_G: np.ndarray, sum_GObar: np.ndarray, m: float, *, activation: str, dZ: np.ndarray,
) -> None:
    """The backward apply, exact statistics: :func:`bnprop.batchnorm.dZ_exact` into ``dZ``.

    ``dZ = ((G - sum_G / m) - Obar * (sum_GObar / m)) * (gamma * inv_std)``, the three
    coefficient vectors rounded to dY's dtype, as the reference does.

    Parameters
    ----------
    dY, Y, Obar : ndarray of shape (m_local, n), one float dtype, C-contiguous
    gamma, inv_std : array_like of shape (n,)
        ``gamma * inv_std`` is formed in float64.
    sum_G, sum_GObar : array_like of shape (n,)
        Sums over the whole (possibly distributed) batch, from :func:`backward_sums`.
    m : float
        Size of the whole batch.
    activation : {"sigmoid", "tanh", "relu", "identity"}
    dZ : ndarray of shape (m_local, n), dY's dtype
        Output; may be ``dY`` itself.
    """
    dY = _check_rows(dY, "dY")
    n = dY.shape[1]
    Y = _check_rows(Y, "Y", dY.shape, dY.dtype)
    Obar = _check_rows(Obar, "Obar", dY.shape, dY.dtype)
    dZ = _check_rows(dZ, "dZ", dY.shape, dY.dtype, out=True)
    _backward_apply(
        dY, Y, Obar, _vector(gamma, "gamma", n, dY.dtype),
        _vector(inv_std, "inv_std", n, np.float64), _vector(sum_G, "sum_G", n, np.float64),
        _vector(sum_GObar, "sum_GObar", n, np.float64), check_positive(m, "m"),
        _activation_code(activation), dZ,
    )


def backward_frozen(
    dY: np.ndarray, Y: np.ndarray, Obar: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray,
    *, activation: str, dZ: np.ndarray, sum_G: np.ndarray | None = None,
    sum_GObar: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Frozen statistics in one pass: :func:`backward_sums` and ``dZ = G * (gamma * inv_std)``.

    ``dZ`` is :func:`bnprop.batchnorm.dZ_frozen` (the handout's part 4); it needs no
    global sum, so a distributed run reduces ``sum_G`` and ``sum_GObar`` (``dbeta``,
    ``dgamma``) afterwards, like any parameter gradient.

    Parameters are those of :func:`backward_sums` and :func:`backward_apply`; ``dZ`` may
    be ``dY`` itself.

    Returns
    -------
    sum_G, sum_GObar : ndarray of shape (n,), float64
    """
    dY = _check_rows(dY, "dY")
    n = dY.shape[1]
    Y = _check_rows(Y, "Y", dY.shape, dY.dtype)
    Obar = _check_rows(Obar, "Obar", dY.shape, dY.dtype)
    dZ = _check_rows(dZ, "dZ", dY.shape, dY.dtype, out=True)
    sum_G = _out_vector(sum_G, "sum_G", n)
    sum_GObar = _out_vector(sum_GObar, "sum_GObar", n)
    _backward_frozen(
        dY, Y, Obar, _vector(gamma, "gamma", n, dY.dtype),
        _vector(inv_std, "inv_std", n, np.float64), _activation_code(activation),
        sum_G, sum_GObar, dZ,
    )
    return sum_G, sum_GObar


class BNBackward(NamedTuple):
    """:func:`backward`'s result: ``dgamma = sum_GObar``, ``dbeta = sum_G`` (float64), ``dZ``."""

    dgamma: np.ndarray
    dbeta: np.ndarray
    dZ: np.ndarray


def backward(
    dY: np.ndarray, Y: np.ndarray, Obar: np.ndarray, gamma: np.ndarray, inv_std: np.ndarray,
    *, activation: str = "sigmoid", stats: str = "exact", dZ: np.ndarray | None = None,
) -> BNBackward:
    """Backward of batch norm and activation for one process's batch.

    ``stats="exact"``: :func:`backward_sums` then :func:`backward_apply` with ``m`` the
    number of rows; ``stats="frozen"``: :func:`backward_frozen`. ``dZ`` is allocated when
    omitted and may be ``dY``.

    Returns
    -------
    BNBackward
        ``dgamma = sum_rows(G * Obar)``, ``dbeta = sum_rows(G)`` (float64, (n,)), ``dZ``.
    """
    check_choice(stats, "stats", STATS_MODES)
    dY = _check_rows(dY, "dY")
    dZ = np.empty_like(dY) if dZ is None else dZ
    if stats == "frozen":
        sum_G, sum_GObar = backward_frozen(dY, Y, Obar, gamma, inv_std,
                                           activation=activation, dZ=dZ)
    else:
        sum_G, sum_GObar = backward_sums(dY, Y, Obar, activation=activation)
        backward_apply(dY, Y, Obar, gamma, inv_std, sum_G, sum_GObar, dY.shape[0],
                       activation=activation, dZ=dZ)
    return BNBackward(sum_GObar, sum_G, dZ)
