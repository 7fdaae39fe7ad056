"""Numba's on-disk cache of the kernels, made stale by a change to any kernel file.

Numba keys a cached function on its own source file only (its content hash, or its size
and time on older Numba), but a compiled function carries the code of every compiled
function it calls, from whatever file. So a change to ``_tasks.py`` alone left the
helper thread's loop (``_helper_thread.py``) running the old task code: measured, a new
task kind (the forward BN rows) was read as an optimizer update, the rows were never
written, and the step's numbers changed with no error. Here every cached function of
this folder is stamped with its own file's stamp and :func:`kernels_stamp`: a change to
any ``.py`` file of ``bnprop/kernels`` recompiles them all on their next load. So does a
change of what the kernels take from the process at compile time (:func:`_constants`).

Mechanism: Numba picks a cache locator from ``CacheImpl._locator_classes`` (a class
attribute, read by each cached function when it is decorated); :func:`install` puts in
front a subclass of each source-file locator that claims this folder's files only and
extends their stamp. Other code's caches are untouched. On a Numba without these
classes :func:`install` does nothing and returns False (the tests check it is True here).
"""

from __future__ import annotations

import functools
import hashlib
import os
from typing import Any

from bnprop.kernels import _cache_lock

KERNELS_DIR = os.path.dirname(os.path.abspath(__file__))


@functools.lru_cache(maxsize=8)
def _digest(files: tuple[tuple[str, int, int], ...], folder: str) -> str:
    h = hashlib.sha256()
    for name, _, _ in files:
        with open(os.path.join(folder, name), "rb") as f:
            h.update(name.encode() + b"\0" + f.read() + b"\0")
    return h.hexdigest()


def kernels_stamp(folder: str = KERNELS_DIR) -> str:
    """A SHA-256 of the names and contents of the ``.py`` files of ``folder``, computed
    again only when one's size or modification time changes."""
    files = []
    with os.scandir(folder) as entries:
        for e in entries:
            if e.name.endswith(".py") and e.is_file():
                st = e.stat()
                files.append((e.name, st.st_size, st.st_mtime_ns))
    return _digest(tuple(sorted(files)), folder)


def _constants() -> tuple[object, ...]:
    """What the kernels fix at compile time from this process: whether the GEMMs take
    the small-matrix blocks (:data:`bnprop.kernels._cblas.SMALL_NT`, from the BLAS core)
    and bnprop's own tiles (:data:`bnprop.kernels._cblas.TILES`, from the CPU)."""
    from bnprop.kernels.small_gemm import enabled
    from bnprop.kernels.tile_rule import enabled as tiles

    return (enabled(), tiles())


def _stamped(base: type) -> type:
    class KernelsLocator(base):  # type: ignore[valid-type, misc]
        """``base``'s cache place for a kernel file, stamped with every kernel file."""

        def get_source_stamp(self) -> Any:
            return (super().get_source_stamp(), kernels_stamp(), _constants())

        def get_cache_path(self) -> str:
            path = super().get_cache_path()
            _cache_lock.KERNEL_CACHE_PATHS.add(os.path.abspath(path))  # saved under a lock
            return path

        @classmethod
        def from_function(cls, py_func: Any, py_file: str) -> Any:
            if os.path.dirname(os.path.abspath(py_file)) != KERNELS_DIR:
                return None
            return super().from_function(py_func, py_file)

    KernelsLocator.__name__ = KernelsLocator.__qualname__ = f"Kernels{base.__name__}"
    return KernelsLocator


def install() -> bool:
    """Put the stamped locators first (once), their folders read and written under a lock
    (:mod:`bnprop.kernels._cache_lock`); True when this Numba has the classes."""
    from numba.core import caching

    impl = getattr(caching, "CacheImpl", None) or getattr(caching, "_CacheImpl", None)
    names = ("UserProvidedCacheLocator", "InTreeCacheLocator", "UserWideCacheLocator")
    bases = [getattr(caching, n, None) or getattr(caching, "_" + n, None) for n in names]
    if impl is None or None in bases or not isinstance(getattr(impl, "_locator_classes",
                                                               None), list):
        return False
    if not _cache_lock.install():
        return False
    if not any(getattr(c, "_bnprop_kernels", False) for c in impl._locator_classes):
        stamped = [_stamped(b) for b in bases]
        for c in stamped:
            c._bnprop_kernels = True
        impl._locator_classes[:0] = stamped
    return True


INSTALLED = install()
