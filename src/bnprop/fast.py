"""The preallocated training step: the same step as :meth:`bnprop.model.MLP.loss_and_grads`,
on fused kernels, with every work buffer allocated once per batch shape.

One process, batch-normalized hidden layers (``MLP(..., batchnorm=True)``); the reference
path stays the oracle (tests compare them) and the only path for a communicator. Per
hidden layer l with ``m`` rows (shapes in brackets), buffers written in place every step::

    Z     (m, n_out)    Z = O W^T (GEMM, out=), then overwritten by Obar (forward_apply)
    Y     (m, n_out)    sigma(gamma * Obar + beta); A is never stored
    dY    (m, n_out)    dF/dY (the next layer's dO, a GEMM out=), then overwritten by dZ
    dW    (n_out, n_in) dZ^T O;   dgamma, dbeta (n_out,): float64 sums cast to the dtype
    mean, M2, inv_std, sum_G, sum_GObar (n_out,) float64, one set per row part

and for the output layer ``logits`` (m, k) (overwritten by ``dlogits``), ``dW``, ``db``.
The equations are those of :mod:`bnprop.layer` and :mod:`bnprop.kernels.bn`; the running
statistics are updated in place with the equations of :mod:`bnprop.model`.

Threads (:mod:`bnprop.threads`): the kernels run on ``map_rows`` row parts of the batch
(moments merged with Chan's combination, sums added, in row order); each GEMM is split
over the rows of its output when a part has at least :data:`GEMM_PART_FLOPS` of work.
BLAS stays on one thread inside each part. Large batches (``m >= 2 * KERNEL_PART_ROWS``)
walk each part in chunks of :data:`CHUNK_BYTES`, so the data a GEMM writes is read from
cache by the kernel that follows it (and the reverse)::

    forward    per chunk c:  Z_c = O_c W^T;  moments of Z_c, merged (Chan)
    backward   per chunk c:  dZ_c (apply kernel);  dW_p += dZ_c^T O_c;  dO_c = dZ_c W
               dW = sum_p dW_p

The compiled kernels are called directly (``bnprop.kernels.bn._moments`` ...): every
array they get was made here, so the public wrappers' checks hold by construction.

What is still allocated per step: Python objects (the gradient dict, futures) and a few
``(m,)`` vectors of the softmax (the optimizers write into one kept work buffer, and
allocate only ``g + weight_decay * p`` when weight decay is on); all freed within the
step, so the allocated memory does not grow (``bnprop bench`` measures it).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop import threads
from bnprop.kernels import bn as bnk
from bnprop.kernels.activations import ACTIVATION_CODES
from bnprop.loss import softmax_cross_entropy_inplace

#: Minimum floating-point operations of one part of a split GEMM (smaller GEMMs run whole:
#: handing a part to a worker thread costs ~50 us, a 32 MFLOP part takes ~0.3 ms).
GEMM_PART_FLOPS = 32_000_000
#: Minimum bytes of ``Z`` in one part of a split kernel pass (a part must outweigh the
#: ~50 us of handing it to a worker thread).
KERNEL_PART_BYTES = 1 << 19
#: From ``2 * KERNEL_PART_ROWS`` rows on, each part walks its rows in chunks.
KERNEL_PART_ROWS = 2048
#: Bytes of a chunk of ``Z`` rows: a chunk stays in L2 between the GEMM writing it and the
#: kernel reading it (forward), and between the kernel writing ``dZ`` and the GEMMs.
CHUNK_BYTES = 1 << 20


def gemm(a: np.ndarray, b: np.ndarray, out: np.ndarray) -> np.ndarray:
    """``out = a @ b`` into ``out`` (m, n), its rows split over :func:`bnprop.threads.map_rows`.

    ``a`` (m, k) may be a transposed view; each part computes ``out[r0:r1] = a[r0:r1] @ b``.
    """
    m, k = a.shape
    n = b.shape[1]
    min_rows = max(1, math.ceil(GEMM_PART_FLOPS / max(1, 2 * k * n)))
    if m < 2 * min_rows or threads.num_threads() == 1:  # one part: no map_rows call
        return np.matmul(a, b, out=out)

    def part(start: int, stop: int) -> None:
        np.matmul(a[start:stop], b, out=out[start:stop])

    threads.map_rows(part, m, min_rows=min_rows)
    return out


class _Parts:
    """Per-part buffers of one layer: float64 ``mean, M2, sum_G, sum_GObar`` (parts, n_out);
    with ``chunked``, the part's ``dW`` and one chunk's term of it (parts, n_out, n_in)."""

    def __init__(self, parts: int, n_out: int, n_in: int, dtype: np.dtype,
                 chunked: bool) -> None:
        self.mean = np.empty((parts, n_out))
        self.M2 = np.empty((parts, n_out))
        self.sum_G = np.empty((parts, n_out))
        self.sum_GObar = np.empty((parts, n_out))
        shape = (parts, n_out, n_in) if chunked else (0, n_out, n_in)
        self.dW, self.dW_chunk = np.empty(shape, dtype), np.empty(shape, dtype)


class BNLayerStep:
    """Forward and backward of one BN layer (:mod:`bnprop.layer`) into preallocated buffers.

    Parameters
    ----------
    m, n_in, n_out : int
        Rows of the batch and the layer's widths.
    dtype : numpy dtype
    activation : str
    dO : ndarray of shape (m, n_in), optional
        Where ``dO = dZ W`` goes (the previous layer's ``dY``); ``None``: not computed
        (the network's first layer).
    """

    def __init__(self, m: int, n_in: int, n_out: int, dtype: np.dtype, activation: str,
                 dO: np.ndarray | None = None) -> None:
        self.m, self.activation = m, activation
        self.act = ACTIVATION_CODES[activation]
        self.block_rows = max(1, bnk.BLOCK_BYTES // max(1, n_out * np.dtype(dtype).itemsize))
        self.chunked = m >= 2 * KERNEL_PART_ROWS
        self.part_rows = max(1, KERNEL_PART_BYTES // max(1, n_out * np.dtype(dtype).itemsize))
        self.chunk_rows = max(1, CHUNK_BYTES // max(1, n_out * np.dtype(dtype).itemsize))
        self.Z = np.empty((m, n_out), dtype)       # Z, then Obar in place
        self.Y = np.empty((m, n_out), dtype)
        self.dY = np.empty((m, n_out), dtype)      # dY, then dZ in place
        self.dW = np.empty((n_out, n_in), dtype)
        self.dgamma = np.empty(n_out, dtype)
        self.dbeta = np.empty(n_out, dtype)
        self.dO = dO
        self._parts = _Parts(1, n_out, n_in, np.dtype(dtype), self.chunked)
        self._starts = {0: 0}
        self.inv_std = np.empty(n_out)
        self.mean = np.empty(n_out)
        self.var = np.empty(n_out)
        self.sum_G = np.empty(n_out)
        self.sum_GObar = np.empty(n_out)
        self.count = m

    def _kernel_parts(self, fn: Any) -> list[Any]:
        """``map_rows`` over the batch, calling ``fn(part_index, start, stop)``."""
        starts = self._starts
        if len(starts) == 1:  # one part, on this thread
            return [fn(0, 0, self.m)]

        def indexed(start: int, stop: int) -> Any:
            return fn(starts[start], start, stop)

        return threads.map_rows(indexed, self.m, min_rows=self.part_rows)

    def _size_parts(self) -> None:
        """Per-part buffers for the part count ``map_rows`` will use now (it may change)."""
        parts = max(1, min(threads.num_threads(), self.m // self.part_rows))
        if len(self._parts.mean) != parts:
            self._parts = _Parts(parts, self.Z.shape[1], self.dW.shape[1], self.dW.dtype,
                                 self.chunked)
            self._starts = {start: p for p, (start, _) in
                            enumerate(threads.row_parts(self.m, parts))}

    def forward(self, O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray,
                eps: float) -> np.ndarray:
        """``Y = sigma(gamma * (O W^T - mu_B) * inv_std + beta)``; keeps Obar (in Z) and Y."""
        Z, Y, act = self.Z, self.Y, self.act
        self._size_parts()
        P = self._parts
        if not self.chunked:
            gemm(O, W.T, Z)

        def reduce(p: int, start: int, stop: int) -> tuple[int, np.ndarray, np.ndarray]:
            if not self.chunked:
                count = bnk._moments(Z[start:stop], self.block_rows, P.mean[p], P.M2[p])
                return int(count), P.mean[p], P.M2[p]
            total: tuple[int, np.ndarray, np.ndarray] | None = None
            for c0 in range(start, stop, self.chunk_rows):  # Z = O W^T, then its moments
                c1 = min(stop, c0 + self.chunk_rows)
                np.matmul(O[c0:c1], W.T, out=Z[c0:c1])
                n = int(bnk._moments(Z[c0:c1], self.block_rows, P.mean[p], P.M2[p]))
                total = ((n, P.mean[p].copy(), P.M2[p].copy()) if total is None
                         else bn.chan_combine(*total, n, P.mean[p], P.M2[p]))
            assert total is not None  # a part has rows
            return total

        results = self._kernel_parts(reduce)
        count, mean, M2 = results[0]
        for part in results[1:]:
            count, mean, M2 = bn.chan_combine(count, mean, M2, *part)
        self.count = count
        self.mean[...] = mean
        np.divide(M2, count, out=self.var)           # var_B = M2 / m (biased)
        np.add(self.var, eps, out=self.inv_std)      # inv_std = 1 / sqrt(var_B + eps)
        np.sqrt(self.inv_std, out=self.inv_std)
        np.divide(1.0, self.inv_std, out=self.inv_std)

        def apply(p: int, start: int, stop: int) -> None:
            bnk._forward_apply(Z[start:stop], self.mean, self.inv_std, gamma, beta, act,
                               Z[start:stop], Y[start:stop], None)

        self._kernel_parts(apply)
        return Y

    def backward(self, W: np.ndarray, gamma: np.ndarray, O: np.ndarray, stats: str) -> None:
        """From ``self.dY`` (filled by the caller): dgamma, dbeta, dZ (in dY), dW, dO."""
        dY, Y, Obar, act, P = self.dY, self.Y, self.Z, self.act, self._parts
        if stats == "frozen":
            def frozen(p: int, start: int, stop: int) -> None:
                bnk._backward_frozen(dY[start:stop], Y[start:stop], Obar[start:stop], gamma,
                                     self.inv_std, act, P.sum_G[p], P.sum_GObar[p],
                                     dY[start:stop])
            self._kernel_parts(frozen)
            np.sum(P.sum_G, axis=0, out=self.sum_G)
            np.sum(P.sum_GObar, axis=0, out=self.sum_GObar)
        else:
            def sums(p: int, start: int, stop: int) -> None:
                bnk._backward_sums(dY[start:stop], Y[start:stop], Obar[start:stop], act,
                                   P.sum_G[p], P.sum_GObar[p])
            self._kernel_parts(sums)
            np.sum(P.sum_G, axis=0, out=self.sum_G)
            np.sum(P.sum_GObar, axis=0, out=self.sum_GObar)

            def apply(p: int, start: int, stop: int) -> None:
                bnk._backward_apply(dY[start:stop], Y[start:stop], Obar[start:stop], gamma,
                                    self.inv_std, self.sum_G, self.sum_GObar,
                                    float(self.count), act, dY[start:stop])
            if not self.chunked:
                self._kernel_parts(apply)
        np.copyto(self.dgamma, self.sum_GObar, casting="same_kind")
        np.copyto(self.dbeta, self.sum_G, casting="same_kind")
        if not self.chunked:
            gemm(dY.T, O, self.dW)                   # dW = dZ^T O
            if self.dO is not None:
                gemm(dY, W, self.dO)                 # dO = dZ W
            return
        exact = stats != "frozen"

        def chunks(p: int, start: int, stop: int) -> None:
            """dZ (exact: the apply kernel), then dW_p = sum_chunks dZ_c^T O_c, dO_c = dZ_c W."""
            for c0 in range(start, stop, self.chunk_rows):
                c1 = min(stop, c0 + self.chunk_rows)
                if exact:
                    apply(p, c0, c1)
                target = P.dW[p] if c0 == start else P.dW_chunk[p]
                np.matmul(dY[c0:c1].T, O[c0:c1], out=target)
                if c0 != start:
                    P.dW[p] += target
                if self.dO is not None:
                    np.matmul(dY[c0:c1], W, out=self.dO[c0:c1])

        self._kernel_parts(chunks)
        np.sum(P.dW, axis=0, out=self.dW)


class FastStep:
    """The preallocated step of one :class:`~bnprop.model.MLP` (batchnorm=True, one process).

    ``loss_and_grads(X, y)`` equals ``net.loss_and_grads(X, y)`` (float64 to ~1e-12,
    float32 to rounding) and updates the running statistics the same way; the returned
    gradient arrays are the step's buffers, overwritten by the next call.
    """

    def __init__(self, net: Any) -> None:
        if not net.config.batchnorm:
            raise ValueError("net: the fast step needs batchnorm=True hidden layers.")
        self.net = net
        self.m: int | None = None
        self.allocations = 0  # how often buffers were (re)allocated: once per batch shape

    def _allocate(self, m: int) -> None:
        net, dt = self.net, self.net.dtype
        self.layers: list[BNLayerStep] = []
        for layer in net.hidden:
            n_out, n_in = layer.W.shape
            dO = self.layers[-1].dY if self.layers else None  # dO of l is dY of l - 1
            self.layers.append(BNLayerStep(m, n_in, n_out, dt, net.config.activation, dO))
        n_classes, n_h = net.out.W.shape
        self.logits = np.empty((m, n_classes), dt)   # logits, then dlogits in place
        self.dW_out = np.empty((n_classes, n_h), dt)
        self.db_out = np.empty(n_classes, dt)
        self.dH = self.layers[-1].dY if self.layers else None
        self.total = np.empty(m)                      # sum_k exp(S_ik), float64
        self.rowmax = np.empty((m, 1), dt)
        self.rows = np.arange(m)
        # mu_B and var_B rounded to the dtype, as the reference cache holds them.
        self.running_tmp = [(np.empty(layer.W.shape[0], dt), np.empty(layer.W.shape[0], dt))
                            for layer in net.hidden]
        self.m = m
        self.allocations += 1

    def loss_and_grads(self, X: object, y: object) -> tuple[float, dict[str, np.ndarray]]:
        """Training-mode forward and backward on one batch, as :meth:`MLP.loss_and_grads`."""
        net = self.net
        X, y = net._check_batch(X, y)
        m = X.shape[0]
        if self.m != m:
            self._allocate(m)
        cfg = net.config
        O = X
        for layer, step, tmp in zip(net.hidden, self.layers, self.running_tmp, strict=True):
            O = step.forward(O, layer.W, layer.gamma, layer.beta, cfg.eps)
            self._update_running(layer, step, tmp)
        H = O
        logits = gemm(H, net.out.W.T, self.logits)
        logits += net.out.b
        loss = softmax_cross_entropy_inplace(              # logits now hold dlogits
            logits, y, m, rowmax=self.rowmax, total=self.total, rows=self.rows)
        dlogits = logits
        gemm(dlogits.T, H, self.dW_out)
        self._column_sums(dlogits, self.db_out)
        if self.layers:
            gemm(dlogits, net.out.W, self.dH)
        for i in range(len(self.layers) - 1, -1, -1):
            layer, step = net.hidden[i], self.layers[i]
            O_in = X if i == 0 else self.layers[i - 1].Y
            step.backward(layer.W, layer.gamma, O_in, cfg.stats)
        grads: dict[str, np.ndarray] = {}
        for i, step in enumerate(self.layers):
            grads[f"hidden.{i}.W"] = step.dW
            grads[f"hidden.{i}.gamma"] = step.dgamma
            grads[f"hidden.{i}.beta"] = step.dbeta
        grads["out.W"], grads["out.b"] = self.dW_out, self.db_out
        return loss, grads

    def train_step(self, X: object, y: object, optimizer: Any) -> float:
        """:meth:`loss_and_grads`, then ``optimizer.step(net.parameters(), grads)``."""
        loss, grads = self.loss_and_grads(X, y)
        optimizer.step(self.net.parameters(), grads)
        return loss

    @staticmethod
    def _column_sums(a: np.ndarray, out: np.ndarray) -> None:
        """``out = sum_rows(a)``, accumulated in float64 and rounded once (as the reference)."""
        if out.dtype == np.float64:
            np.sum(a, axis=0, dtype=np.float64, out=out)
        else:
            out[...] = a.sum(axis=0, dtype=np.float64)  # (k,) temporary, k = n_classes

    def _update_running(
        self, layer: Any, step: BNLayerStep, tmp: tuple[np.ndarray, np.ndarray],
    ) -> None:
        """:meth:`MLP._update_running` (the one home of the convention) on this step's
        statistics, rounded to the dtype first as the reference's cache rounds them."""
        mu_B, var_B = tmp
        mu_B[...] = step.mean
        var_B[...] = step.var
        self.net._update_running(layer, mu_B, var_B, step.count)
