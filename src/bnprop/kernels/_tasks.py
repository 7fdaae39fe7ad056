"""What the helper thread of :mod:`bnprop.kernels.team` can be given: a task in one int64
array, and the code that runs it.

The shared array ``ctl`` holds, at the slots below (apart, so the caller's and the
helper's writes do not share a cache line): the open or claimed task, its description (up
to 15 integers, then its kind), the owner, the last task the helper finished, the helper's
state, the caller's task counter, the stop request, and how many parts the helper has
computed. A task is one of:

* ``GEMM``: the rows or columns ``[r0, r1)`` of ``C = op(A) op(B)``, the 12 integers of
  :func:`nt` / :func:`tn` / :func:`nn` (dtype, transposes, sizes, addresses, leading
  dimensions: :func:`bnprop.kernels._cblas.gemm_part`'s arguments), then ``by_rows, r0, r1``;
* ``ADAM`` / ``SGD``: elements ``[r0, r1)`` of a flat optimizer update
  (:func:`update_part`), its arrays given by address and length;
* ``BN_FORWARD``: rows of a batch-norm layer's forward pass after its statistics, the
  second half of :func:`bnprop.kernels._team_bn.forward_rows`;
* ``BN_BACKWARD``: columns of a batch-norm layer's backward pass, the second part of
  :func:`bnprop.kernels._team_bn.backward_columns`;
* ``FINITE``: whether elements ``[r0, r1)`` of a flat float array hold no inf or NaN
  (:func:`bnprop.kernels.team.all_finite`), the answer written into the description;
* ``MOMENTS``: blocks of rows of a batch-norm layer's statistics, their sums into a
  scratch (:func:`bnprop.kernels._moments.block_range`), the part of
  :func:`bnprop.kernels._team_bn.moments` that the helper takes.

Every description starts with the task's dtype code (``F32``, ``F64``): the helper runs
one loop per float type (:func:`run_posted` with a float32 or float64 ``token``), so a
process compiles the task code only for the types it uses.

Import only when :func:`bnprop.kernels.blas.available` is True.
"""

from __future__ import annotations

from numba import carray, njit, types
from numba.extending import overload

from bnprop.kernels._atomics import address, f32_at, f64_at
from bnprop.kernels._bn_columns import backward_part
from bnprop.kernels._bn_compiled import _forward_apply
from bnprop.kernels._cblas import _NO_TRANS, _TRANS, _dtype_code, gemm_part
from bnprop.kernels._finite import _all_finite
from bnprop.kernels._jit import JIT_OPTIONS
from bnprop.kernels._moments import block_range
from bnprop.kernels.optim import _adam_pass, sgd_flat

# Numba compiles these into every cached caller (``_mlp_compiled``, ``_layer_compiled``,
# the helper's loop): a change here makes their caches stale (``_cache_stamp``).
CLAIM, DESC, KIND, OWNER, DONE, STATE, SEQ, STOP, PARTS = 0, 1, 16, 24, 32, 40, 48, 56, 64
SLOTS = 72
#: Task kinds: a GEMM part (:func:`run`), a slice of an Adam or an SGD update, rows of
#: a BN layer's forward pass, a finiteness test, columns of a BN layer's backward pass,
#: blocks of a BN layer's statistics.
GEMM, ADAM, SGD, BN_FORWARD, FINITE, BN_BACKWARD, MOMENTS = 0, 1, 2, 3, 4, 5, 6
#: Where a ``FINITE`` task's answer is written (1: finite), read after its ``DONE``.
FINITE_ANSWER = DESC + 5


def _at(token, addr):  # pragma: no cover - compiled only
    """``addr`` as a pointer to floats of ``token``'s type (a float32 or a float64)."""
    raise NotImplementedError("_at is only callable from Numba-compiled code")


@overload(_at, jit_options=JIT_OPTIONS)
def _at_overload(token, addr):  # type: ignore[no-untyped-def]
    at = {types.float32: f32_at, types.float64: f64_at}.get(token)
    if at is None:
        return None
    return lambda token, addr: at(addr)


@njit(**JIT_OPTIONS)
def _floats(token, addr, n):  # pragma: no cover - compiled
    return carray(_at(token, addr), n)


@njit(**JIT_OPTIONS)
def _f64s(addr, n):  # pragma: no cover - compiled
    return carray(f64_at(addr), n)


@njit(**JIT_OPTIONS)
def update_part(kind, p, g, a, b, coef, flags, r0, r1):  # pragma: no cover - compiled
    """Elements ``[r0, r1)`` of a flat optimizer update (:mod:`bnprop.kernels.optim`):
    Adam (``a, b = m, v``) or SGD (``a`` = the momentum buffer, empty without momentum;
    ``flags``: 1 first step, 2 momentum, 4 Nesterov). Element-wise, so any cut gives the
    whole update's bits."""
    if kind == ADAM:
        _adam_pass(p[r0:r1], g[r0:r1], a[r0:r1], b[r0:r1], coef[0], coef[1], coef[2],
                   coef[3], coef[4], coef[5], coef[6])
    else:
        sgd_flat(p[r0:r1], g[r0:r1], a[r0:r1], coef, flags & 1 != 0, flags & 2 != 0,
                 flags & 4 != 0)


@njit(**JIT_OPTIONS)
def _bn_forward_posted(ctl, token):  # pragma: no cover - compiled
    """The posted rows of :func:`bnprop.kernels._team_bn.forward_rows`: ``dtype, n, rows,
    act``, then the addresses of ``Z, Y`` (the part's first row), ``gamma, beta``, the
    float64 ``mu_B, inv_std``, and ``Obar, A`` (the part's first row; ``A`` 0: none)."""
    d = DESC
    n, rows, act = ctl[d + 1], ctl[d + 2], ctl[d + 3]
    Z, Y = carray(_at(token, ctl[d + 4]), (rows, n)), carray(_at(token, ctl[d + 5]), (rows, n))
    Obar = carray(_at(token, ctl[d + 10]), (rows, n))
    gamma, beta = _floats(token, ctl[d + 6], n), _floats(token, ctl[d + 7], n)
    mean, inv_std = _f64s(ctl[d + 8], n), _f64s(ctl[d + 9], n)
    if ctl[d + 11] == 0:
        _forward_apply(Z, mean, inv_std, gamma, beta, act, Obar, Y, None)
    else:
        _forward_apply(Z, mean, inv_std, gamma, beta, act, Obar, Y,
                       carray(_at(token, ctl[d + 11]), (rows, n)))


@njit(**JIT_OPTIONS)
def _bn_backward_posted(ctl, token):  # pragma: no cover - compiled
    """The posted columns of :func:`bnprop.kernels._team_bn.backward_columns`: ``dtype,
    n, m, act, frozen``, the addresses of the whole ``dY, Y, Obar`` (m, n) and ``gamma``
    (n), of the float64 ``inv_std, sum_G, sum_GObar`` (n), then the batch's rows and the
    columns ``c0, c1``."""
    d = DESC
    n, m = ctl[d + 1], ctl[d + 2]
    backward_part(carray(_at(token, ctl[d + 5]), (m, n)), carray(_at(token, ctl[d + 6]), (m, n)),
                  carray(_at(token, ctl[d + 7]), (m, n)), _floats(token, ctl[d + 8], n),
                  _f64s(ctl[d + 9], n), ctl[d + 3], ctl[d + 4] != 0, float(ctl[d + 12]),
                  _f64s(ctl[d + 10], n), _f64s(ctl[d + 11], n), ctl[d + 13], ctl[d + 14])


@njit(**JIT_OPTIONS)
def _finite_posted(ctl, token):  # pragma: no cover - compiled
    """``dtype, address, n, r0, r1`` of a flat array: the answer for ``[r0, r1)``."""
    d = DESC
    n, r0, r1 = ctl[d + 2], ctl[d + 3], ctl[d + 4]
    ctl[FINITE_ANSWER] = 1 if _all_finite(_floats(token, ctl[d + 1], n)[r0:r1]) else 0


@njit(**JIT_OPTIONS)
def _moments_posted(ctl, token):  # pragma: no cover - compiled
    """``dtype, m, n, block_rows``, the addresses of ``Z`` (m, n) and of the float64
    scratch, its length, then the blocks ``b0, b1``; the helper's center is the scratch's
    third ``n`` (:func:`bnprop.kernels._moments.scratch_size`)."""
    d = DESC
    m, n = ctl[d + 1], ctl[d + 2]
    S = _f64s(ctl[d + 5], ctl[d + 6])
    block_range(carray(_at(token, ctl[d + 4]), (m, n)), ctl[d + 3], S, ctl[d + 7], ctl[d + 8],
                S[2 * n:3 * n])


@njit(**JIT_OPTIONS)
def run_posted(ctl, token):  # pragma: no cover - compiled
    """The posted task, whose arrays are of ``token``'s float type (``ctl[DESC]`` is
    :func:`bnprop.kernels._cblas._code_of` of ``token``); compiled for one float type at
    a time, so a process compiles the helper's code only for the dtypes it trains in."""
    d = DESC
    if ctl[KIND] == MOMENTS:
        _moments_posted(ctl, token)
    elif ctl[KIND] == BN_FORWARD:
        _bn_forward_posted(ctl, token)
    elif ctl[KIND] == BN_BACKWARD:
        _bn_backward_posted(ctl, token)
    elif ctl[KIND] == FINITE:
        _finite_posted(ctl, token)
    elif ctl[KIND] == GEMM:
        gemm_part(ctl[d], ctl[d + 1], ctl[d + 2], ctl[d + 3], ctl[d + 4], ctl[d + 5],
                  ctl[d + 6], ctl[d + 7], ctl[d + 8], ctl[d + 9], ctl[d + 10], ctl[d + 11],
                  ctl[d + 12] != 0, ctl[d + 13], ctl[d + 14])
    else:
        update_part(ctl[KIND], _floats(token, ctl[d + 1], ctl[d + 6]),
                    _floats(token, ctl[d + 2], ctl[d + 6]), _floats(token, ctl[d + 3], ctl[d + 9]),
                    _floats(token, ctl[d + 4], ctl[d + 10]),
                    _floats(token, ctl[d + 5], ctl[d + 11]), ctl[d + 12], ctl[d + 7], ctl[d + 8])


@njit(**JIT_OPTIONS)
def _describe(ta, tb, A, B, C):  # pragma: no cover - compiled
    """``C = op(A) op(B)`` of C-contiguous operands as :func:`run`'s 12 integers: dtype,
    transposes, ``M, N, K``, then each operand's address and row length."""
    M, K = (A.shape[1], A.shape[0]) if ta == _TRANS else (A.shape[0], A.shape[1])
    N = B.shape[0] if tb == _TRANS else B.shape[1]
    return (_dtype_code(A, B, C), ta, tb, M, N, K, address(A), A.shape[1], address(B),
            B.shape[1], address(C), C.shape[1])


@njit(**JIT_OPTIONS)
def nt(A, B, C):  # pragma: no cover - compiled
    """The GEMM ``C = A B^T`` (A (M, K), B (N, K))."""
    return _describe(_NO_TRANS, _TRANS, A, B, C)


@njit(**JIT_OPTIONS)
def tn(A, B, C):  # pragma: no cover - compiled
    """The GEMM ``C = A^T B`` (A (K, M), B (K, N))."""
    return _describe(_TRANS, _NO_TRANS, A, B, C)


@njit(**JIT_OPTIONS)
def nn(A, B, C):  # pragma: no cover - compiled
    """The GEMM ``C = A B`` (A (M, K), B (K, N))."""
    return _describe(_NO_TRANS, _NO_TRANS, A, B, C)


@njit(**JIT_OPTIONS)
def run(g, by_rows, r0, r1):  # pragma: no cover - compiled
    """Rows (``by_rows``) or columns ``[r0, r1)`` of the GEMM ``g`` (``*_args``)."""
    gemm_part(g[0], g[1], g[2], g[3], g[4], g[5], g[6], g[7], g[8], g[9], g[10], g[11],
              by_rows, r0, r1)
