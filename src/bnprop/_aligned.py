"""Arrays that start on a 64-byte cache line.

OpenBLAS's small-matrix kernels, which compute the GEMMs of a small batch without
packing them (:mod:`bnprop.kernels.small_gemm`), load each row of an operand with 64-byte
vector loads where it starts. A row that is off a cache line splits every load over two
lines. NumPy gives 16-byte alignment, so where an array started decided a step's speed
from one process to the next. Measured (float32, ``Z = X W^T``, 60 x 784 -> 100 in the
small kernel's column blocks, one thread): 73.6 us with ``X`` and ``W`` on lines, 78-80
with ``W`` off, 91 with ``X`` off, 109-111 with both off; the same bits in every case.

So a :class:`~bnprop.nn.Sequential`'s flat parameters and gradients start on a line
(:class:`bnprop.nn.plan.FlatBuffers`), and with them the first layer's ``W``: the Ioffe
step (SGD, 2 threads, six processes of each code, alternating; this and the helper's
slots below) went from 241.5 to 235 us (medians) with its batch on a line, and from 256.5
to 249.5 us with it off one. Copying a batch that is off a line onto one did not pay on
two threads (245 -> 253 us): the helper thread then reads the copy from the other core's
cache. The helper's shared slots (:mod:`bnprop.kernels._tasks`) start on a line too, so
that each sits on its own line as laid out.

:func:`zeros` gives such an array, in memory NumPy allocates (so that a large one gets
the transparent huge pages NumPy asks the kernel for: the wide float64 net's 23 MB flat
arrays in a ``bytearray``'s memory slowed its step's update by 0.6-2.3 ms). The array is
the base of every view of it (``view.base is a``), as an array that owns its memory is.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

#: Bytes of a cache line (x86-64 and most ARM cores).
LINE = 64


def zeros(shape: int | np.integer | Sequence[int], dtype: np.dtype | type) -> np.ndarray:
    """A zero-filled C-contiguous array of ``shape`` whose first element starts on a
    cache line (:data:`LINE`)."""
    dt = np.dtype(dtype)
    dims = (int(shape),) if isinstance(shape, int | np.integer) else tuple(map(int, shape))
    count = math.prod(dims)
    raw = np.zeros(count * dt.itemsize + LINE, np.uint8)  # NumPy's memory: its huge pages
    start = -raw.ctypes.data % LINE
    flat = np.frombuffer(memoryview(raw), dt, count=count, offset=start)
    return flat if len(dims) == 1 else flat.reshape(dims)


def on_line(a: np.ndarray) -> bool:
    """Whether ``a``'s first element starts on a cache line."""
    return a.__array_interface__["data"][0] % LINE == 0
