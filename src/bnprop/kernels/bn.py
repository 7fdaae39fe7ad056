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

from bnprop import batchnorm as bn
from bnprop._validate import FLOAT_DTYPES, InputError, check_choice, check_positive
from bnprop.kernels._bn_compiled import (  # the compiled kernels, used here and by nn.stage
    _backward_apply,
    _backward_frozen,
    _backward_sums,
    _forward_apply,
    _moments,
)
from bnprop.kernels.activations import ACTIVATION_CODES

#: Bytes of ``Z`` per block of :func:`moments`: small enough that a second pass over the
#: block (when its one-pass M2 would cancel) reads from cache. Speed hardly depends on it.
BLOCK_BYTES = 1 << 17

STATS_MODES = ("exact", "frozen")


__all__ = [
    "BLOCK_BYTES", "STATS_MODES", "BNBackward", "BNForward", "_backward_apply",
    "_backward_frozen", "_backward_sums", "_forward_apply", "_moments", "backward",
    "backward_apply", "backward_frozen", "backward_sums", "forward", "forward_apply", "moments",
]


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
    var = bn.biased_var(M2, count)
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
