"""Element-wise activations for the Numba kernels: vectorizable ``sigma`` and ``sigma' * dY``.

The same equations as :mod:`bnprop.activations`, one row of ``n`` features at a time::

    sigmoid   Y = 1 / (1 + exp(-A))     dA = (Y (1 - Y)) dY
    tanh      Y = tanh(A)               dA = (1 - Y Y) dY
    relu      Y = max(A, 0)             dA = 1[Y > 0] dY      (Y > 0 exactly when A > 0)
    identity  Y = A                     dA = 1 dY

Every derivative is taken from ``Y``, so the backward kernels never read ``A``. The
derivatives are evaluated in ``dY``'s dtype in the reference's order of operations, so
they round exactly as :mod:`bnprop.activations` does.

Why ``exp`` is written out here: without Intel's SVML, Numba lowers ``math.exp`` and
``math.tanh`` to scalar libm calls, which the loop vectorizer cannot widen (a float32
sigmoid over 65536 x 256 takes 290 ms through ``math.tanh``, 8 ms as below: 35x).
The code below is branch-free arithmetic that LLVM turns into AVX2/AVX-512 code:

* ``exp(x)`` for ``x <= 0``: ``x = k ln2 + r`` with ``k = round(x / ln2)``, ``|r| <= ln2 / 2``
  (Cody-Waite, ``ln2`` split in a high part exact in ``k * ln2_hi`` and a low part),
  ``e^r`` by a polynomial, ``s = 2^k`` built in the exponent bits. Below ``-87``
  (float32) or ``-708`` (float64) the true value is subnormal and 0 is returned.
* float32 (``exp_pair``): ``e^r`` by the Cephes ``expf`` polynomial, and ``e^x - 1``
  beside ``e^x``, for ``k = 0`` straight from the polynomial, without the cancellation
  of ``e^x - 1``. Then ``sigmoid(a) = 1 / (1 + e)`` for ``a >= 0`` and ``e / (1 + e)``
  otherwise, ``e = exp(-|a|)``, and ``tanh(t) = -(e^{-2t} - 1) / (2 + (e^{-2t} - 1))``.
* float64 (``exp_ratio``): the FreeBSD ``e_exp.c`` rational form
  ``e^r = 1 + 2r / (2 - c)``, ``c = r - r^2 P(r^2)``, kept as a ratio
  ``e^x = E / D`` with ``D = 2 - c`` and ``E = s (D + 2r)``, so that each activation
  takes one division, not two (a float64 division costs as much as the whole
  polynomial: sigmoid 2.00-2.07 -> 1.74 ns an element, tanh 2.28-2.30 -> 1.88, 4096 x 256,
  one thread, both versions alternated in one process; largest errors on [-100, 100]
  sigmoid 1.79 -> 1.87 ulps, tanh 2.45 -> 2.30)::

      sigmoid(a) = D / (D + E)  (a >= 0),   E / (D + E)  (a < 0),     e^{-|a|} = E / D
      tanh(|t|)  = (D - E) / (D + E),   D - E = D (1 - s) - 2 s r,    e^{-2|t|} = E / D

  ``D - E`` is formed from ``D``, ``s`` and ``r``, not by subtracting the rounded ``E``:
  for ``k = 0`` it is ``-2r`` exactly (``tanh(t) = t`` to rounding down to the tiniest
  ``t``), and for ``k < 0``, ``|2 s r| <= 0.43 D (1 - s)``: at most a bit cancels.

Both are a few ulps relative to the result everywhere (``tests/test_activation_kernels.py``),
the reference's forms (:mod:`bnprop.activations`, with NumPy's ``exp``); they differ only
where the result is subnormal, which the kernels return as 0.

NaN propagates and +-inf saturate, as in NumPy. ``exp_pair``, ``exp_ratio``, ``sigmoid``
and ``tanh`` are compiled with FMA contraction
(:data:`bnprop.kernels._jit.ACTIVATION_JIT_OPTIONS`: the Horner steps fused, 1.4x faster,
the same errors); the derivatives are not (they round as the reference does).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit, types
from numba.extending import overload

from bnprop.kernels._jit import ACTIVATION_JIT_OPTIONS, JIT_OPTIONS

#: Activation codes passed to the kernels (an int, so one compiled kernel serves all four).
SIGMOID, TANH, RELU, IDENTITY = 0, 1, 2, 3
ACTIVATION_CODES = {"sigmoid": SIGMOID, "tanh": TANH, "relu": RELU, "identity": IDENTITY}

# float32 exp: Cephes expf (S. Moshier), ~1 ulp on [-87, 0].
_LOG2E_32 = np.float32(1.44269504088896341)
_LN2_HI_32 = np.float32(0.693359375)  # 8 significant bits: k * _LN2_HI_32 is exact
_LN2_LO_32 = np.float32(-2.12194440e-4)
_EXP_P32 = tuple(np.float32(c) for c in (
    1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3,
    4.1665795894e-2, 1.6666665459e-1, 5.0000001201e-1,
))
_EXP_LO_32 = np.float32(-87.0)  # exp(-87) = 1.6e-38, the smallest normal float32 is 1.2e-38

# float64 exp: FreeBSD msun e_exp.c (Sun Microsystems), its polynomial and reduction.
_LOG2E_64 = 1.44269504088896338700e00
_LN2_HI_64 = 6.93147180369123816490e-01  # 32 significant bits
_LN2_LO_64 = 1.90821492927058770002e-10
_EXP_P64 = (
    1.66666666666666019037e-01, -2.77777777770155933842e-03, 6.61375632143793436117e-05,
    -1.65339022054652515390e-06, 4.13813679705723846039e-08,
)
_EXP_LO_64 = -708.0  # exp(-708) = 3.3e-308, the smallest normal float64 is 2.2e-308


@njit(**ACTIVATION_JIT_OPTIONS)
def exp_pair(x):  # pragma: no cover - compiled
    """``(exp(x), exp(x) - 1)`` for a float32 ``x <= 0`` (or NaN)."""
    # Clamp (NaN goes to the clamp too, so the integer conversion below is defined).
    xc = x if x >= _EXP_LO_32 else _EXP_LO_32
    k = np.floor(xc * _LOG2E_32 + np.float32(0.5))
    r = xc - k * _LN2_HI_32
    r = r - k * _LN2_LO_32
    p0, p1, p2, p3, p4, p5 = _EXP_P32
    p = ((((p0 * r + p1) * r + p2) * r + p3) * r + p4) * r + p5
    w = p * (r * r) + r  # e^r - 1
    y = w + np.float32(1.0)
    scale = np.int32((np.int32(k) + np.int32(127)) << np.int32(23)).view(np.float32)
    e = y * scale
    em1 = w if k == np.float32(0.0) else e - np.float32(1.0)
    if x >= _EXP_LO_32:
        return e, em1
    if x < _EXP_LO_32:
        return np.float32(0.0), np.float32(-1.0)
    return x, x  # NaN


@njit(**ACTIVATION_JIT_OPTIONS)
def exp_ratio(x):  # pragma: no cover - compiled
    """``(E, D, s, r)`` for a float64 ``x`` (clamped to ``[-708, 0]``; a NaN gives finite
    garbage, which the callers replace): ``exp(x) = E / D``, ``D = 2 - c``,
    ``E = s (D + 2r)``, ``s = 2^k``, ``x = k ln2 + r`` (module docstring)."""
    xc = x if x >= _EXP_LO_64 else _EXP_LO_64
    k = np.floor(xc * _LOG2E_64 + 0.5)
    r = (xc - k * _LN2_HI_64) - k * _LN2_LO_64
    t = r * r
    p1, p2, p3, p4, p5 = _EXP_P64
    c = r - t * (p1 + t * (p2 + t * (p3 + t * (p4 + t * p5))))
    D = 2.0 - c
    s = np.int64((np.int64(k) + np.int64(1023)) << np.int64(52)).view(np.float64)
    return s * (D + 2.0 * r), D, s, r


def sigmoid(a, one):  # pragma: no cover - Python stub, compiled through the overload below
    """``1 / (1 + exp(-a))``, a few ulps relative to the result; ``one`` is 1 in a's type."""
    raise NotImplementedError("sigmoid is only callable from Numba-compiled code")


def tanh(a, one):  # pragma: no cover - Python stub, compiled through the overload below
    """``tanh(a)``, a few ulps relative to the result; ``one`` is 1 in a's type."""
    raise NotImplementedError("tanh is only callable from Numba-compiled code")


def _sigmoid32(a, one):  # pragma: no cover - compiled
    e, _ = exp_pair(-abs(a))
    num = one if a >= 0 else e  # a NaN: e is NaN
    return num / (one + e)


def _sigmoid64(a, one):  # pragma: no cover - compiled
    x = -abs(a)
    E, D, _, _ = exp_ratio(x)
    y = (D if a >= 0 else E) / (D + E)
    if x < _EXP_LO_64:  # exp(-|a|) below the normal range: 1 or 0
        return 1.0 if a >= 0 else 0.0
    return y if a == a else a  # NaN stays NaN


def _tanh32(a, one):  # pragma: no cover - compiled
    _, em1 = exp_pair(-(one + one) * abs(a))
    return math.copysign(-em1 / (one + one + em1), a)


def _tanh64(a, one):  # pragma: no cover - compiled
    x = -2.0 * abs(a)
    E, D, s, r = exp_ratio(x)
    y = (D * (1.0 - s) - (s + s) * r) / (D + E)  # tanh(|a|)
    if x < _EXP_LO_64:
        y = 1.0
    return math.copysign(y, a) if a == a else a


@overload(sigmoid, jit_options=ACTIVATION_JIT_OPTIONS)
def _sigmoid_overload(a, one):
    return {types.float32: _sigmoid32, types.float64: _sigmoid64}.get(a)


@overload(tanh, jit_options=ACTIVATION_JIT_OPTIONS)
def _tanh_overload(a, one):
    return {types.float32: _tanh32, types.float64: _tanh64}.get(a)


@njit(**JIT_OPTIONS)
def relu(a, one):
    """``max(a, 0)``; NaN stays NaN, as ``np.maximum``; ``one`` is 1 in a's type."""
    zero = one - one
    return zero if a < zero else a


@njit(**JIT_OPTIONS)
def identity(a, one):
    """``a``."""
    return a


@njit(**JIT_OPTIONS)
def activation_row(act, A, one, Y):
    """``Y[j] = sigma(A[j])`` for one row; ``act`` is an activation code, ``one`` 1 in A's type."""
    n = A.shape[0]
    if act == SIGMOID:
        for j in range(n):
            Y[j] = sigmoid(A[j], one)
    elif act == TANH:
        for j in range(n):
            Y[j] = tanh(A[j], one)
    elif act == RELU:
        for j in range(n):
            Y[j] = relu(A[j], one)
    else:
        for j in range(n):
            Y[j] = A[j]


# ``sigma'(A) * dY`` of one element, from ``Y`` (``one``: 1 in dY's type), formed as
# :mod:`bnprop.activations` forms it. A loop over elements is compiled once per derivative
# (:func:`per_derivative`) and the kernel branches on the code outside it: a branch inside
# the loop keeps LLVM from vectorizing it (the BN backward sums took 3.0 us at 60 x 100
# with a row of derivatives stored first, 1.45 us fused this way). The loops are closures
# over the derivative, not functions taking it as an argument, which Numba cannot cache.
@njit(**JIT_OPTIONS)
def d_sigmoid(y, dy, one):
    """``(Y (1 - Y)) dY``."""
    return (y * (one - y)) * dy


@njit(**JIT_OPTIONS)
def d_tanh(y, dy, one):
    """``(1 - Y Y) dY``."""
    return (one - y * y) * dy


@njit(**JIT_OPTIONS)
def d_relu(y, dy, one):
    """``float(A > 0) dY`` (``Y > 0`` exactly when ``A > 0``)."""
    zero = one - one
    return (one if y > zero else zero) * dy


@njit(**JIT_OPTIONS)
def d_identity(y, dy, one):
    """``1 dY``."""
    return one * dy


def _by_code(make, fns):  # type: ignore[no-untyped-def]
    """``make(f)`` compiled for each of ``fns`` (in the order of the activation codes),
    behind one compiled ``fn(act, *args)`` that runs the one of code ``act``."""
    sig, tanh_, relu_, ident = (njit(**JIT_OPTIONS)(make(f)) for f in fns)

    def by_code(act, *args):  # type: ignore[no-untyped-def]  # pragma: no cover
        if act == SIGMOID:
            sig(*args)
        elif act == TANH:
            tanh_(*args)
        elif act == RELU:
            relu_(*args)
        else:
            ident(*args)
    return njit(**JIT_OPTIONS)(by_code)


def per_derivative(make):  # type: ignore[no-untyped-def]
    """``make(d)`` (a Python function over the derivative ``d``, returning nothing)
    compiled once per activation, behind one compiled ``fn(act, *args)`` that runs the
    one of activation code ``act``."""
    return _by_code(make, (d_sigmoid, d_tanh, d_relu, d_identity))


def per_activation(make):  # type: ignore[no-untyped-def]
    """:func:`per_derivative` over the activations themselves, ``f(a, one)`` of one
    element (:func:`sigmoid`, :func:`tanh`, :func:`relu`, :func:`identity`): a loop
    that forms ``A`` can form ``sigma(A)`` in the same pass."""
    return _by_code(make, (sigmoid, tanh, relu, identity))


def _derivative_loop(d):  # type: ignore[no-untyped-def]
    def loop(dY, Y, one, dA):  # pragma: no cover - compiled
        for j in range(dY.shape[0]):
            dA[j] = d(Y[j], dY[j], one)
    return loop


_derivative_loops = per_derivative(_derivative_loop)


@njit(**JIT_OPTIONS)
def derivative_row(act, dY, Y, one, dA):
    """``dA[j] = sigma'(A[j]) * dY[j]`` for one row, from ``Y``; ``one`` is 1 in dY's type
    (:func:`d_sigmoid`, ...)."""
    _derivative_loops(act, dY, Y, one, dA)


@njit(**JIT_OPTIONS)
def activation_rows(act, A, Y):  # pragma: no cover - compiled
    """``Y = sigma(A)`` over the rows of the C-contiguous ``(m, n)`` ``A`` (an unfused
    activation module on the kernels)."""
    one = np.ones(1, A.dtype)[0]
    for i in range(A.shape[0]):
        activation_row(act, A[i], one, Y[i])


@njit(**JIT_OPTIONS)
def derivative_rows(act, dY, Y, dA):  # pragma: no cover - compiled
    """``dA = sigma'(A) * dY`` over the rows, from ``Y`` (:func:`derivative_row`)."""
    one = np.ones(1, dY.dtype)[0]
    for i in range(dY.shape[0]):
        derivative_row(act, dY[i], Y[i], one, dA[i])
