"""Arrays on cache lines (bnprop._aligned): bnprop's flat parameters and gradients, and
the helper thread's shared slots."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import _aligned
from bnprop.kernels import _helper_thread, _tasks


def _off_line(a: np.ndarray, offset: int) -> np.ndarray:
    """A copy of ``a`` starting ``offset`` bytes past a cache line."""
    raw = np.zeros(a.nbytes + 2 * _aligned.LINE, np.uint8)
    start = -raw.ctypes.data % _aligned.LINE + offset
    out = raw[start:start + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.uint8])
@pytest.mark.parametrize("shape", [0, 1, 7, 1000, (3, 5), (60, 784), (2, 3, 4)])
def test_zeros_start_on_a_line(dtype: type, shape: int | tuple[int, ...]) -> None:
    for _ in range(5):  # wherever the allocator puts the bytes
        a = _aligned.zeros(shape, dtype)
        assert a.shape == ((shape,) if isinstance(shape, int) else shape)
        assert a.dtype == dtype and a.flags.c_contiguous and a.flags.writeable
        assert _aligned.on_line(a) and a.ctypes.data % 64 == 0
        assert not a.any()
        a[...] = 1  # every element is the array's own
        assert a.sum() == a.size


def test_numpy_integers_give_the_shape() -> None:
    a = _aligned.zeros(np.int64(5), np.float32)
    b = _aligned.zeros((np.intp(2), np.int32(3)), np.float64)
    assert a.shape == (5,) and b.shape == (2, 3) and _aligned.on_line(a) and _aligned.on_line(b)


def test_a_flat_array_is_the_base_of_its_views() -> None:
    """As for an array that owns its memory: FlatBuffers.check_views and the compiled
    step's plan test ``view.base is flat``."""
    flat = _aligned.zeros(100, np.float32)
    assert flat[10:30].base is flat
    assert flat[10:30].reshape(4, 5).base is flat
    assert flat[10:30].reshape(4, 5)[1:].base is flat


def test_on_line_sees_an_offset() -> None:
    a = np.arange(64.0)
    assert not _aligned.on_line(_off_line(a, 16))
    assert _aligned.on_line(_off_line(a, 0))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_flat_parameters_and_gradients_start_on_lines(dtype: str) -> None:
    net = bnprop.MLP([784, 100, 10], dtype=dtype)
    for flats in (net.flat.params, net.flat.grads):
        (flat,) = flats.values()
        assert _aligned.on_line(flat)
    _, W1 = next(iter(net.named_parameters()))
    assert _aligned.on_line(W1)  # the first layer's W is where the flat array starts


def test_the_helpers_slots_sit_on_lines_of_their_own() -> None:
    """The caller's and the helper's slots on separate cache lines (bnprop.kernels._tasks),
    and a free line before and after the array: no other object beside them."""
    ctl = _helper_thread._Helper().ctl
    assert ctl.size == _tasks.SLOTS and ctl.dtype == np.int64 and _aligned.on_line(ctl)
    slots = (_tasks.CLAIM, _tasks.KIND, _tasks.OWNER, _tasks.DONE, _tasks.STATE, _tasks.SEQ,
             _tasks.STOP, _tasks.PARTS)
    lines = {(ctl.ctypes.data + 8 * s) // _aligned.LINE for s in slots}
    assert len(lines) == len(slots)
    base = ctl.base
    before = ctl.ctypes.data - base.ctypes.data
    after = base.ctypes.data + base.nbytes - (ctl.ctypes.data + ctl.nbytes)
    assert before >= _aligned.LINE and after >= _aligned.LINE
