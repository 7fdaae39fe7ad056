"""Register tiles of a float32 GEMM, written as LLVM vector code: 16 lanes, one FMA each.

Numba has no vector type, and LLVM does not turn a tile of scalar accumulators into
vector registers by itself (measured: 9 to 30 GFLOP/s at ``dW = dZ^T O``, 100 x 784
over 60, where OpenBLAS's kernels give 118 to 212). So the two inner loops of
:mod:`bnprop.kernels.tile_gemm` are emitted here as ``<16 x float>`` code, through
llvmlite, and called from compiled code like functions. Every element of ``C`` is
computed by one fixed chain of operations, whatever tile holds it:

* ``outer_tile(R, V)`` (``C = A B`` and ``C = A^T B``): rows ``r < R`` and ``16 V``
  columns of ``C``, each element ``c = fma(A(r, k), B[k, j], c)`` for ``k = 0 .. K-1``
  in order, from ``c = 0``: the order of a textbook loop, each step rounded once. The
  last vector keeps its first ``last`` lanes (masked loads and stores).
* ``dot_tile(R, S)`` (``C = A B^T``, rows of both along ``K``): ``R x S`` elements,
  each summed in 16 lanes, lane ``l`` over ``k = l, l + 16, ...`` in order by FMA (a
  tail of ``K mod 16`` loaded masked, as zeros), then the 16 lanes added in halves
  (16 -> 8 -> 4 -> 2 -> 1).

A tile's operands are raw addresses (int64) with strides in elements: ``A(r, k)`` at
``a + 4 (r a_rs + k a_ks)``; ``B`` and ``C`` rows ``ldb`` and ``ldc`` apart.
"""

from __future__ import annotations

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

LANES = 16
_F = ir.FloatType()
_V = ir.VectorType(_F, LANES)
_I32, _I64 = ir.IntType(32), ir.IntType(64)
_MASK = ir.VectorType(ir.IntType(1), LANES)


def _const(n: int) -> ir.Constant:
    return ir.Constant(_I64, n)


def _fma(builder: ir.IRBuilder, a, b, c):  # type: ignore[no-untyped-def]
    fn = cgutils.get_or_insert_function(builder.module, ir.FunctionType(_V, [_V] * 3),
                                        "llvm.fma.v16f32")
    return builder.call(fn, [a, b, c])


def _vector_at(builder: ir.IRBuilder, base, offset):  # type: ignore[no-untyped-def]
    """A ``<16 x float>*`` at ``base + 4 offset`` (``base``: a ``float*``)."""
    return builder.bitcast(builder.gep(base, [offset]), _V.as_pointer())


def _load(builder: ir.IRBuilder, base, offset, mask=None):  # type: ignore[no-untyped-def]
    """16 floats from ``base + 4 offset``; with ``mask``, the masked-off lanes are 0 and
    their memory is not read."""
    p = _vector_at(builder, base, offset)
    if mask is None:
        return builder.load(p, align=4)
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(_V, [_V.as_pointer(), _I32, _MASK, _V]),
        "llvm.masked.load.v16f32.p0")
    return builder.call(fn, [p, ir.Constant(_I32, 4), mask, ir.Constant(_V, None)])


def _store(builder: ir.IRBuilder, value, base, offset, mask=None):  # type: ignore[no-untyped-def]
    p = _vector_at(builder, base, offset)
    if mask is None:
        builder.store(value, p, align=4)
        return
    fn = cgutils.get_or_insert_function(
        builder.module, ir.FunctionType(ir.VoidType(), [_V, _V.as_pointer(), _I32, _MASK]),
        "llvm.masked.store.v16f32.p0")
    builder.call(fn, [value, p, ir.Constant(_I32, 4), mask])


def _first_lanes(builder: ir.IRBuilder, n):  # type: ignore[no-untyped-def]
    """The mask of lanes ``< n`` (an i64)."""
    vi64 = ir.VectorType(_I64, LANES)
    splat = builder.shuffle_vector(
        builder.insert_element(ir.Constant(vi64, ir.Undefined), n, ir.Constant(_I32, 0)),
        ir.Constant(vi64, ir.Undefined), ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))
    return builder.icmp_signed("<", ir.Constant(vi64, list(range(LANES))), splat)


def _splat(builder: ir.IRBuilder, x):  # type: ignore[no-untyped-def]
    one = builder.insert_element(ir.Constant(_V, ir.Undefined), x, ir.Constant(_I32, 0))
    return builder.shuffle_vector(one, ir.Constant(_V, ir.Undefined),
                                  ir.Constant(ir.VectorType(_I32, LANES), [0] * LANES))


def _halves_sums(builder: ir.IRBuilder, vs):  # type: ignore[no-untyped-def]
    """The lanes of each of up to 16 vectors added in halves (16 -> 8 -> 4 -> 2 -> 1), as
    one vector of their sums in order. The vectors are reduced together, two elements'
    partial sums sharing a vector at each level (16 vectors of 16 lanes -> 8 of 2 x 8 ->
    4 of 4 x 4 -> 2 of 8 x 2 -> 1 of 16 x 1), a quarter of the instructions of one at a
    time for the same additions; fewer than 16 are padded with zero vectors."""
    vs = vs + [ir.Constant(_V, None)] * (LANES - len(vs))
    size = LANES
    while len(vs) > 1:
        h, n = size // 2, LANES // size  # lanes per element after this level; elements a vector
        lo = [e * size + i for e in range(2 * n) for i in range(h)]
        idx = ir.VectorType(_I32, LANES)
        vs = [builder.fadd(builder.shuffle_vector(x, y, ir.Constant(idx, lo)),
                           builder.shuffle_vector(x, y, ir.Constant(idx, [t + h for t in lo])))
              for x, y in zip(vs[::2], vs[1::2], strict=True)]
        size = h
    return vs[0]


def _floats(builder: ir.IRBuilder, addr):  # type: ignore[no-untyped-def]
    return builder.inttoptr(addr, _F.as_pointer())


_i64 = types.int64


def outer_tile(R: int, V: int):  # type: ignore[no-untyped-def]
    """The compiled ``tile(a, a_rs, a_ks, b, ldb, c, ldc, K, last)``: ``C[r, :16 V] =
    sum_k A(r, k) B[k, :16 V]`` for ``r < R``, one FMA a step in ``k`` order; of the last
    16 columns only the first ``last`` (1 to 16) are read and written."""

    @intrinsic
    def tile(typingctx, a, a_rs, a_ks, b, ldb, c, ldc, K, last):  # type: ignore[no-untyped-def]
        sig = types.void(*([_i64] * 9))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            a, a_rs, a_ks, b, ldb, c, ldc, K, last = args
            a, b, c = _floats(builder, a), _floats(builder, b), _floats(builder, c)
            mask = _first_lanes(builder, last)
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(_V, None))
                    for _ in range(V)] for _ in range(R)]
            with cgutils.for_range(builder, K) as loop:
                k = loop.index
                row = builder.mul(k, ldb)
                bv = [_load(builder, b, builder.add(row, _const(LANES * v)),
                            mask if v == V - 1 else None) for v in range(V)]
                for r in range(R):
                    at = builder.add(builder.mul(_const(r), a_rs), builder.mul(k, a_ks))
                    ar = _splat(builder, builder.load(builder.gep(a, [at])))
                    for v in range(V):
                        builder.store(_fma(builder, ar, bv[v], builder.load(acc[r][v])),
                                      acc[r][v])
            for r in range(R):
                row = builder.mul(_const(r), ldc)
                for v in range(V):
                    _store(builder, builder.load(acc[r][v]), c,
                           builder.add(row, _const(LANES * v)), mask if v == V - 1 else None)
            return context.get_dummy_value()

        return sig, codegen

    return tile


def dot_tile(R: int, S: int):  # type: ignore[no-untyped-def]
    """The compiled ``tile(a, lda, b, ldb, c, ldc, K)``: ``C[r, s] = sum_k A[r, k] B[s, k]``
    for ``r < R``, ``s < S``, in 16 lanes added in halves (module docstring)."""

    @intrinsic
    def tile(typingctx, a, lda, b, ldb, c, ldc, K):  # type: ignore[no-untyped-def]
        sig = types.void(*([_i64] * 7))

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            a, lda, b, ldb, c, ldc, K = args
            a, b, c = _floats(builder, a), _floats(builder, b), _floats(builder, c)
            acc = [[cgutils.alloca_once_value(builder, ir.Constant(_V, None))
                    for _ in range(S)] for _ in range(R)]
            steps = builder.udiv(K, _const(LANES))

            def step(k, mask):  # type: ignore[no-untyped-def]
                av = [_load(builder, a, builder.add(builder.mul(_const(r), lda), k), mask)
                      for r in range(R)]
                bv = [_load(builder, b, builder.add(builder.mul(_const(s), ldb), k), mask)
                      for s in range(S)]
                for r in range(R):
                    for s in range(S):
                        builder.store(_fma(builder, av[r], bv[s], builder.load(acc[r][s])),
                                      acc[r][s])

            with cgutils.for_range(builder, steps) as loop:
                step(builder.mul(loop.index, _const(LANES)), None)
            done = builder.mul(steps, _const(LANES))
            rest = builder.sub(K, done)
            with builder.if_then(builder.icmp_signed(">", rest, _const(0))):
                step(done, _first_lanes(builder, rest))
            sums = _halves_sums(builder, [builder.load(acc[r][s]) for r in range(R)
                                          for s in range(S)])
            v4 = ir.VectorType(_F, 4)
            for r in range(R):  # element r S + s of sums is C[r, s]
                if S == 4:  # a row of 4 at a time
                    row = builder.shuffle_vector(sums, sums, ir.Constant(
                        ir.VectorType(_I32, 4), list(range(4 * r, 4 * r + 4))))
                    at = builder.gep(c, [builder.mul(_const(r), ldc)])
                    builder.store(row, builder.bitcast(at, v4.as_pointer()), align=4)
                    continue
                for s in range(S):
                    at = builder.add(builder.mul(_const(r), ldc), _const(s))
                    builder.store(builder.extract_element(sums, ir.Constant(_I32, r * S + s)),
                                  builder.gep(c, [at]))
            return context.get_dummy_value()

        return sig, codegen

    return tile
