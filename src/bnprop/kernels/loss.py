"""The mean softmax cross-entropy of a training step, with its elementwise passes compiled.

The same loss and ``dlogits`` as the reference
:func:`bnprop.loss.softmax_cross_entropy_inplace`, bit for bit: the same operations in the
same order and dtypes. Per row ``i`` of ``logits`` (m_local, K)::

    S_i      = logits_i - max_k logits_ik                 (logits' dtype)   _shift_rows
    E_i      = exp(S_i)                                   NumPy's exp
    total_i  = sum_k E_ik                                 NumPy's sum, float64
    loss     = (1/m) sum_i (log total_i - S_{i,y_i})      NumPy's log and sum, float64
    dlogits_i = (E_i / total_i - onehot(y_i)) / m         total rounded to the dtype
                                                                            _finish_rows

``exp`` and ``log`` stay NumPy's own calls: their results depend on NumPy's SIMD
implementations, which a compiled loop would not reproduce. The two float64 sums are
compiled in NumPy's order (:func:`_pairwise_sum`: NumPy's pairwise summation of up to
128 terms, added to 0), used only where a check on random values of the same shape
found NumPy giving the same bits here (:func:`sums_in_numpy_order`, once per shape;
elsewhere NumPy's ``sum`` runs). What the kernels take over is the dozen small NumPy
calls around ``exp`` and ``log`` (60 x 10 float32: 20.7 -> 9.9 us a loss with NumPy's
sums, 5.7 us without).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._jit import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def _shift_rows(logits, y, S_y):  # pragma: no cover - compiled
    """``logits_i -= max_k logits_ik`` (NaN if the row holds one, as ``np.max``);
    ``S_y[i] = S_{i, y_i}`` in float64."""
    m, K = logits.shape
    for i in range(m):
        row = logits[i]
        top = row[0]
        for k in range(1, K):
            if row[k] > top or np.isnan(row[k]):
                top = row[k]
        for k in range(K):
            row[k] = row[k] - top
        S_y[i] = row[y[i]]


@njit(**JIT_OPTIONS)
def _finish_rows(E, y, total, total_rounded, m):  # pragma: no cover - compiled
    """``dlogits_i = (E_i / total_i - onehot(y_i)) / m`` in ``E``'s dtype (``m`` in it
    too); ``total_rounded`` ((m_local, 1), the dtype) receives ``total`` rounded."""
    m_local, K = E.shape
    for i in range(m_local):
        total_rounded[i, 0] = total[i]                       # rounded on the store
        t = total_rounded[i, 0]
        row = E[i]
        for k in range(K):
            row[k] = row[k] / t
        row[y[i]] -= 1
        for k in range(K):
            row[k] = row[k] / m


#: Terms NumPy sums in one block (``PW_BLOCKSIZE``); longer sums stay NumPy's own.
PAIRWISE_BLOCK = 128


@njit(**JIT_OPTIONS)
def _pairwise_sum(a, n):  # pragma: no cover - compiled
    """``sum(a[:n])`` in float64, ``n <= PAIRWISE_BLOCK``, in the order of NumPy's
    ``pairwise_sum`` (``numpy/_core/src/umath/loops_utils.h.src``): below 8 terms one by
    one; else eight running sums over strides of 8, combined as ``((r0 + r1) + (r2 + r3))
    + ((r4 + r5) + (r6 + r7))``, then the rest one by one."""
    if n < 8:
        res = 0.0
        for i in range(n):
            res += np.float64(a[i])
        return res
    # Eight scalars, not an array: no allocation per call (60 rows of 10: 1.6 -> 0.6 us).
    r0, r1, r2, r3 = np.float64(a[0]), np.float64(a[1]), np.float64(a[2]), np.float64(a[3])
    r4, r5, r6, r7 = np.float64(a[4]), np.float64(a[5]), np.float64(a[6]), np.float64(a[7])
    whole = n - n % 8
    for i in range(8, whole, 8):
        r0 += np.float64(a[i])
        r1 += np.float64(a[i + 1])
        r2 += np.float64(a[i + 2])
        r3 += np.float64(a[i + 3])
        r4 += np.float64(a[i + 4])
        r5 += np.float64(a[i + 5])
        r6 += np.float64(a[i + 6])
        r7 += np.float64(a[i + 7])
    res = ((r0 + r1) + (r2 + r3)) + ((r4 + r5) + (r6 + r7))
    for i in range(whole, n):
        res += np.float64(a[i])
    return res


@njit(**JIT_OPTIONS)
def _row_totals(E, total):  # pragma: no cover - compiled
    """``total_i = sum_k E_ik`` in float64: ``np.sum(E, axis=1, dtype=np.float64)``'s order."""
    for i in range(E.shape[0]):
        total[i] = 0.0 + _pairwise_sum(E[i], E.shape[1])


@njit(**JIT_OPTIONS)
def _mean_loss(log_total, S_y, m):  # pragma: no cover - compiled
    """``log_total -= S_y``, then ``np.sum(log_total) / m`` in NumPy's order."""
    for i in range(log_total.shape[0]):
        log_total[i] -= S_y[i]
    return (0.0 + _pairwise_sum(log_total, log_total.shape[0])) / m


_order_checked: dict[tuple[str, int, int], bool] = {}


def sums_in_numpy_order(dtype: np.dtype, m_local: int, K: int) -> bool:
    """Whether :func:`_row_totals` and :func:`_mean_loss` give NumPy's sums' bits for
    ``(m_local, K)`` logits of ``dtype`` on this NumPy: checked once per shape on random
    values of mixed signs and scales (another summation order would differ in most
    sums), then kept."""
    key = (np.dtype(dtype).str, m_local, K)
    ok = _order_checked.get(key)
    if ok is None and max(m_local, K) > PAIRWISE_BLOCK:
        ok = _order_checked[key] = False
    if ok is None:
        rng = np.random.default_rng(m_local * 1009 + K)
        E = (rng.standard_normal((m_local, K))
             * 10.0 ** rng.integers(-4, 5, (m_local, K))).astype(dtype)
        total = np.empty(m_local)
        _row_totals(E, total)
        log_total, S_y = rng.standard_normal(m_local) * 1e3, rng.standard_normal(m_local)
        want = np.sum(log_total - S_y) / 3
        ok = bool(np.array_equal(total, np.sum(E, axis=1, dtype=np.float64))
                  and _mean_loss(log_total, S_y, 3) == want)
        _order_checked[key] = ok
    return ok


def softmax_cross_entropy_inplace(logits: np.ndarray, y: np.ndarray, m: float,
                                  rowmax: np.ndarray, total: np.ndarray, S_y: np.ndarray,
                                  log_total: np.ndarray) -> float:
    """The loss (module docstring); ``logits`` (m_local, K), K >= 1, C-contiguous, is overwritten by
    ``dlogits``. ``y``: intp labels in range. Work buffers: ``rowmax`` ((m_local, 1), the
    logits' dtype), ``total``, ``S_y`` and ``log_total`` ((m_local,), float64).

    In stages, which the compiled train step (:mod:`bnprop.nn.compiled`) runs around its
    own calls: :func:`_shift_rows`, :func:`exp_rows`, :func:`_finish_rows`,
    :func:`mean_loss` (the last two are independent)."""
    _shift_rows(logits, y, S_y)
    compiled = exp_rows(logits, total)
    _finish_rows(logits, y, total, rowmax, logits.dtype.type(m))
    return mean_loss(total, S_y, log_total, m, compiled)


def exp_rows(logits: np.ndarray, total: np.ndarray, totals_later: bool = False,
             compiled: bool | None = None) -> bool:
    """``E = exp(S)`` in place (NumPy's exp), and ``total_i = sum_k E_ik`` (float64) into
    ``total``; returns whether the sums are the compiled ones (:func:`sums_in_numpy_order`,
    unless the caller kept its answer for this shape in ``compiled``), whose pass
    :func:`_row_totals` is left to the caller when ``totals_later``."""
    np.exp(logits, out=logits)
    if compiled is None:
        compiled = sums_in_numpy_order(logits.dtype, logits.shape[0], logits.shape[1])
    if not compiled:
        np.sum(logits, axis=1, dtype=np.float64, out=total)
    elif not totals_later:
        _row_totals(logits, total)
    return compiled


def mean_loss(total: np.ndarray, S_y: np.ndarray, log_total: np.ndarray, m: float,
              compiled: bool) -> float:
    """``loss = (1/m) sum_i (log total_i - S_{i,y_i})``: NumPy's log, the sum in NumPy's
    order (compiled when :func:`exp_rows` said so)."""
    np.log(total, out=log_total)
    if compiled:
        return float(_mean_loss(log_total, S_y, m))
    log_total -= S_y
    return float(np.sum(log_total) / m)


@njit(**JIT_OPTIONS)
def labels_in_range(y, n_classes):  # pragma: no cover - compiled
    """Whether every label of the 1-D intp ``y`` lies in ``0..n_classes-1``: one pass,
    where :func:`bnprop.loss.check_labels` takes a ``min`` and a ``max`` (60 labels: 2.6
    -> 0.3 us); that function still names a bad label."""
    bad = False
    for i in range(y.shape[0]):
        bad |= (y[i] < 0) | (y[i] >= n_classes)
    return not bad

