"""The split passes of a narrow layer (few inputs beside its outputs) through its centered
input: the forward pass's moments without a pass over ``Z``, and one backward pass over
``dY`` and ``Y``, with every term that reads ``Obar`` taken through the centered input.

The forward pass. With ``obar`` the mean of ``O``'s rows, ``Oc = O - obar`` and ``C =
Oc^T Oc`` (float64, two passes over the (m, n_in) ``O``: :func:`forward_moments`),
``Z - mu_B = Oc W^T``, so ``Z``'s moments are::

    mu_B = W obar,     M2_j = sum_i (Z_ij - mu_j)^2 = W_j C W_j^T  (>= 0; var_B = M2 / m)

read from ``O`` (n_in columns), not from ``Z`` (n_out). This is the two-pass variance
of the centered data, never ``E[z^2] - E[z]^2``. It is the moments of the exact product
``O W^T`` rather than of the rounded ``Z``: at 65536 x 16 -> 256, against the moments of
``Z`` computed in float64, within 2.4e-14 relative (float32 and float64 inputs, means
0, 3 and 100), where the moments of float32's rounded ``Z`` are off by up to 7.6e-8
(``mu_B``) and 1.9e-7 (``var_B``). Where ``Z`` may overflow the dtype (``max|O| *
max_j ||W_j||_1`` beyond half its range: :func:`fits`) the moments come from ``Z``
itself, whose inf :func:`bnprop.layer.check_variance` then names.

``Obar = (Z - mu_B) inv_std = Oc (W^T diag(inv_std))`` is then one GEMM of the centered
input (:func:`bnprop.kernels.layer._forward_centered`): no cancellation of a mean far
from 0, and ``Y`` follows in the dtype's arithmetic alone. At 65536 x 16 -> 256 float32
against float64, ``Obar``'s largest error is 1.3e-6 with inputs of mean 0 (the float32
reference's 1.2e-6) and 9.8e-6 with mean 100 (the reference's 7.4e-5). A feature of (near) zero
variance scales its row of ``W`` by up to ``1 / sqrt(eps)``; where the GEMM's partial
sums might then overflow (:func:`fits` with ``2 max|O|`` for ``Oc``), ``Obar`` is formed
from ``Z`` instead. Either way, the rounding noise of a feature whose exact variance is 0
comes out multiplied by ``inv_std`` (the reference normalizes that noise to variance 1:
both are noise around the exact 0).

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
pass 24.7 -> 16-17 ms. The forward pass (:func:`bnprop.kernels.layer._forward_centered`),
forward + backward at that shape: 41.5-43.5 -> 40-41.5 ms with the moments from ``C``,
37.7-38.6 -> 36.1-37.2 with ``Obar`` by GEMM, 37.6 -> 34.0-34.9 without writing ``Obar``
(the forward pass 17.1 -> 14.7 ms; on 1 thread 33 -> 27.5).

Outputs of :data:`bnprop.kernels._stream.STREAM_BYTES` or more are streamed
(:mod:`bnprop.kernels._stream`: their lines are not read before they are written).
Backward, each chunk of ``dA`` goes into one chunk's buffer, which the GEMMs read, then to
its rows: at 65536 x 16 -> 256 on 2 threads, float32 18.3 -> 17.1 ms, float64 42.9 ->
32.0. Forward, ``Y`` is formed over the chunk's ``Obar`` in its buffer, then streamed:
float32 13.3 -> 12.7 ms.

The backward pass reuses the forward pass's ``Oc`` and ``C`` (kept in the cache). Its
numbers are the exact gradients rounded another way: ``Obar``'s terms come from
``O`` and ``W`` through float64 ``C`` rather than from the rounded ``Z``, and ``dW``,
``dO`` from ``T`` rather than from ``dZ``. Against a float64 reference, at that shape:
``dW`` 4.4e-7 relative (2.4e-6 the ``dZ`` way), ``dO`` 9.7e-7 (7.1e-7), ``dgamma``
4.3e-7 (2.9e-7), ``dbeta`` the same sums (with the forward pass's moments from ``C``,
on other inputs of that shape: ``dW`` 3.6e-7, ``dO`` 7.9e-7, ``dgamma`` 3.4e-7). ``dA``
is the same array either way, and the gradients' ``dZ``, formed when read, is the ``dZ``
way's (from ``Z`` and these sums).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import numpy as np

from bnprop import threads
from bnprop.kernels import rows
from bnprop.kernels._bn_compiled import _grad_sums
from bnprop.kernels._narrow_compiled import centered_gram, column_sums
from bnprop.kernels._stream import copy_rows, streams
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


class Centered(NamedTuple):
    """The centered input of a narrow layer: ``obar`` (its rows' float64 mean), ``Oc = O -
    obar`` rounded to ``O``'s dtype, ``C = Oc^T Oc`` from the float64 differences, and
    ``biggest = max|O|``."""

    obar: np.ndarray
    Oc: np.ndarray
    C: np.ndarray
    biggest: float


def _centered(O: np.ndarray, W: np.ndarray | None = None) -> Centered | None:
    """:class:`Centered` of ``O`` (:mod:`bnprop.kernels._narrow_compiled`: two passes, each
    in row parts merged in row order). With ``W``: None, after the first pass, where
    ``Z = O W^T`` may overflow ``O``'s dtype (``max|O| * max_j ||W_j||_1`` beyond half its
    range)."""
    (m, k), min_rows = O.shape, rows.part_rows(O.shape[1], O.dtype.itemsize)

    def sums(start: int, stop: int) -> tuple[np.ndarray, float]:
        out = np.empty(k)
        return out, column_sums(O[start:stop], out)

    found = threads.map_rows(sums, m, min_rows=min_rows)
    biggest = max(b for _, b in found)
    if W is not None and not fits(biggest, W.astype(np.float64), O.dtype):
        return None
    obar = functools.reduce(np.add, [total for total, _ in found]) / m
    Oc = pool.empty(O.shape, O.dtype)

    def gram(start: int, stop: int) -> np.ndarray:
        C = np.empty((k, k))
        centered_gram(O[start:stop], obar, Oc[start:stop], C)
        return C

    return Centered(obar, Oc, functools.reduce(np.add, threads.map_rows(gram, m,
                                                                         min_rows=min_rows)),
                    biggest)


def fits(biggest: float, B: np.ndarray, dtype: np.dtype) -> bool:
    """Whether no partial sum of ``A B^T`` can overflow ``dtype`` for an ``A`` with entries
    of at most ``biggest`` in magnitude: ``biggest * max_j ||B_j||_1`` below half its range."""
    bound = biggest * float(np.abs(B).sum(axis=1).max(initial=0.0))
    return bound < float(np.finfo(dtype).max) / 2


def forward_moments(O: np.ndarray, W: np.ndarray,
                    ) -> tuple[Centered, np.ndarray, np.ndarray] | None:
    """``(centered, mu_B, M2)`` of ``Z = O W^T`` from the centered input, without reading
    ``Z`` (module docstring), float64; None where ``Z`` may overflow (its moments then come
    from ``Z`` itself, which holds the inf)."""
    centered = _centered(O, W)
    if centered is None:
        return None
    W64 = W.astype(np.float64)
    mu = W64 @ centered.obar
    with np.errstate(over="ignore", invalid="ignore"):  # beyond float64: named by the caller
        M2 = np.maximum(((W64 @ centered.C) * W64).sum(axis=1), 0.0)  # >= 0 exactly
    return centered, mu, M2


def backward(dY: np.ndarray, O: np.ndarray, W: np.ndarray, Y: np.ndarray,
             gamma: np.ndarray, inv_std: np.ndarray, s: np.ndarray, act: int, frozen: bool,
             m_total: float, dA: np.ndarray, dO: np.ndarray, centered: Centered | None = None,
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Writes ``dA`` and ``dO``; returns ``(sum_G, sum_GObar, dW)`` (float64 sums, ``dW``
    in ``dY``'s dtype). ``inv_std``: the cache's (``k``'s), ``s``: the forward pass's
    float64 one (``Obar``'s); ``centered``: ``O``'s, where the forward pass formed it."""
    dt = dY.dtype
    (m, n), n_in = dY.shape, W.shape[1]
    obar, Oc, C, _ = centered if centered is not None else _centered(O)  # type: ignore[misc]
    W64 = W.astype(np.float64)
    k = gamma.astype(np.float64) * inv_std
    kW = (k[:, None] * W64).astype(dt)
    chunk_rows = rows.chunk_rows(n, dt.itemsize) if m >= 2 * rows.KERNEL_PART_ROWS else m
    stream = streams(dA.nbytes)

    def part(start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """``sum_G`` and ``T`` of rows [start, stop); ``dA`` and ``P = G (k W)`` (into
        ``dO``) chunk by chunk, each chunk's GEMMs reading its ``dA`` from cache.
        Silent, as the kernels are: a NaN or inf in ``dY`` shows in the sums."""
        sum_G, T = np.zeros(n), np.zeros((n, n_in))
        term = np.empty((n, n_in), dt)
        buffer = pool.empty((min(chunk_rows, stop - start), n), dt) if stream else None
        with np.errstate(invalid="ignore", over="ignore"):
            for c0, c1 in rows.chunks(start, stop, chunk_rows):
                c = slice(c0, c1)
                G = dA[c] if buffer is None else buffer[:c1 - c0]
                _grad_sums(act, dY[c], Y[c], sum_G, G)
                rows.dW_into(G, Oc[c], term)
                T += term
                np.matmul(G, kW, out=dO[c])
                if buffer is not None:
                    copy_rows(G, dA[c])
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
