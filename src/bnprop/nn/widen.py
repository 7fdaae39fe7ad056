"""The batch-norm kernels on narrow rows, ``r`` rows at a time.

A convolution's BN sees ``m = N H W`` rows of few channels (16, 32): the kernels of
:mod:`bnprop.kernels.bn` would spend their time on per-row overhead, not on data. Since a
C-contiguous block of ``r`` rows of ``n`` features is one row of ``r n``, the same
kernels run on the ``(rows / r, r n)`` view with every per-feature vector tiled ``r``
times::

    element-wise (forward apply, backward apply, frozen dZ)   the same operations on the
                                                              same values: identical results
    reductions over rows                                      r groups of rows/r rows each,
                                                              merged per feature:
        sums     sum = sum_g sum_g                                     (float64)
        moments  mean = (1/r) sum_g mean_g,
                 M2   = sum_g M2_g + (rows / r) sum_g (mean_g - mean)^2  (Chan, equal counts)

The folds are compiled (:mod:`bnprop.kernels.fold`, bit for bit the NumPy expressions
above). The ``rows mod r`` rows left over run on the plain kernels and join by Chan's
combination (moments) or addition (sums). :class:`Widened` offers the kernels' names, so
:class:`~bnprop.nn.stage.BNStage` calls either.
"""

from __future__ import annotations

import numpy as np

from bnprop import batchnorm as bn
from bnprop.kernels import bn as bnk
from bnprop.kernels import fold

#: Bytes of a widened row: enough for the kernels' loops to run on vectors.
WIDE_ROW_BYTES = 512


def widening(n: int, itemsize: int) -> int:
    """Rows per widened row for ``n`` features: ``r >= 1``."""
    return max(1, WIDE_ROW_BYTES // max(1, n * itemsize))


class Plain:
    """The kernels of :mod:`bnprop.kernels.bn` as they are (an object, so that a stage
    that holds it pickles: a module does not)."""

    _moments = staticmethod(bnk._moments)
    _forward_apply = staticmethod(bnk._forward_apply)
    _backward_sums = staticmethod(bnk._backward_sums)
    _backward_apply = staticmethod(bnk._backward_apply)
    _backward_frozen = staticmethod(bnk._backward_frozen)


class Widened:
    """The kernels of :mod:`bnprop.kernels.bn` on ``(rows / r, r n)`` views (module
    docstring); same signatures, same results (reductions to rounding)."""

    def __init__(self, r: int) -> None:
        self.r = r

    def _split(self, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The widened head of ``a`` (rows, n) and its narrow tail."""
        rows, n = a.shape
        head = rows - rows % self.r
        return a[:head].reshape(-1, self.r * n), a[head:]

    def _tile(self, v: np.ndarray) -> np.ndarray:
        """``v`` repeated ``r`` times, as ``np.tile(v, r)``: one NumPy call (0.8 against
        3.2 us for ``np.tile``'s Python). The parts of a stage call this on both threads,
        each holding the GIL meanwhile: the CNN step, 2 threads, took 0.45-0.50 ms less
        (18.7 -> 18.2 ms, rounds of both alternated in one process)."""
        return v[np.newaxis].repeat(self.r, 0).reshape(-1)

    def _moments(self, Z, block_rows, mean, M2):  # type: ignore[no-untyped-def]
        Zw, tail = self._split(Z)
        n, r = Z.shape[1], self.r
        count = 0
        if Zw.shape[0]:
            mean_w, M2_w = np.empty(r * n), np.empty(r * n)
            count_g = int(bnk._moments(Zw, max(1, block_rows // r), mean_w, M2_w))
            fold.fold_moments(mean_w, M2_w, r, float(count_g), mean, M2)
            count = count_g * r
        if tail.shape[0]:
            mean_t, M2_t = np.empty(n), np.empty(n)
            count_t = int(bnk._moments(tail, block_rows, mean_t, M2_t))
            if count == 0:
                mean[...], M2[...] = mean_t, M2_t
            else:
                _, mean[...], M2[...] = bn.chan_combine(count, mean.copy(), M2.copy(),
                                                        count_t, mean_t, M2_t)
            count += count_t
        return count

    def _forward_apply(self, Z, mean, inv_std, gamma, beta, act, Obar, Y, A):  # type: ignore[no-untyped-def]
        t = self._tile
        for z, o, y in zip(self._split(Z), self._split(Obar), self._split(Y), strict=True):
            wide = z.shape[1] != Z.shape[1]
            if z.shape[0]:
                bnk._forward_apply(z, t(mean) if wide else mean, t(inv_std) if wide else inv_std,
                                   t(gamma) if wide else gamma, t(beta) if wide else beta,
                                   act, o, y, None)

    def _sums(self, fn, sum_G, sum_GObar, *arrays):  # type: ignore[no-untyped-def]
        """``fn(*parts, sG, sGO)`` on the head and tail; the sums folded and added."""
        n = sum_G.shape[0]
        sum_G[...] = 0.0
        sum_GObar[...] = 0.0
        for parts in zip(*(self._split(a) for a in arrays), strict=True):
            if parts[0].shape[0] == 0:
                continue
            width = parts[0].shape[1]
            sG, sGO = np.empty(width), np.empty(width)
            fn(*parts, sG, sGO)
            fold.fold_add(sG, n, sum_G)
            fold.fold_add(sGO, n, sum_GObar)

    def _backward_sums(self, dY, Y, Obar, act, sum_G, sum_GObar):  # type: ignore[no-untyped-def]
        self._sums(lambda d, y, o, sG, sGO: bnk._backward_sums(d, y, o, act, sG, sGO),
                   sum_G, sum_GObar, dY, Y, Obar)

    def _backward_frozen(self, dY, Y, Obar, gamma, inv_std, act, sum_G, sum_GObar, dZ):  # type: ignore[no-untyped-def]
        def fn(d, y, o, dz, sG, sGO):  # type: ignore[no-untyped-def]
            wide = d.shape[1] != dY.shape[1]
            g, s = (self._tile(gamma), self._tile(inv_std)) if wide else (gamma, inv_std)
            bnk._backward_frozen(d, y, o, g, s, act, sG, sGO, dz)

        self._sums(fn, sum_G, sum_GObar, dY, Y, Obar, dZ)

    def _backward_apply(self, dY, Y, Obar, gamma, inv_std, sum_G, sum_GObar, m_total, act, dZ):  # type: ignore[no-untyped-def]
        t = self._tile
        for d, y, o, dz in zip(self._split(dY), self._split(Y), self._split(Obar),
                               self._split(dZ), strict=True):
            if d.shape[0] == 0:
                continue
            if d.shape[1] != dY.shape[1]:
                bnk._backward_apply(d, y, o, t(gamma), t(inv_std), t(sum_G), t(sum_GObar),
                                    m_total, act, dz)
            else:
                bnk._backward_apply(d, y, o, gamma, inv_std, sum_G, sum_GObar, m_total, act,
                                    dz)
