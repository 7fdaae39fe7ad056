"""The train step of a BN-MLP compiled whole: GEMMs called from Numba, no Python per layer.

Network: hidden layers ``Y_l = sigma_l(BN_l(Y_{l-1} W_l^T))`` (``Y_0 = X``), then
``logits = Y_L W^T + b``. Per layer the same kernels and operations as the Python path
(:class:`bnprop.nn.stage.BNStage` on one part of rows), in the same order and dtypes,
so the step gives the same bits::

    forward   Z_l = Y_{l-1} W_l^T                       NumPy's GEMM (team.gemm)
              (count, mean_l, M2_l) of Z_l               _moments (by blocks), float64
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

The GEMMs go through :mod:`bnprop.kernels.team`: in two parts where ``plan`` says so,
each ``dW_l`` beside ``dY_{l-1}``, a part on the helper thread when the call owns it; the
parts give the whole GEMM's bits. The helper's ``dW_l`` is waited for only after this
thread's BN pass of layer ``l - 1``, which writes neither that ``dW`` nor its operands
(the wide step, 784-1024x3-10 at batch 512 on 2 cores: about 47 -> 46 ms); in a layer
of 1024 features or more, the helper, once done with its ``dW``, takes a part of that
pass's columns (:func:`bnprop.kernels._team_bn.backward_columns`). The
forward's row-wise BN pass (``Obar_l, Y_l``: :mod:`bnprop.kernels._team_bn`) also runs
in two parts with the whole pass's bits: its rows are computed alone. The loss is
:func:`bnprop.kernels.loss.softmax_cross_entropy_inplace`'s passes (the reference's),
its compiled ones inside the two calls (the shift at the end of ``forward``, the row
totals and ``dlogits`` at the start of ``backward``) and NumPy's ``exp`` and ``log``
between them; the update is the optimizer's flat kernel: neither is restated here.
Import this module only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

import numpy as np
from numba import njit, types
from numba.extending import overload

from bnprop.kernels import blas, team
from bnprop.kernels._bn_compiled import _var_inv_std
from bnprop.kernels._cblas import gemm_nn, gemm_nt, gemm_tn  # noqa: F401 - re-exported
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._moments import scratch_size  # noqa: F401 - for nn/compiled.py
from bnprop.kernels._team_bn import backward_columns, forward_rows, moments
from bnprop.kernels.loss import _finish_rows, _mean_loss, _row_totals, _shift_rows

if not blas.available():  # pragma: no cover - the caller checks first
    raise ImportError("bnprop.kernels._mlp_compiled needs NumPy's scipy-openblas")

#: Columns of ``plan``, one row per hidden layer and a last one for the output ``Linear``:
#: where its ``W`` (``N_OUT x N_IN``), ``gamma`` and ``beta`` start in the flat parameter
#: array (their gradients start at the same places in the flat gradient array,
#: :class:`bnprop.nn.plan.FlatBuffers`; the output layer's bias ``b`` at ``BETA_AT``, -1
#: for none, and no ``gamma``), its activation code, its ``_moments`` block rows, 1 for
#: frozen statistics, where its ``Z``, ``Y`` and ``dY`` (each ``m x N_OUT``, one after the
#: other) start in ``buf``; 1 where ``Z = Y_prev W^T`` runs in two parts, and (first row)
#: ``dW_1`` (the helper thread's share, :mod:`bnprop.kernels.team`).
W_AT, N_OUT, N_IN, GAMMA_AT, BETA_AT, ACT, BLOCK_ROWS, FROZEN, BUF_AT, SPLIT_Z, SPLIT_DW = \
    range(11)
#: (:func:`bnprop.nn.compiled._flat_plan` gives the first five, in this order.)
#: The float64 per-feature vectors of ``V`` (8, L, widest layer): each layer's first
#: ``N_OUT`` elements of row ``V[kind, layer]``; then each layer's ``eps`` and
#: running-statistics momentum, at ``V[EPS, layer, 0]`` and ``V[MOMENTUM, layer, 0]``.
MEAN, M2, VAR, INV_STD, SUM_G, SUM_GOBAR, EPS, MOMENTUM = range(8)
#: :func:`_rows`'s arrays.
Z_ROWS, Y_ROWS, DY_ROWS = 0, 1, 2
#: The float64 vectors of ``F`` (:func:`_scratch`): the loss's ``S_{i,y_i}``, row totals and
#: their logs (``m`` each), then the output bias's float64 sums (``K``).
S_Y, TOTAL, LOG_TOTAL, DB_ACC = range(4)


@njit(**JIT_OPTIONS)
def _scratch(F, which, m):  # pragma: no cover - compiled
    """``F``'s vector ``which`` (:data:`S_Y`) for ``m`` rows."""
    if which == DB_ACC:
        return F[3 * m:]
    return F[which * m:(which + 1) * m]


@njit(**JIT_OPTIONS)
def _rows(buf, plan, layer, which, m):  # pragma: no cover - compiled
    """Layer ``layer``'s ``Z`` (``Obar`` after the forward pass), ``Y`` or ``dY``
    (``which``), an ``(m, N_OUT)`` view of ``buf``."""
    n = plan[layer, N_OUT]
    o = plan[layer, BUF_AT] + which * m * n
    return buf[o:o + m * n].reshape((m, n))


@njit(**JIT_OPTIONS)
def _matrix(flat, plan, layer):  # pragma: no cover - compiled
    """Layer ``layer``'s ``W`` (or ``dW``) as a view of the flat array."""
    o, n, k = plan[layer, W_AT], plan[layer, N_OUT], plan[layer, N_IN]
    return flat[o:o + n * k].reshape((n, k))


@njit(**JIT_OPTIONS)
def _vector(flat, plan, layer, column):  # pragma: no cover - compiled
    """Layer ``layer``'s ``gamma`` or ``beta`` (``column``), or its gradient, as a view."""
    o = plan[layer, column]
    return flat[o:o + plan[layer, N_OUT]]


@njit(**JIT_OPTIONS)
def _stat(V, kind, plan, layer):  # pragma: no cover - compiled
    return V[kind, layer, :plan[layer, N_OUT]]


@njit(**JIT_OPTIONS)
def forward(X, params, plan, buf, V, logits, ctl, use, y, F,
            scratch):  # pragma: no cover - compiled
    """The training forward (module docstring) into the buffers, and the loss's first
    pass (``S = logits - rowmax``, ``S_y``: :func:`bnprop.kernels.loss._shift_rows`);
    returns the row count. ``params``, ``plan``: the flat parameters and each layer's
    place in them and in ``buf`` (:data:`W_AT`); ``V``: the statistics and settings
    (:data:`MEAN`); ``ctl``, ``use``: :func:`bnprop.kernels.team.for_call`'s; ``F``: the
    loss's float64 vectors (:data:`S_Y`); ``scratch``: float64, for the statistics
    shared with the helper (:func:`bnprop.kernels._team_bn.moments`). (Packed this way,
    not as tuples of per-layer arrays: Numba unboxes every array argument of a call. And
    no call here takes exactly 20 arguments: CPython then keeps every call's argument
    tuple in a free list that grows to 2000 entries, 400 KB that tracemalloc counts.)"""
    L, m = plan.shape[0] - 1, X.shape[0]
    owned = team.acquire(ctl, use)
    count = 0
    for layer in range(L):
        Z = _rows(buf, plan, layer, Z_ROWS, m)
        H = X if layer == 0 else _rows(buf, plan, layer - 1, Y_ROWS, m)
        team.gemm(team.nt(H, _matrix(params, plan, layer), Z), ctl, owned,
                  plan[layer, SPLIT_Z])
        mean, M2_l = _stat(V, MEAN, plan, layer), _stat(V, M2, plan, layer)
        count = moments(Z, plan[layer, BLOCK_ROWS], mean, M2_l, scratch, ctl, owned)
        inv_std = _stat(V, INV_STD, plan, layer)
        _var_inv_std(M2_l, count, V[EPS, layer, 0], _stat(V, VAR, plan, layer), inv_std)
        forward_rows(Z, mean, inv_std, _vector(params, plan, layer, GAMMA_AT),
                     _vector(params, plan, layer, BETA_AT), plan[layer, ACT], Z,
                     _rows(buf, plan, layer, Y_ROWS, m), None, ctl, owned)
    team.gemm(team.nt(_rows(buf, plan, L - 1, Y_ROWS, m), _matrix(params, plan, L), logits),
              ctl, owned, plan[L, SPLIT_Z])
    team.release(ctl, owned)
    if plan[L, BETA_AT] >= 0:
        b_out = _vector(params, plan, L, BETA_AT)
        for i in range(logits.shape[0]):
            row = logits[i]
            for k in range(row.shape[0]):
                row[k] += b_out[k]
    _shift_rows(logits, y, _scratch(F, S_Y, m))
    return count


@njit(**JIT_OPTIONS)
def backward(X, params, grads, plan, buf, V, count, dlogits, ctl, use, y, F, rowmax,
             totals_here):  # pragma: no cover - compiled
    """The backward pass (module docstring) into the flat gradients ``grads``, from
    ``dlogits`` holding ``E = exp(S)``: first the loss's last passes (the row totals into
    ``F``, unless given (``totals_here`` False), then ``dlogits``:
    :mod:`bnprop.kernels.loss`). Each ``dW`` and the ``dO`` beside it are independent, so
    the helper thread may take the ``dW``. The arguments are :func:`forward`'s."""
    L, m = plan.shape[0] - 1, X.shape[0]
    total = _scratch(F, TOTAL, m)
    if totals_here:
        _row_totals(dlogits, total)
    _finish_rows(dlogits, y, total, rowmax, _cast_like(float(count), dlogits))
    owned = team.acquire(ctl, use)
    # Each dW beside its dO, the dW left to the helper while this thread goes on with the
    # next layer's BN pass (which writes neither the dW nor its operands): waited for
    # (team.beside_done) only before the next GEMM is offered.
    g_dW = team.tn(dlogits, _rows(buf, plan, L - 1, Y_ROWS, m), _matrix(grads, plan, L))
    g_dO = team.nn(dlogits, _matrix(params, plan, L), _rows(buf, plan, L - 1, DY_ROWS, m))
    pending = team.beside_posted(g_dW, g_dO, ctl, owned)
    if plan[L, BETA_AT] >= 0:  # sum_rows in float64, rows in order, rounded once
        db_acc, db_out = _scratch(F, DB_ACC, m), _vector(grads, plan, L, BETA_AT)
        db_acc[:] = 0.0
        for i in range(dlogits.shape[0]):
            row = dlogits[i]
            for k in range(row.shape[0]):
                db_acc[k] += row[k]
        for k in range(db_out.shape[0]):
            db_out[k] = db_acc[k]
    for layer in range(L - 1, -1, -1):
        dY = _rows(buf, plan, layer, DY_ROWS, m)
        Y, Obar = _rows(buf, plan, layer, Y_ROWS, m), _rows(buf, plan, layer, Z_ROWS, m)
        gamma, inv_std = _vector(params, plan, layer, GAMMA_AT), _stat(V, INV_STD, plan, layer)
        sG, sGO = _stat(V, SUM_G, plan, layer), _stat(V, SUM_GOBAR, plan, layer)
        pending = backward_columns(dY, Y, Obar, gamma, inv_std, plan[layer, ACT],
                                   plan[layer, FROZEN] != 0, float(count), sG, sGO, ctl,
                                   owned, pending)
        dg, dbeta = _vector(grads, plan, layer, GAMMA_AT), _vector(grads, plan, layer, BETA_AT)
        for j in range(dg.shape[0]):
            dg[j] = sGO[j]
            dbeta[j] = sG[j]
        team.beside_done(ctl, pending, g_dW)
        dW = _matrix(grads, plan, layer)
        if layer > 0:                                        # dW = dZ^T O, dO = dZ W
            g_dW = team.tn(dY, _rows(buf, plan, layer - 1, Y_ROWS, m), dW)
            g_dO = team.nn(dY, _matrix(params, plan, layer),
                           _rows(buf, plan, layer - 1, DY_ROWS, m))
            pending = team.beside_posted(g_dW, g_dO, ctl, owned)
        else:
            team.gemm(team.tn(dY, X, dW), ctl, owned, plan[0, SPLIT_DW])
    team.release(ctl, owned)


def _cast_like(x, arr):  # pragma: no cover - compiled only
    """``x`` rounded to ``arr``'s dtype."""
    raise NotImplementedError("_cast_like is only callable from Numba-compiled code")


@overload(_cast_like, jit_options=JIT_OPTIONS)
def _cast_like_overload(x, arr):  # type: ignore[no-untyped-def]
    if arr.dtype == types.float32:
        return lambda x, arr: np.float32(x)
    return lambda x, arr: np.float64(x)


@njit(**JIT_OPTIONS)
def commit(grads, V, count, running_means, running_vars, batches_tracked, ctl, use, update, F,
           m, loss):  # pragma: no cover - compiled
    """``(loss, finite)``: the loss (``loss`` NaN: :func:`bnprop.kernels.loss._mean_loss`
    of NumPy's logs of the row totals and ``S_y`` in ``F``, as
    :func:`bnprop.kernels.loss.mean_loss` with compiled sums; ``m`` rows), and whether
    it, every gradient and every batch statistic is finite;
    if so, the running update (module docstring), ``num_batches_tracked += 1``
    (``batches_tracked``: the 0-d counters) and the optimizer's flat update ``update``
    (``kind, p, g, a, b, coef, flags`` of :func:`bnprop.kernels.team.update`; ``kind <
    0``: none). Nothing is written otherwise. The gradients are tested in the halves the
    update then takes (:func:`bnprop.kernels.team.all_finite`), so each thread updates
    what it has just read."""
    if np.isnan(loss):
        loss = _mean_loss(_scratch(F, LOG_TOTAL, m), _scratch(F, S_Y, m), m)
    if not np.isfinite(loss):
        return loss, False
    owned = team.acquire(ctl, use)
    finite = team.all_finite(grads, ctl, owned) and _running(
        grads, V, count, V[MOMENTUM, :, 0], running_means, running_vars, batches_tracked)
    kind, p, g, a, b, coef, flags = update
    if finite and kind >= 0:
        team.update_owned(kind, p, g, a, b, coef, flags, ctl, owned)
    team.release(ctl, owned)
    return loss, finite


@njit(**JIT_OPTIONS)
def _running(grads, V, count, momenta, running_means, running_vars,
             batches_tracked):  # pragma: no cover - compiled
    """The running update of :func:`commit` when every batch statistic is finite."""
    bessel = count / max(count - 1, 1)
    L = len(running_means)
    for layer in range(L):
        n = running_means[layer].shape[0]
        mu, var = V[MEAN, layer, :n], V[VAR, layer, :n]
        for j in range(mu.shape[0]):
            if not (np.isfinite(_cast_like(mu[j], grads))
                    and np.isfinite(_cast_like(var[j] * bessel, grads))):
                return False
    for layer in range(L):
        rm, rv = running_means[layer], running_vars[layer]
        n = rm.shape[0]
        mu, var = V[MEAN, layer, :n], V[VAR, layer, :n]
        keep = _cast_like(1.0 - momenta[layer], rm)
        take = _cast_like(momenta[layer], rm)
        unbias = _cast_like(count / (count - 1), rm)
        for j in range(mu.shape[0]):
            rm[j] = rm[j] * keep + _cast_like(mu[j], rm) * take
            rv[j] = rv[j] * keep + (_cast_like(var[j], rm) * unbias) * take
        batches_tracked[layer][()] += 1
    return True
