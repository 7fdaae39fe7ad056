"""Atomic loads, stores and compare-and-swap on an int64 array, and raw addresses, for
Numba-compiled code: what two threads need to hand work to each other without a lock.

* ``load_acquire(a, i)``: ``a[i]``, and nothing this thread reads after it is read
  before it (so what the writer stored before its ``store_release`` is seen);
* ``store_release(a, i, v)``: ``a[i] = v``, after everything this thread wrote before it;
* ``cas(a, i, expected, new)``: ``a[i] = new`` if ``a[i] == expected``, atomically (both
  orders); True when it did, so of two threads racing for one value exactly one wins;
* ``pause()``: the spin-wait hint (x86 ``pause``; nothing on other machines);
* ``address(arr)``: the address of ``arr``'s first element, an int64;
  ``f32_at(addr)`` / ``f64_at(addr)``: that address as a typed pointer for a C call.

Sequentially consistent x86 hardware makes the orders cheap (plain moves, ``lock
cmpxchg``); what they buy is that LLVM neither reorders nor hoists these accesses (a plain
load in a spin loop could be read once and never again).
"""

from __future__ import annotations

import platform

from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

_X86 = platform.machine().lower() in ("x86_64", "amd64", "i386", "i686")


def _slot(context, builder, arrty, arr, idx):  # type: ignore[no-untyped-def]
    ary = context.make_array(arrty)(context, builder, arr)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [idx], wraparound=False)


def _check_int64_array(arr: types.Type) -> None:
    if not (isinstance(arr, types.Array) and arr.dtype == types.int64 and arr.ndim == 1):
        raise TypeError("an atomic slot must be in a 1-d int64 array")


@intrinsic
def load_acquire(typingctx, arr, idx):  # type: ignore[no-untyped-def]
    _check_int64_array(arr)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        return builder.load_atomic(ptr, "acquire", 8)

    return types.int64(arr, idx), codegen


@intrinsic
def store_release(typingctx, arr, idx, value):  # type: ignore[no-untyped-def]
    _check_int64_array(arr)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        val = context.cast(builder, args[2], sig.args[2], types.int64)
        builder.store_atomic(val, ptr, "release", 8)
        return context.get_dummy_value()

    return types.void(arr, idx, value), codegen


@intrinsic
def cas(typingctx, arr, idx, expected, new):  # type: ignore[no-untyped-def]
    _check_int64_array(arr)

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        ptr = _slot(context, builder, sig.args[0], args[0], args[1])
        exp = context.cast(builder, args[2], sig.args[2], types.int64)
        new_ = context.cast(builder, args[3], sig.args[3], types.int64)
        pair = builder.cmpxchg(ptr, exp, new_, "acq_rel", "acquire")
        return builder.extract_value(pair, 1)

    return types.boolean(arr, idx, expected, new), codegen


@intrinsic
def pause(typingctx):  # type: ignore[no-untyped-def]
    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        if _X86:
            fn = cgutils.get_or_insert_function(
                builder.module, ir.FunctionType(ir.VoidType(), []), "llvm.x86.sse2.pause")
            builder.call(fn, [])
        return context.get_dummy_value()

    return types.void(), codegen


@intrinsic
def address(typingctx, arr):  # type: ignore[no-untyped-def]
    if not isinstance(arr, types.Array):
        return None

    def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
        data = context.make_array(sig.args[0])(context, builder, args[0]).data
        return builder.ptrtoint(data, ir.IntType(64))

    return types.int64(arr), codegen


def _pointer_at(dtype: types.Type):  # type: ignore[no-untyped-def]
    @intrinsic
    def at(typingctx, addr):  # type: ignore[no-untyped-def]
        ptrty = types.CPointer(dtype)

        def codegen(context, builder, sig, args):  # type: ignore[no-untyped-def]
            val = context.cast(builder, args[0], sig.args[0], types.int64)
            return builder.inttoptr(val, context.get_value_type(ptrty))

        return ptrty(addr), codegen

    return at


f32_at = _pointer_at(types.float32)
f64_at = _pointer_at(types.float64)
