"""The train step of a BN-MLP compiled whole: GEMMs called from Numba, no Python per layer.

Network: hidden layers ``Y_l = sigma_l(BN_l(Y_{l-1} W_l^T))`` (``Y_0 = X``), then
``logits = Y_L W^T + b``. Per layer the same kernels and operations as the Python path
(:class:`bnprop.nn.stage.BNStage` on one part of rows), in the same order and dtypes,
so the step gives the same bits::

    forward   Z_l = Y_{l-1} W_l^T                       gemm_nt (NumPy's GEMM)
              (count, mean_l, M2_l) of Z_l               _moments, float64
              var_l = M2_l / count,  inv_std_l = 1 / sqrt(var_l + eps_l)    float64
              Obar_l (into Z_l), Y_l = sigma_l(gamma_l Obar_l + beta_l)     _forward_apply
              logits = Y_L W^T (+ b)
    backward  dW = dlogits^T Y_L,  db = sum_rows(dlogits) (float64, rounded once),
              dY_L = dlogits W
              per layer, last first: the two sums and dZ_l (into dY_l), exact or frozen;
              dW_l = dZ_l^T Y_{l-1};  dY_{l-1} = dZ_l W_l (not for the first layer)
              dgamma_l = sum_GObar_l, dbeta_l = sum_G_l, rounded to the dtype
    commit    only when the loss, every gradient and every batch statistic is finite:
              running_mean_l = (1 - momentum_l) running_mean_l + momentum_l mu_B,l
              running_var_l  = (1 - momentum_l) running_var_l + momentum_l m/(m-1) var_B,l
              (mu_B, var_B rounded to the dtype first, as BatchNorm1d.commit_running)

The loss between the two calls is :func:`bnprop.kernels.loss.softmax_cross_entropy_inplace`
(the reference's, with its small passes compiled), and the update is the optimizer's
flat kernel: neither is restated here.
Import this module only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import intrinsic, overload

from bnprop.kernels import blas
from bnprop.kernels._bn_compiled import (
    _backward_apply,
    _backward_frozen,
    _backward_sums,
    _forward_apply,
    _moments,
    _var_inv_std,
)
from bnprop.kernels._finite import _all_finite
from bnprop.kernels._jit import JIT_OPTIONS

if not blas.available():  # pragma: no cover - the caller checks first
    raise ImportError("bnprop.kernels._mlp_compiled needs NumPy's scipy-openblas")

_ROW_MAJOR, _NO_TRANS, _TRANS = 101, 111, 112


def _signature(t: types.Type) -> types.Signature:
    i32, i64, p = types.int32, types.int64, types.CPointer(t)
    return types.void(i32, i32, i32, i64, i64, i64, t, p, i64, p, i64, t, p, i64)


_sgemm = types.ExternalFunction(blas.SYMBOLS["float32"], _signature(types.float32))
_dgemm = types.ExternalFunction(blas.SYMBOLS["float64"], _signature(types.float64))


@intrinsic
def _ptr(typingctx, arr):  # type: ignore[no-untyped-def]  # pragma: no cover - compiled
    """The data pointer of an array (what ``arr.ctypes.data`` is, typed for a C call)."""
    def codegen(context, builder, signature, args):  # type: ignore[no-untyped-def]
        return context.make_array(arr)(context, builder, args[0]).data

    return types.CPointer(arr.dtype)(arr), codegen


def _xgemm(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # pragma: no cover - compiled only
    """``C = op(A) op(B)`` (row-major cblas ``?gemm``, alpha 1, beta 0)."""
    raise NotImplementedError("_xgemm is only callable from Numba-compiled code")


@overload(_xgemm, jit_options=JIT_OPTIONS)
def _xgemm_overload(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # type: ignore[no-untyped-def]
    # Only C-contiguous operands of one dtype type-check: the pointers and leading
    # dimensions below assume them (anything else would read the wrong memory).
    if not (A.dtype == B.dtype == C.dtype and A.layout == B.layout == C.layout == "C"):
        return None
    if C.dtype == types.float32:
        def impl32(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # type: ignore[no-untyped-def]
            _sgemm(_ROW_MAJOR, ta, tb, M, N, K, np.float32(1.0), _ptr(A), lda, _ptr(B), ldb,
                   np.float32(0.0), _ptr(C), ldc)
        return impl32
    if C.dtype == types.float64:
        def impl64(ta, tb, M, N, K, A, lda, B, ldb, C, ldc):  # type: ignore[no-untyped-def]
            _dgemm(_ROW_MAJOR, ta, tb, M, N, K, 1.0, _ptr(A), lda, _ptr(B), ldb, 0.0,
                   _ptr(C), ldc)
        return impl64
    return None


@njit(**JIT_OPTIONS)
def gemm_nt(A, B, C):  # pragma: no cover - compiled
    """``C = A B^T``: A (M, K), B (N, K), C (M, N), all C-contiguous."""
    M, K = A.shape
    N = B.shape[0]
    _xgemm(_NO_TRANS, _TRANS, M, N, K, A, K, B, K, C, N)


@njit(**JIT_OPTIONS)
def gemm_tn(A, B, C):  # pragma: no cover - compiled
    """``C = A^T B``: A (K, M), B (K, N), C (M, N), all C-contiguous."""
    K, M = A.shape
    N = B.shape[1]
    _xgemm(_TRANS, _NO_TRANS, M, N, K, A, M, B, N, C, N)


@njit(**JIT_OPTIONS)
def gemm_nn(A, B, C):  # pragma: no cover - compiled
    """``C = A B``: A (M, K), B (K, N), C (M, N), all C-contiguous."""
    M, K = A.shape
    N = B.shape[1]
    _xgemm(_NO_TRANS, _NO_TRANS, M, N, K, A, K, B, N, C, N)


@njit(**JIT_OPTIONS)
def forward(X, Ws, gammas, betas, acts, eps, block_rows, Zs, Ys, means, M2s, variances,
            inv_stds, W_out, b_out, has_bias, logits):  # pragma: no cover - compiled
    """The training forward (module docstring) into the buffers; returns the row count."""
    H = X
    count = 0
    for layer in range(len(Ws)):
        Z = Zs[layer]
        gemm_nt(H, Ws[layer], Z)
        count = _moments(Z, block_rows[layer], means[layer], M2s[layer])
        inv_std = inv_stds[layer]
        _var_inv_std(M2s[layer], count, eps[layer], variances[layer], inv_std)
        _forward_apply(Z, means[layer], inv_std, gammas[layer], betas[layer], acts[layer],
                       Z, Ys[layer], None)
        H = Ys[layer]
    gemm_nt(H, W_out, logits)
    if has_bias:
        for i in range(logits.shape[0]):
            row = logits[i]
            for k in range(row.shape[0]):
                row[k] += b_out[k]
    return count


@njit(**JIT_OPTIONS)
def backward(X, Ws, gammas, acts, frozen, Zs, Ys, dYs, inv_stds, sum_G, sum_GObar, count,
             W_out, has_bias, dlogits, dWs, dgammas, dbetas, dW_out, db_out, db_acc,
             ):  # pragma: no cover - compiled
    """The backward pass (module docstring) into the gradient views."""
    L = len(Ws)
    gemm_tn(dlogits, Ys[L - 1], dW_out)
    if has_bias:  # sum_rows in float64, rows in order, rounded once
        db_acc[:] = 0.0
        for i in range(dlogits.shape[0]):
            row = dlogits[i]
            for k in range(row.shape[0]):
                db_acc[k] += row[k]
        for k in range(db_out.shape[0]):
            db_out[k] = db_acc[k]
    gemm_nn(dlogits, W_out, dYs[L - 1])
    for layer in range(L - 1, -1, -1):
        dY, Y, Obar = dYs[layer], Ys[layer], Zs[layer]
        sG, sGO = sum_G[layer], sum_GObar[layer]
        if frozen[layer]:
            _backward_frozen(dY, Y, Obar, gammas[layer], inv_stds[layer], acts[layer], sG, sGO,
                             dY)
        else:
            _backward_sums(dY, Y, Obar, acts[layer], sG, sGO)
            _backward_apply(dY, Y, Obar, gammas[layer], inv_stds[layer], sG, sGO,
                            float(count), acts[layer], dY)
        O = X if layer == 0 else Ys[layer - 1]
        gemm_tn(dY, O, dWs[layer])                           # dW = dZ^T O
        if layer > 0:
            gemm_nn(dY, Ws[layer], dYs[layer - 1])           # dO = dZ W
        dg, dbeta = dgammas[layer], dbetas[layer]
        for j in range(dg.shape[0]):
            dg[j] = sGO[j]
            dbeta[j] = sG[j]


def _cast_like(x, arr):  # pragma: no cover - compiled only
    """``x`` rounded to ``arr``'s dtype."""
    raise NotImplementedError("_cast_like is only callable from Numba-compiled code")


@overload(_cast_like, jit_options=JIT_OPTIONS)
def _cast_like_overload(x, arr):  # type: ignore[no-untyped-def]
    if arr.dtype == types.float32:
        return lambda x, arr: np.float32(x)
    return lambda x, arr: np.float64(x)


@njit(**JIT_OPTIONS)
def commit(grads, means, variances, count, momenta, running_means, running_vars,
           batches_tracked):  # pragma: no cover - compiled
    """Whether every gradient and batch statistic is finite; if so, the running update
    (module docstring) and ``num_batches_tracked += 1`` (``batches_tracked``: the 0-d
    counters). Nothing is written otherwise."""
    if not _all_finite(grads):
        return False
    bessel = count / max(count - 1, 1)
    for layer in range(len(means)):
        mu, var = means[layer], variances[layer]
        for j in range(mu.shape[0]):
            if not (np.isfinite(_cast_like(mu[j], grads))
                    and np.isfinite(_cast_like(var[j] * bessel, grads))):
                return False
    for layer in range(len(means)):
        mu, var = means[layer], variances[layer]
        rm, rv = running_means[layer], running_vars[layer]
        keep = _cast_like(1.0 - momenta[layer], rm)
        take = _cast_like(momenta[layer], rm)
        unbias = _cast_like(count / (count - 1), rm)
        for j in range(mu.shape[0]):
            rm[j] = rm[j] * keep + _cast_like(mu[j], rm) * take
            rv[j] = rv[j] * keep + (_cast_like(var[j], rm) * unbias) * take
        batches_tracked[layer][()] += 1
    return True
