"""Collectives over a communicator: sharding, the moments of a layer, packed sums.

A global batch of m rows is split row-wise over P processes (ranks); rank p holds the
contiguous rows :func:`shard` gives it, m_p of them, m = sum_p m_p. A batch-normalized
layer then needs two reductions (docs/math.md, "Several processes"), one packed collective each:

forward, the statistics of the global batch (Chan, Golub & LeVeque 1979)::

    (m, mu_B, M2) = fold_{p = 0, 1, ..., P-1} chan_combine((m_p, mean_p, M2_p))
    var_B = M2 / m                                          one Allgather of 1 + 2 n float64

backward, the two per-feature sums of the exact ``dZ`` (they are also dbeta and dgamma)::

    [sum_rows(G), sum_rows(G * Obar)] = sum_p [sum_rows(G_p), sum_rows(G_p * Obar_p)]
                                                            one Allreduce of 2 n float64

Why the forward gathers and folds rather than all-reducing. Chan's combination is not a
sum, so a plain ``MPI_SUM`` cannot do it in one collective (summing ``sum`` and ``sum of
squares`` can, but ``E[Z^2] - E[Z]^2`` cancels catastrophically in float32 data far from
zero; summing centered ``M2`` needs the global mean first, a second collective). A
user-defined ``MPI.Op`` would do it in one, but MPI applies it along a tree of its choosing,
and floating-point Chan combination is not associative: the result would depend on the
MPI library's algorithm and on P, and each reduction would call back into Python. An
Allgather of the packed vector ``[m_p, mean_p (n), M2_p (n)]`` (:func:`pack_moments`)
followed by a fold in rank order (:func:`fold_moments`), done by the same code on every
rank, gives every rank bit-identical statistics by construction, independent of the MPI
library. Its cost is P (1 + 2n) float64 received per rank and layer: 1.6 MiB at P = 100,
n = 1024, small beside the all-reduce of ``dW`` (n_out n_in); past a few hundred ranks a
reduce-then-broadcast custom op would be the better trade.

The backward sums are plain sums, so they use ``MPI_Allreduce`` (in place). The MPI
standard does not promise every rank the same bits from it; MPICH's algorithms (recursive
doubling, reduce-scatter/allgather, shared-memory reduce-then-broadcast) do, and
``tests/mpi_scripts/layer_check.py`` checks that the ranks' ``dgamma`` agree bitwise;
:func:`check_replicas` checks it for a whole model during training.

A data-parallel training step (``MLP.loss_and_grads(..., comm=comm)``) adds one more
collective: every parameter gradient the layers left local (``dW``, the dense layers' and
the output layer's ``W`` and ``b``; ``dgamma``, ``dbeta`` too under local statistics) and
the loss, packed into one float64 buffer, :func:`allreduce_packed`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import numpy as np

from bnprop._validate import InputError
from bnprop.batchnorm import chan_combine
from bnprop.distributed.protocol import Communicator


def shard(n_global: int, rank: int, size: int) -> slice:
    """Contiguous rows ``[start, stop)`` of a global batch of ``n_global`` held by ``rank``.

    With ``q, r = divmod(n_global, size)``, ranks ``0 .. r-1`` hold ``q + 1`` rows and the
    others ``q``: shares differ by at most one, and the shards of ranks 0, 1, ..., size-1
    concatenate to ``range(n_global)``. A layer needs every share >= 1, so
    ``n_global >= size``.

    Examples
    --------
    >>> [shard(64, p, 3) for p in range(3)]
    [slice(0, 22, None), slice(22, 43, None), slice(43, 64, None)]
    """
    for value, name in ((n_global, "n_global"), (rank, "rank"), (size, "size")):
        if isinstance(value, bool) or not isinstance(value, int | np.integer):
            raise InputError(f"{name}: expected an int, got {type(value).__name__} instead.")
    if size < 1:
        raise InputError(f"size: expected an int >= 1, got {size} instead.")
    if not 0 <= rank < size:
        raise InputError(f"rank: expected 0 <= rank < size = {size}, got {rank} instead.")
    if n_global < 0:
        raise InputError(f"n_global: expected an int >= 0, got {n_global} instead.")
    q, r = divmod(int(n_global), int(size))
    start = rank * q + min(rank, r)
    return slice(start, start + q + (1 if rank < r else 0))


def pack_moments(count: int, mean: np.ndarray, M2: np.ndarray) -> np.ndarray:
    """``[count, mean (n), M2 (n)]``: one float64 vector of 1 + 2n entries (count exact < 2^53)."""
    n = mean.shape[0]
    packed = np.empty(1 + 2 * n, dtype=np.float64)
    packed[0] = count
    packed[1 : 1 + n] = mean
    packed[1 + n :] = M2
    return packed


def fold_moments(rows: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
    """Fold packed moments, one rank a row of ``rows`` (P, 1 + 2n), in row order.

    ``acc = row_0``, then ``acc = chan_combine(acc, row_p)`` for p = 1, ..., P-1, skipping
    rows of count 0. Deterministic: the same ``rows`` give the same bits on every rank.
    """
    n = (rows.shape[1] - 1) // 2
    count, mean, M2 = 0, np.zeros(n), np.zeros(n)
    for row in rows:
        if row[0] == 0:
            continue
        if count == 0:
            count, mean, M2 = row[0], row[1 : 1 + n].copy(), row[1 + n :].copy()
        else:
            count, mean, M2 = chan_combine(count, mean, M2, row[0], row[1 : 1 + n], row[1 + n :])
    return int(count), mean, M2


def allreduce_packed(
    comm: Communicator, arrays: Sequence[np.ndarray], scalars: Sequence[float] = (),
) -> tuple[list[np.ndarray], list[float]]:
    """``sum_p`` of every array and scalar, in one float64 ``comm.allreduce_sum``.

    The buffer is ``[a_0.ravel(), a_1.ravel(), ..., scalars]`` in float64 whatever the
    arrays' dtype, so float32 terms are summed in float64 and rounded once::

        total_k = float32( sum_p float64(a_k^(p)) )          for float32 a_k

    The buffer is ``comm.scratch``: the same memory every step (MPICH reduces a buffer it
    has seen before 2 to 4 times faster than a new one; measured on 800 KB here). Returns
    new arrays of the inputs' shapes and dtypes, and the scalars as floats; the same bits
    on every rank (see the module docstring on ``MPI_Allreduce``).
    """
    sizes = [a.size for a in arrays]
    buf = comm.scratch(sum(sizes) + len(scalars))
    offset = 0
    for a, n in zip(arrays, sizes, strict=True):
        buf[offset : offset + n] = a.reshape(-1)
        offset += n
    buf[offset:] = scalars
    buf = comm.allreduce_sum(buf)
    totals, offset = [], 0
    for a, n in zip(arrays, sizes, strict=True):
        totals.append(buf[offset : offset + n].reshape(a.shape).astype(a.dtype))
        offset += n
    return totals, [float(v) for v in buf[offset:]]


def check_replicas(comm: Communicator, arrays: Mapping[str, np.ndarray], what: str) -> None:
    """Raise on every rank unless every rank holds bit-identical ``arrays`` (same keys).

    One SHA-256 of the arrays' names, dtypes, shapes and bytes per rank; rank 0's is
    broadcast and the ranks whose digest differs are counted in one ``allreduce_sum``, so
    all ranks learn the outcome together. Data-parallel replicas stay identical only if
    every rank receives the same bits from each reduction; this checks that they did.

    Raises
    ------
    RuntimeError
        Naming ``what`` and the ranks that differ from rank 0.
    """
    digest = hashlib.sha256()
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{a.dtype.str}:{a.shape};".encode())
        digest.update(a.tobytes())
    reference = comm.bcast(digest.hexdigest() if comm.rank == 0 else None)
    differs = np.zeros(comm.size)
    differs[comm.rank] = digest.hexdigest() != reference
    differs = comm.allreduce_sum(differs)
    if differs.any():
        ranks = ", ".join(str(int(r)) for r in np.flatnonzero(differs))
        raise RuntimeError(
            f"{what}: the replicas on rank(s) {ranks} differ from rank 0's; the MPI library "
            "did not give every rank the same bits from a reduction, so the processes no "
            "longer train one model."
        )
