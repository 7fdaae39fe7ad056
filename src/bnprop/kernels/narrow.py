"""The split backward pass of a narrow layer (few inputs beside its outputs): one pass
over ``dY`` and ``Y``, with every term that reads ``Obar`` taken through the centered
input instead.

The exact backward pass (:mod:`bnprop.batchnorm`), ``k = gamma * inv_std`` (the cache's
``inv_std``), ``m`` rows::

    G = dA = sigma'(A) * dY                                   (m, n_out)
    dZ = k * (G - sum_G / m - Obar * sum_GObar / m)
    dW = dZ^T O,   dO = dZ W

reads ``Obar`` over the whole batch twice, for ``sum_GObar`` and again for ``dZ``; a
split forward pass keeps ``Z``, not ``Obar`` (:mod:`bnprop.layer_cache`), so that is ``Z``
read twice beside ``dY`` and ``Y``, and ``dA`` written and read again: six (m, n_out)
passes. But ``Z - mu_B = (O - obar) W^T``, ``obar`` the mean of ``O``'s rows, so with
``Oc = O - obar`` (m, n_in) and ``s`` the forward pass's float64 ``inv_std``,
``Obar = Oc W^T * s``, and each term of ``Obar`` is one of ``Oc``::

    T          = G^T Oc                                        (n_out, n_in)
    sum_GObar  = s * rowsum(W * T)                             (dgamma; dbeta = sum_G)
    C          = Oc^T Oc                                       (n_in, n_in), float64
    dW         = k * (T - (s * sum_GObar / m) * (W C))         (sum_i dZ_i = 0: O -> Oc)
    dO         = G (k W) - b - Oc M,     b = W^T (k * sum_G / m),
                                         M = W^T diag(k * s * sum_GObar / m) W
    frozen (dZ = k * G):   dW = k * (T + sum_G obar^T),   dO = G (k W)

One pass reads ``dY`` and ``Y`` and writes ``dA`` (three (m, n_out) passes, not six),
running both GEMMs per chunk on ``dA``'s rows from cache, and a pass over the (m, n_in)
arrays finishes ``dO``. The arithmetic is the same number of GEMM flops, plus
``4 m n_in^2`` for ``C`` and ``Oc M``: it pays while ``n_in`` is small beside ``n_out``
(:func:`applies`). Measured at 65536 x 16 -> 256 float32 on 2 threads: the backward
pass 24.7 -> 16-17 ms.

The numbers are the exact gradients rounded another way: ``Obar``'s terms come from
``O`` and ``W`` through float64 ``C`` rather than from the rounded ``Z``, and ``dW``,
``dO`` from ``T`` rather than from ``dZ``. Against a float64 reference, at that shape:
``dW`` 4.4e-7 relative (2.4e-6 the ``dZ`` way), ``dO`` 9.7e-7 (7.1e-7), ``dgamma``
4.3e-7 (2.9e-7), ``dbeta`` the same sums. ``dA`` is the same array either way, and the
gradients' ``dZ``, formed when read, is the ``dZ`` way's (from ``Z`` and these sums).
"""

from __future__ import annotations

import functools

import numpy as np

from bnprop import threads
from bnprop.kernels import rows
from bnprop.kernels._bn_compiled import _grad_sums
from bnprop.kernels._narrow_compiled import centered_gram, column_sums
from bnprop.kernels.buffers import shared as pool

#: The path is taken when ``NARROW * n_in <= n_out``: its extra ``4 m n_in^2`` flops
#: then cost less than the three (m, n_out) passes it saves. Measured (float32, 2
#: threads, backward pass, this way / the other): 0.70-0.73x at n_in / n_out = 1/8
#: (8 -> 64, 16 -> 128, 32 -> 256, 65536 rows), 0.80x at 64 -> 1024, but 1.10x at
#: 64 -> 256 and 1.70x at 128 -> 256.
NARROW = 8


def applies(n_in: int, n_out: int, from_split_forward: bool, comm: object) -> bool:
    """Whether a split backward pass takes this path: a narrow layer, one process, and a
    cache of bnprop's split forward pass (whose ``Z`` is ``O W^T`` by construction; a
    cache built by hand keeps the ``Obar`` way, which reads the arrays it was given)."""
    return from_split_forward and comm is None and NARROW * n_in <= n_out


def _centered(O: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(obar, Oc, C)``: the rows' float64 mean, ``Oc = O - obar`` rounded to ``O``'s
    dtype, and ``C = Oc^T Oc`` from the float64 differences (:mod:`bnprop.kernels._narrow_compiled`:
    two passes, each in row parts merged in row order)."""
    (m, k), min_rows = O.shape, rows.part_rows(O.shape[1], O.dtype.itemsize)

    def sums(start: int, stop: int) -> np.ndarray:
        out = np.empty(k)
        column_sums(O[start:stop], out)
        return out

    obar = functools.reduce(np.add, threads.map_rows(sums, m, min_rows=min_rows)) / m
    Oc = pool.empty(O.shape, O.dtype)

    def gram(start: int, stop: int) -> np.ndarray:
        C = np.empty((k, k))
        centered_gram(O[start:stop], obar, Oc[start:stop], C)
        return C

    return obar, Oc, functools.reduce(np.add, threads.map_rows(gram, m, min_rows=min_rows))


def backward(dY: np.ndarray, O: np.ndarray, W: np.ndarray, Y: np.ndarray,
             gamma: np.ndarray, inv_std: np.ndarray, s: np.ndarray, act: int, frozen: bool,
             m_total: float, dA: np.ndarray, dO: np.ndarray,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes ``dA`` and ``dO``; returns ``(sum_G, sum_GObar, dW)`` (float64 sums, ``dW``
    in ``dY``'s dtype). ``inv_std``: the cache's (``k``'s), ``s``: the forward pass's
    float64 one (``Obar``'s)."""
    dt = dY.dtype
    (m, n), n_in = dY.shape, W.shape[1]
    obar, Oc, C = _centered(O)
    W64 = W.astype(np.float64)
    k = gamma.astype(np.float64) * inv_std
    kW = (k[:, None] * W64).astype(dt)
    chunk_rows = rows.chunk_rows(n, dt.itemsize) if m >= 2 * rows.KERNEL_PART_ROWS else m

    def part(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``sum_G`` and ``T`` of rows [start, stop); ``dA`` and ``P = G (k W)`` (into
        ``dO``) chunk by chunk, each chunk's GEMMs reading its ``dA`` from cache.
        Silent, as the kernels are: a NaN or inf in ``dY`` shows in the sums."""
        sum_G, T = np.zeros(n), np.zeros((n, n_in))
        term = np.empty((n, n_in), dt)
        with np.errstate(invalid="ignore", over="ignore"):
            for c0, c1 in rows.chunks(start, stop, chunk_rows):
                c = slice(c0, c1)
                _grad_sums(act, dY[c], Y[c], sum_G, dA[c])
                np.matmul(dA[c].T, Oc[c], out=term)
                T += term
                np.matmul(dA[c], kW, out=dO[c])
        return sum_G, T

    found = threads.map_rows(part, m, min_rows=rows.part_rows(n, dt.itemsize))
    sum_G, T = found[0]
    for part_G, part_T in found[1:]:  # row order
        sum_G += part_G
        T += part_T
    with np.errstate(invalid="ignore", over="ignore"):
        sum_GObar = s * (W64 * T).sum(axis=1)
        if frozen:
            return sum_G, sum_GObar, (k[:, None] * (T + np.outer(sum_G, obar))).astype(dt)
        u = k * s * sum_GObar / m_total
        dW = (k[:, None] * T - (u[:, None] * W64) @ C).astype(dt)
        b = (W64.T @ (k * sum_G / m_total)).astype(dt)
        M = (W64.T @ (u[:, None] * W64)).astype(dt)

        def finish(start: int, stop: int) -> None:
            """``dO = P - b - Oc M`` on rows [start, stop) (in ``dt``: 0.43 ms for 32768
            rows, a compiled float64 loop 1.55)."""
            r = slice(start, stop)
            dO[r] -= Oc[r] @ M
            dO[r] -= b

        threads.map_rows(finish, m, min_rows=rows.part_rows(n_in, dt.itemsize))
    return sum_G, sum_GObar, dW
