"""The batch-norm stage: [Linear without bias] -> BatchNorm1d -> [activation], fused, into
preallocated buffers. It is how a :class:`~bnprop.nn.BatchNorm1d` runs, alone or inside a
:class:`~bnprop.nn.Sequential` (which hands it the ``Linear(bias=False)`` before it and the
activation after it: the handout's layer as one stage).

Per stage with ``m`` rows (shapes in brackets), buffers written in place every step::

    Z     (m, n)        Z = O W^T (GEMM, out=), then overwritten by Obar (forward_apply)
                        (without the Linear, Obar gets a buffer of its own: Z is the input)
    Y     (m, n)        sigma(gamma * Obar + beta); A is never stored
    dY    (m, n)        dF/dY as given, overwritten by dZ
    dW    (n, n_in)     dZ^T O;  dgamma, dbeta (n,): float64 sums cast to the dtype
    mean, M2, inv_std, sum_G, sum_GObar (n,) float64, one set per row part

The equations are those of :mod:`bnprop.batchnorm` (the reference, ``backend="numpy"``)
and :mod:`bnprop.kernels.bn` (the kernels, ``backend="numba"``). With a communicator
(SyncBN) the moments are combined over the processes (``comm.combine_moments``) and the
two backward sums all-reduced (``comm.allreduce_sum``), as in :mod:`bnprop.layer`.

Threads (:mod:`bnprop.threads`): the kernels run on ``map_rows`` row parts of the batch
(moments merged with Chan's combination, sums added, in row order), each of whole units
of :attr:`BNStage.row_unit` rows (a convolution's: one image, so that a step can pool a
part's images in the part: ``forward``'s ``after_apply``, ``backward``'s
``before_sums``); each GEMM is split over the rows of its output when a part has at
least :data:`bnprop.kernels.rows.GEMM_PART_FLOPS` of work.
Large batches (``m >= 2 * KERNEL_PART_ROWS``, with the Linear) walk each part in chunks
of :data:`CHUNK_BYTES`, so the data a GEMM writes is read from cache by the kernel that
follows it (and the reverse)::

    forward    per chunk c:  Z_c = O_c W^T;  moments of Z_c, merged (Chan)
    backward   per chunk c:  dZ_c (apply kernel);  dW_p += dZ_c^T O_c;  dO_c = dZ_c W
               dW = sum_p dW_p

In inference (``training=False``) the same apply kernel normalizes with the running
statistics: ``Obar = (Z - running_mean) / sqrt(running_var + eps)``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop import threads
from bnprop.activations import get_activation
from bnprop.kernels import bn as bnk
from bnprop.kernels import small_gemm
from bnprop.kernels.activations import ACTIVATION_CODES
from bnprop.kernels.rows import (
    CHUNK_BYTES,
    KERNEL_PART_BYTES,
    KERNEL_PART_ROWS,
    dW_into,
    gemm,
)
from bnprop.kernels.small_gemm import matmul_nt
from bnprop.kernels.tile_gemm import matmul
from bnprop.layer import check_global_rows
from bnprop.nn.widen import Plain, Widened, widening

if TYPE_CHECKING:
    from bnprop.distributed import Communicator
    from bnprop.nn.batchnorm import BatchNorm1d
    from bnprop.nn.module import Linear

#: Fewest rows of a backward chunk cut to fit OpenBLAS's small kernel (per-chunk calls
#: cost more than the kernel saves below: 5.9 against 4.5-4.9 ns a row of 16 x 9).
MIN_BACK_CHUNK_ROWS = 1024


def back_chunk_rows(n: int, n_in: int, itemsize: int, chunk_rows: int) -> int:
    """Rows of a backward chunk: ``chunk_rows``, or fewer so that its ``dW = dZ^T O``
    (``n x n_in`` over the chunk's rows) is one OpenBLAS takes in its small-matrix kernel
    (float32, ``n n_in rows <= SMALL_MNK``; :mod:`bnprop.kernels.small_gemm`), when that
    still leaves :data:`MIN_BACK_CHUNK_ROWS` rows. Measured, 1 thread: a first
    convolution's ``dW`` (16 x 9) 4.5-4.9 ns a row in chunks of 6000-6944 rows against
    9.4-9.6 in chunks of 6945-16384. ``dO = dZ W`` has the same bits however the rows
    are cut (tested); the chunks' ``dW`` terms add up in another order."""
    rows = small_gemm.SMALL_MNK // max(1, n * n_in)
    if itemsize != 4 or not small_gemm.enabled() or not MIN_BACK_CHUNK_ROWS <= rows < chunk_rows:
        return chunk_rows
    return rows


class _Parts:
    """Per-part buffers: float64 ``mean, M2, sum_G, sum_GObar`` (parts, n); with
    ``chunked``, the part's ``dW`` and one chunk's term of it (parts, n, n_in)."""

    def __init__(self, parts: int, n: int, n_in: int, dtype: np.dtype, chunked: bool) -> None:
        self.mean = np.empty((parts, n))
        self.M2 = np.empty((parts, n))
        self.sum_G = np.empty((parts, n))
        self.sum_GObar = np.empty((parts, n))
        shape = (parts, n, n_in) if chunked else (0, n, n_in)
        self.dW, self.dW_chunk = np.empty(shape, dtype), np.empty(shape, dtype)


class BNStage:
    """Forward and backward of ``[Linear(bias=False)] -> BatchNorm1d -> [activation]``.

    Parameters
    ----------
    norm : BatchNorm1d
        Holds ``gamma``, ``beta``, the running statistics, ``eps`` and ``stats``.
    activation : str
        Fused after the normalization ("identity" when none follows).
    linear : Linear, optional
        A ``Linear(bias=False)`` before the normalization, fused in (its ``W``).
    """

    def __init__(self, norm: BatchNorm1d, activation: str = "identity",
                 linear: Linear | None = None) -> None:
        self.norm, self.linear, self.activation = norm, linear, activation
        self.act = ACTIVATION_CODES[activation]
        self.m: int | None = None
        #: The BN kernels, or (image BN: few channels, many rows) the same on widened rows.
        r = widening(norm.num_features, norm.dtype.itemsize)
        self.kernels: Any = Widened(r) if getattr(norm, "in_ndim", 2) == 4 and r > 1 else Plain()
        #: (count, mean_B, var_B) of the last training forward, for the running update.
        self.batch_stats: tuple[int, np.ndarray, np.ndarray] | None = None
        #: Rows that one part never splits (a convolution's rows of one image: Ho Wo), so
        #: that per-image work can join a part (:meth:`forward`'s ``after_apply``).
        self.row_unit = 1

    # ------------------------------------------------------------------ buffers
    def _allocate(self, m: int, n_in: int) -> None:
        n, dt = self.norm.num_features, self.norm.dtype
        item = dt.itemsize
        self.block_rows = max(1, bnk.BLOCK_BYTES // max(1, n * item))
        self.chunked = self.linear is not None and m >= 2 * KERNEL_PART_ROWS
        self.part_rows = max(1, KERNEL_PART_BYTES // max(1, n * item))
        self.chunk_rows = max(1, CHUNK_BYTES // max(1, n * item))
        self.back_chunk_rows = back_chunk_rows(n, n_in, item, self.chunk_rows)
        self.Z = np.empty((m, n), dt)        # Z (or Obar alone), then Obar in place
        self.Y = np.empty((m, n), dt)
        self.n_in = n_in
        self._parts = _Parts(1, n, n_in, dt, self.chunked)
        self._starts = {0: 0}
        self._parts_key: tuple[int, int] = (1, 1)
        self.inv_std = np.empty(n)
        self.mean = np.empty(n)
        self.var = np.empty(n)
        self.sum_G = np.empty(n)
        self.sum_GObar = np.empty(n)
        self.count = m
        self.m = m

    def _kernel_parts(self, fn: Any) -> list[Any]:
        """``map_rows`` over the batch, calling ``fn(part_index, start, stop)``."""
        starts, u = self._starts, self._parts_key[1]
        if len(starts) == 1:  # one part, on this thread
            return [fn(0, 0, self.m)]

        def indexed(start: int, stop: int) -> Any:
            return fn(starts[start * u], start * u, stop * u)

        return threads.map_rows(indexed, self.m // u, min_rows=self._min_units(u))

    def _min_units(self, u: int) -> int:
        """Fewest units of :attr:`row_unit` rows in a part: :attr:`part_rows` rows."""
        return max(1, -(-self.part_rows // u))

    def _size_parts(self) -> None:
        """Per-part buffers for the part count ``map_rows`` will use now (it may change),
        the parts made of whole units of :attr:`row_unit` rows."""
        assert self.m is not None
        u = self.row_unit
        assert u >= 1 and self.m % u == 0, "a row unit divides the rows (whole images)"
        units = self.m // u
        parts = max(1, min(threads.num_threads(), units // self._min_units(u)))
        if self._parts_key != (parts, u):
            if len(self._parts.mean) != parts:
                self._parts = _Parts(parts, self.Z.shape[1], self.n_in, self.Z.dtype,
                                     self.chunked)
            self._starts = {start * u: p for p, (start, _) in
                            enumerate(threads.row_parts(units, parts))}
            self._parts_key = (parts, u)

    # ------------------------------------------------------------------ forward
    def buffers(self, O: np.ndarray) -> None:
        """The buffers of a batch shaped as ``O`` (kept while the shape stays)."""
        if self.m != O.shape[0] or self.n_in != O.shape[1]:
            self._allocate(O.shape[0], O.shape[1])

    def forward(self, O: np.ndarray, training: bool, comm: Communicator | None = None,
                after_apply: Callable[[int, int], None] | None = None) -> np.ndarray:
        """``Y = sigma(gamma * (Z - mu) * inv_std + beta)``, ``Z = O W^T`` (or ``O``).

        Training: batch statistics (global ones with ``comm``), kept in
        :attr:`batch_stats` for the running update; inference: the running statistics.
        ``after_apply(start, stop)``, when given, runs in each row part right after its
        rows of ``Y`` are formed (on the part's thread, while they are in its cache).
        """
        self.buffers(O)
        self.O = O
        if self.norm.backend == "numpy":
            Y = self._forward_reference(O, training, comm)
            if after_apply is not None:
                after_apply(0, O.shape[0])
            return Y
        norm, Z, Y = self.norm, self.Z, self.Y
        self._size_parts()
        if not training:
            self._linear_into_Z(O)
            self.mean[...] = norm.running_mean
            self.inv_std[...] = bn.inverse_std(norm.running_var, norm.eps)
        else:
            count, mean, M2 = self._moments(O)
            if comm is not None:
                count, mean, M2 = comm.combine_moments(count, mean, M2)
                check_global_rows(count, comm)
            self.count = count
            self.mean[...] = mean
            self.var[...] = bn.biased_var(M2, count)
            self.inv_std[...] = bn.inverse_std(self.var, norm.eps)
            self.batch_stats = (count, self.mean, self.var)
        source = Z if self.linear is not None else O

        def apply(p: int, start: int, stop: int) -> None:
            self.kernels._forward_apply(source[start:stop], self.mean, self.inv_std, norm.gamma,
                               norm.beta, self.act, Z[start:stop], Y[start:stop], None)
            if after_apply is not None:
                after_apply(start, stop)

        self._kernel_parts(apply)
        return Y

    def _linear_into_Z(self, O: np.ndarray) -> None:
        if self.linear is not None:
            gemm(O, self.linear.W.T, self.Z)

    def _moments(self, O: np.ndarray) -> tuple[int, np.ndarray, np.ndarray]:
        """``(count, mean, M2)`` of this process's ``Z``, parts merged with Chan's rule."""
        P, Z = self._parts, self.Z
        if not self.chunked:
            self._linear_into_Z(O)
        source = Z if self.linear is not None else O

        def reduce(p: int, start: int, stop: int) -> tuple[int, np.ndarray, np.ndarray]:
            if not self.chunked:
                count = self.kernels._moments(source[start:stop], self.block_rows, P.mean[p],
                                              P.M2[p])
                return int(count), P.mean[p], P.M2[p]
            assert self.linear is not None
            total: tuple[int, np.ndarray, np.ndarray] | None = None
            for c0 in range(start, stop, self.chunk_rows):  # Z = O W^T, then its moments
                c1 = min(stop, c0 + self.chunk_rows)
                matmul_nt(O[c0:c1], self.linear.W, Z[c0:c1], rows=O.shape[0])
                n = int(self.kernels._moments(Z[c0:c1], self.block_rows, P.mean[p], P.M2[p]))
                total = ((n, P.mean[p].copy(), P.M2[p].copy()) if total is None
                         else bn.chan_combine(*total, n, P.mean[p], P.M2[p]))
            assert total is not None  # a part has rows
            return total

        results = self._kernel_parts(reduce)
        count, mean, M2 = results[0]
        for part in results[1:]:
            count, mean, M2 = bn.chan_combine(count, mean, M2, *part)
        return count, mean, M2

    def _forward_reference(self, O: np.ndarray, training: bool,
                           comm: Communicator | None) -> np.ndarray:
        """The NumPy reference (:mod:`bnprop.batchnorm`), into the same buffers."""
        norm = self.norm
        Z = O @ self.linear.W.T if self.linear is not None else O
        if not training:
            mu = norm.running_mean.astype(np.float64)
            inv_std = bn.inverse_std(norm.running_var, norm.eps)
        else:
            count, mu, M2 = bn.batch_moments(Z)
            if comm is not None:
                count, mu, M2 = comm.combine_moments(count, mu, M2)
                check_global_rows(count, comm)
            var = bn.biased_var(M2, count)
            inv_std = bn.inverse_std(var, norm.eps)
            self.count = count
            self.var[...] = var
            self.batch_stats = (count, mu, self.var)
        self.mean[...] = mu
        self.inv_std[...] = inv_std
        self.Z[...] = bn.normalize(Z, mu, inv_std)            # Obar
        self._A = bn.scale_shift(self.Z, norm.gamma, norm.beta)
        self.Y[...] = get_activation(self.activation).forward(self._A)
        return self.Y

    # ------------------------------------------------------------------ backward
    def backward(self, dY: np.ndarray, dO: np.ndarray | None,
                 comm: Communicator | None = None,
                 before_sums: Callable[[int, int], None] | None = None,
                 dO_rows: Callable[[int, int], None] | None = None) -> None:
        """From ``dY`` (overwritten by dZ): dgamma, dbeta, dW into the modules' ``grads``,
        and ``dO = dZ W`` (or ``dZ``, without the Linear) into ``dO`` unless None.
        ``before_sums(start, stop)``, when given, writes the rows ``[start, stop)`` of
        ``dY`` in each row part, right before the part reads them (:meth:`forward`'s
        parts). ``dO_rows(start, stop)`` (the kernels' backend only, ``dO`` None) is
        called in each row part once its rows of dZ, in ``dY``, are final: it uses them in
        place of ``dO`` (a convolution's ``dX``: :meth:`bnprop.nn.plan.ConvNormStep.backward`)."""
        norm = self.norm
        if norm.backend == "numpy":
            if dO_rows is not None:  # the reference keeps dZ apart from dY
                raise ValueError("dO_rows: the kernels' backend only")
            if before_sums is not None:
                before_sums(0, dY.shape[0])
            self._backward_reference(dY, dO, comm)
        else:
            self._backward_kernels(dY, dO, comm, before_sums, dO_rows)
        np.copyto(norm.grads["gamma"], self.sum_GObar, casting="same_kind")
        np.copyto(norm.grads["beta"], self.sum_G, casting="same_kind")

    def _reduce_sums(self, comm: Communicator | None) -> None:
        if comm is not None:  # one collective for both sums
            n = self.sum_G.shape[0]
            sums = comm.allreduce_sum(np.concatenate([self.sum_G, self.sum_GObar]))
            self.sum_G[...], self.sum_GObar[...] = sums[:n], sums[n:]

    def _backward_reference(self, dY: np.ndarray, dO: np.ndarray | None,
                            comm: Communicator | None) -> None:
        norm, Obar = self.norm, self.Z
        dA = get_activation(self.activation).backward(dY, self._A, self.Y)
        sum_G, sum_GObar = bn.backward_sums(dA, Obar)
        self.sum_G[...], self.sum_GObar[...] = sum_G, sum_GObar
        self._reduce_sums(comm)
        if norm.stats == "exact":
            dZ = bn.dZ_exact(dA, Obar, norm.gamma, self.inv_std, self.sum_G,
                             self.sum_GObar, self.count)
        else:
            dZ = bn.dZ_frozen(dA, norm.gamma, self.inv_std)
        self._linear_backward(dZ, dO)

    def _linear_backward(self, dZ: np.ndarray, dO: np.ndarray | None) -> None:
        if self.linear is None:
            if dO is not None:
                dO[...] = dZ
            return
        gemm(dZ.T, self.O, self.linear.grads["W"])       # dW = dZ^T O
        if dO is not None:
            gemm(dZ, self.linear.W, dO)                    # dO = dZ W

    def _backward_kernels(self, dY: np.ndarray, dO: np.ndarray | None,
                          comm: Communicator | None,
                          before_sums: Callable[[int, int], None] | None,
                          dO_rows: Callable[[int, int], None] | None = None) -> None:
        norm, Y, Obar, act, P = self.norm, self.Y, self.Z, self.act, self._parts
        gamma = norm.gamma
        exact = norm.stats == "exact"
        if not exact:
            def frozen(p: int, start: int, stop: int) -> None:
                if before_sums is not None:
                    before_sums(start, stop)
                self.kernels._backward_frozen(dY[start:stop], Y[start:stop], Obar[start:stop],
                                              gamma, self.inv_std, act, P.sum_G[p],
                                              P.sum_GObar[p], dY[start:stop])
            self._kernel_parts(frozen)
        else:
            def sums(p: int, start: int, stop: int) -> None:
                if before_sums is not None:
                    before_sums(start, stop)
                self.kernels._backward_sums(dY[start:stop], Y[start:stop], Obar[start:stop], act,
                                   P.sum_G[p], P.sum_GObar[p])
            self._kernel_parts(sums)
        np.sum(P.sum_G, axis=0, out=self.sum_G)
        np.sum(P.sum_GObar, axis=0, out=self.sum_GObar)
        self._reduce_sums(comm)

        def apply(p: int, start: int, stop: int) -> None:
            self.kernels._backward_apply(dY[start:stop], Y[start:stop], Obar[start:stop], gamma,
                                self.inv_std, self.sum_G, self.sum_GObar,
                                float(self.count), act, dY[start:stop])
        if not self.chunked:
            if exact:
                self._kernel_parts(apply)
            self._linear_backward(dY, dO)
            if dO_rows is not None:
                self._kernel_parts(lambda p, start, stop: dO_rows(start, stop))
            return
        assert self.linear is not None
        O, W = self.O, self.linear.W

        def chunks(p: int, start: int, stop: int) -> None:
            """dZ (exact: the apply kernel), then dW_p = sum_chunks dZ_c^T O_c, dO_c = dZ_c W."""
            for c0 in range(start, stop, self.back_chunk_rows):
                c1 = min(stop, c0 + self.back_chunk_rows)
                if exact:
                    apply(p, c0, c1)
                target = P.dW[p] if c0 == start else P.dW_chunk[p]
                dW_into(dY[c0:c1], O[c0:c1], target)
                if c0 != start:
                    P.dW[p] += target
                if dO is not None:
                    matmul(dY[c0:c1], W, dO[c0:c1], dY.shape[0])
            if dO_rows is not None:
                dO_rows(start, stop)

        self._kernel_parts(chunks)
        np.sum(P.dW, axis=0, out=self.linear.grads["W"])
