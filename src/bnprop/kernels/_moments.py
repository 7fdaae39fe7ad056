"""The forward statistics of ``Z`` (m, n): ``(count, mean, M2)`` of each column in float64,
from blocks of rows that fit in L2, merged in block order (compiled, Numba).

Block ``b`` holds rows ``[s, s + n_b)``. Its sums are taken around the shift ``K``, the
first block's mean (until then 0), or around the block's own mean where they would
cancel::

    S1 = sum_i (Z_i - c),   S2 = sum_i (Z_i - c)^2,   c = K,  offset = 0
    cancels:  S1^2 > n_b S2 / 2 in some column, or b = 0
              c = K + S1 / n_b  (S1 around K),  offset = c - K,  the sums again around c

(``S2 - S1^2 / n_b`` loses more than one bit when ``S1^2 / n_b > S2 / 2``: the corrected
two-pass rule, summed again from cache.) Chan, Golub & LeVeque's merge of the running
``(count, mean - K, M2)`` with the block's ``(n_b, offset + S1 / n_b, S2 - S1^2 / n_b)``::

    total = count + n_b,   d_mean = S1 / n_b,   delta = (offset + d_mean) - mean
    mean += delta n_b / total,   M2 += (S2 - S1 d_mean) + delta^2 (count / total) n_b

and at the end ``mean += K``.

Once block 0 has set ``K``, each block's sums, its decision and its ``offset`` depend
on ``K`` and its own rows alone; only the merge runs in block order. So the blocks may
be computed apart, in any order and on any thread, into a float64 scratch
(:func:`block_range`, :func:`merge_range`) and give the bits of :func:`_moments`, which
computes and merges one block at a time. :func:`bnprop.kernels._team_bn.moments` has the
helper thread take the later blocks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from bnprop.kernels._jit import JIT_OPTIONS


@njit(**JIT_OPTIONS)
def _add_term(s1, s2, d):  # pragma: no cover - compiled
    """``(s1 + d, s2 + d^2)``: one row's term of :func:`_block_sums`."""
    return s1 + d, s2 + d * d


@njit(**JIT_OPTIONS)
def _block_sums(Z, start, stop, center, S1, S2):  # pragma: no cover - compiled
    """``S1 = sum_i (Z_i - center)``, ``S2 = sum_i (Z_i - center)^2`` over rows [start, stop).

    Four rows at a time, each feature's two sums held in registers across them and added
    in row order: the bits of one row at a time, with a quarter of the loads and stores
    of ``S1`` and ``S2`` (measured alone: 64.7 -> 42.3 us over 1024 x 256 float32, 44.7
    -> 31.7 us over 512 x 256 float64, 4.9 -> 3.3 us over 60 x 100 float32)."""
    n = Z.shape[1]
    S1[:] = 0.0
    S2[:] = 0.0
    i = start
    while i + 4 <= stop:
        z0, z1, z2, z3 = Z[i], Z[i + 1], Z[i + 2], Z[i + 3]
        for j in range(n):
            c = center[j]
            s1, s2 = _add_term(S1[j], S2[j], z0[j] - c)
            s1, s2 = _add_term(s1, s2, z1[j] - c)
            s1, s2 = _add_term(s1, s2, z2[j] - c)
            S1[j], S2[j] = _add_term(s1, s2, z3[j] - c)
        i += 4
    for r in range(i, stop):
        z = Z[r]
        for j in range(n):
            S1[j], S2[j] = _add_term(S1[j], S2[j], z[j] - center[j])


@njit(**JIT_OPTIONS)
def _block(Z, start, stop, K, first, S1, S2, offset, center):  # pragma: no cover - compiled
    """One block's ``S1, S2, offset`` (module docstring); ``first``: block 0, which also
    sets ``K``. ``center``: scratch of ``n``."""
    n_b = stop - start
    _block_sums(Z, start, stop, K, S1, S2)  # the one pass over memory
    cancels = first
    for j in range(Z.shape[1]):
        cancels |= S1[j] * S1[j] > 0.5 * n_b * S2[j]
    if not cancels:
        offset[:] = 0.0
        return
    for j in range(Z.shape[1]):
        center[j] = K[j] + S1[j] / n_b
    if first:
        K[:] = center
    for j in range(Z.shape[1]):
        offset[j] = center[j] - K[j]
    _block_sums(Z, start, stop, center, S1, S2)  # from cache


@njit(**JIT_OPTIONS)
def _merge(count, n_b, S1, S2, offset, mean, M2):  # pragma: no cover - compiled
    """Chan's merge of one block into ``(count, mean - K, M2)``; returns the new count."""
    total = count + n_b
    w_b = n_b / total
    w_ab = (count / total) * n_b
    for j in range(mean.shape[0]):
        d_mean = S1[j] / n_b
        delta = (offset[j] + d_mean) - mean[j]
        mean[j] += delta * w_b
        M2[j] += (S2[j] - S1[j] * d_mean) + delta * delta * w_ab
    return total


@njit(**JIT_OPTIONS)
def _moments(Z, block_rows, mean, M2):  # pragma: no cover - compiled
    """``mean``, ``M2`` (float64, n) of ``Z``'s columns, one block at a time; returns the
    row count (module docstring)."""
    m, n = Z.shape
    mean[:] = 0.0  # relative to K until the end
    M2[:] = 0.0
    if m == 0:
        return 0
    K = np.zeros(n)
    S1, S2, offset, center = np.empty(n), np.empty(n), np.empty(n), np.empty(n)
    count = 0
    for start in range(0, m, block_rows):
        stop = min(start + block_rows, m)
        _block(Z, start, stop, K, count == 0, S1, S2, offset, center)
        count = _merge(count, stop - start, S1, S2, offset, mean, M2)
    for j in range(n):
        mean[j] += K[j]
    return count


@njit(**JIT_OPTIONS)
def scratch_size(m, n, block_rows):  # pragma: no cover - compiled
    """Float64 elements of the scratch of :func:`block_range`: ``K``, a center for each
    of two threads, then ``S1, S2, offset`` of each of the ``ceil(m / block_rows)``
    blocks."""
    return (3 + 3 * -(-m // block_rows)) * n


@njit(**JIT_OPTIONS)
def _slot(S, n, b, which):  # pragma: no cover - compiled
    """``S1`` (0), ``S2`` (1) or ``offset`` (2) of block ``b`` in the scratch ``S``."""
    at = (3 + 3 * b + which) * n
    return S[at:at + n]


@njit(**JIT_OPTIONS)
def block_range(Z, block_rows, S, b0, b1, center):  # pragma: no cover - compiled
    """Blocks ``[b0, b1)`` of ``Z`` into the scratch ``S`` (:func:`scratch_size`), whose
    first ``n`` elements are ``K``; block 0 sets ``K`` (from 0). ``center``: scratch of
    ``n``."""
    m, n = Z.shape
    K = S[:n]
    if b0 == 0:
        K[:] = 0.0
    for b in range(b0, b1):
        start = b * block_rows
        _block(Z, start, min(start + block_rows, m), K, b == 0, _slot(S, n, b, 0),
               _slot(S, n, b, 1), _slot(S, n, b, 2), center)


@njit(**JIT_OPTIONS)
def merge_range(Z, block_rows, S, b0, b1, count, mean, M2):  # pragma: no cover - compiled
    """Merge blocks ``[b0, b1)`` of the scratch ``S`` into ``(count, mean - K, M2)``, in
    block order; returns the new count. After the last block add ``K`` to ``mean``."""
    m, n = Z.shape
    for b in range(b0, b1):
        start = b * block_rows
        count = _merge(count, min(start + block_rows, m) - start, _slot(S, n, b, 0),
                       _slot(S, n, b, 1), _slot(S, n, b, 2), mean, M2)
    return count
