"""The kernels' on-disk cache read and written under a file lock, one process at a time.

Numba saves a compiled function in its cache folder as an index (which signature is in
which data file) and numbered data files. ``IndexDataCacheFile.save`` reads the index,
takes the first number the index does not use, writes the index, then the data; nothing
stops two processes from doing it at once. Two processes do compile the kernels at once
here: on a cold cache the helper thread's loop is compiled by a second process
(:mod:`bnprop.kernels._warm`) while the first compiles its step, both saving the
functions they compile (the activations, the BN passes) under their own signatures. Two
saves that read the index before either wrote it take the same number: the data file
then holds one signature's code and the index may name it for the other. A later load of
that signature runs the other's code: measured here, a ReLU layer's forward pass applied
no ReLU to the rows the helper computed, and the identity's forward pass failed its test
(a cache shared by runs of two OpenBLAS core types, whose helper loops compiled apart).

So for the kernels' caches (the folders the stamped locators of
:mod:`bnprop.kernels._cache_stamp` give) a save holds an exclusive ``flock`` on
``<index>.lock`` from reading the index to writing the data, and a load a shared one from
reading the index to reading the data: a load never sees a half-made entry, and two
saves never take one number. Other code's caches are untouched. Where the lock file
cannot be made (a read-only folder, which Numba then does not write either) or ``fcntl``
is missing, the calls run as Numba's own.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not on Linux or macOS
    fcntl = None  # type: ignore[assignment]

#: Cache folders of the kernels (``KernelsLocator.get_cache_path`` adds them).
KERNEL_CACHE_PATHS: set[str] = set()


@contextmanager
def locked(index_path: str, exclusive: bool) -> Iterator[None]:
    """Hold ``flock`` on ``index_path + ".lock"`` (exclusive or shared) within the block."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    try:
        fd = os.open(index_path + ".lock", os.O_RDWR | os.O_CREAT, 0o666)
    except OSError:
        yield
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)  # releases the lock


def _locking(base: type) -> type:
    class LockedIndexDataCacheFile(base):  # type: ignore[valid-type, misc]
        """Numba's index and data files; for the kernels' folders under :func:`locked`."""

        def _lock(self, exclusive: bool) -> AbstractContextManager[None]:
            if os.path.abspath(self._cache_path) not in KERNEL_CACHE_PATHS:
                return nullcontext()  # another library's cache: Numba's own calls
            return locked(self._index_path, exclusive)

        def save(self, key: Any, data: Any) -> None:
            with self._lock(exclusive=True):
                super().save(key, data)

        def load(self, key: Any) -> Any:
            with self._lock(exclusive=False):
                return super().load(key)

        def flush(self) -> None:
            with self._lock(exclusive=True):
                super().flush()

    LockedIndexDataCacheFile._bnprop_locked = True
    return LockedIndexDataCacheFile


def install() -> bool:
    """Make Numba's caches use the locking class (once); True when this Numba has it."""
    from numba.core import caching

    base = getattr(caching, "IndexDataCacheFile", None)
    if base is None:
        return False
    if not getattr(base, "_bnprop_locked", False):
        caching.IndexDataCacheFile = _locking(base)
    return True
