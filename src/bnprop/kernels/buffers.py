"""Large arrays handed out again once nothing holds them: no page faults on every call.

A fresh ``np.empty`` of 64 MB is mapped from the OS and faulted in page by page on its
first write: measured on the project's 2-core machine, filling a fresh 64 MB float32
array took 8.6 ms against 3.0 ms for one already in use. The public layer functions
return six ``(m, n)`` arrays per forward + backward (``Z, Obar, A, Y`` and ``dA, dZ``),
so at 65536 x 256 the faults alone cost ~34 ms, about PyTorch's whole budget for it.

:class:`Pool` keeps every large array it allocated and hands one out again only when
nothing else refers to it: its reference count (:func:`sys.getrefcount`) shows only the
pool's own references. An array a caller still holds, directly, through a view (a view
refers to its base), through a ``LayerCache`` or a ``torch.from_numpy`` tensor, is never
reused. So the numbers a caller holds never change behind its back; they are only
recycled after the caller let go of them.

Memory: arrays smaller than :data:`MIN_BYTES` are not pooled (the allocator reuses those
by itself). Free arrays beyond ``max_bytes`` pooled in all are released, oldest first;
:func:`clear` releases every free one (``bnprop.layer.release_buffers``). The shared
pool keeps :data:`MAX_BYTES`: an eighth of the machine's memory, at least 1 GiB. With
1 GiB, calls that alternate between layers of 65536 rows in float32 and float64 (1.9 GB
of arrays in all) released each other's arrays: measured, 65536 x 16 -> 256 float32 took
83-89 ms instead of 38-40 ms in two rounds of five after the larger calls.
"""

from __future__ import annotations

import math
import os
import sys
import threading
from collections.abc import Sequence

import numpy as np

#: Arrays below this size are allocated plainly (the C allocator keeps such blocks).
MIN_BYTES = 1 << 20


def _pool_bytes(physical: int | None) -> int:
    """An eighth of ``physical`` bytes of memory, at least 1 GiB (1 GiB when unknown)."""
    return max(1 << 30, (physical or 0) // 8)


def _physical_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system that says
        return None


#: Bytes of arrays the shared pool keeps; free arrays beyond it are released.
MAX_BYTES = _pool_bytes(_physical_bytes())

# References to an array in the pool's list while it is tested: the list, the loop
# variable and getrefcount's own argument.
_POOL_REFS = 3


class Pool:
    """Reusable ``np.empty`` for large arrays (module docstring).

    Parameters
    ----------
    max_bytes : int
        Pooled bytes (in use or free) above which free arrays are released.
    """

    def __init__(self, max_bytes: int = MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self._arrays: list[np.ndarray] = []  # oldest first
        self._lock = threading.Lock()

    @property
    def nbytes(self) -> int:
        """Bytes of every array the pool keeps, in use or free."""
        return sum(a.nbytes for a in self._arrays)

    def empty(self, shape: Sequence[int], dtype: np.dtype | type) -> np.ndarray:
        """An uninitialized C-contiguous array: a free pooled one of this shape and dtype,
        else a new one (kept in the pool when it has at least :data:`MIN_BYTES`)."""
        dt = np.dtype(dtype)
        if math.prod(shape) * dt.itemsize < MIN_BYTES:
            return np.empty(shape, dt)
        shape = tuple(int(s) for s in shape)
        with self._lock:
            for arr in self._arrays:
                if arr.shape == shape and arr.dtype == dt and sys.getrefcount(arr) == _POOL_REFS:
                    return arr
            arr = np.empty(shape, dt)
            self._arrays.append(arr)
            self._trim()
            return arr

    def _trim(self) -> None:
        """Release free arrays, oldest first, while the pool holds more than ``max_bytes``."""
        total = self.nbytes
        i = 0
        while total > self.max_bytes and i < len(self._arrays):
            arr = self._arrays[i]
            if sys.getrefcount(arr) == _POOL_REFS:
                total -= arr.nbytes
                del self._arrays[i]
            else:
                i += 1
            del arr

    def clear(self) -> None:
        """Release every free array (those still held elsewhere stay with their holders)."""
        with self._lock:
            self._arrays = [a for a in self._arrays if sys.getrefcount(a) > _POOL_REFS]


#: The pool of the public layer functions.
shared = Pool()


def clear() -> None:
    """Release the free arrays of the shared pool."""
    shared.clear()
