"""Two processes saving kernels into one Numba cache at once keep every signature's own
code (kernels/_cache_lock.py): Numba's own save numbers data files from the index it
read, so two concurrent saves could take one number and a later load run another
signature's code."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from numba.core import caching

from bnprop.kernels import _cache_lock, _cache_stamp

SAVER = """
import os, sys, time
from numba.core import caching
import bnprop.kernels._jit  # installs the stamped locators and the locking cache files
from bnprop.kernels import _cache_lock
path, who, n, start = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
_cache_lock.KERNEL_CACHE_PATHS.add(os.path.abspath(path))
cache = caching.IndexDataCacheFile(cache_path=path, filename_base="f", source_stamp="s")
while time.time() < start:
    pass
for i in range(n):
    cache.save((who, i), (who, i))
"""


@pytest.mark.skipif(_cache_lock.fcntl is None, reason="needs fcntl")
def test_concurrent_saves_keep_every_entry_and_its_own_data(tmp_path: Path) -> None:
    """Without the lock (measured: 2 x 150 saves at once) 130 entries were lost and 14 of
    the 170 left loaded the other process's data; with it, all 300 load their own."""
    n, start = 150, time.time() + 2.0
    env = {**os.environ}
    procs = [subprocess.Popen([sys.executable, "-c", SAVER, str(tmp_path), who, str(n),
                               str(start)], env=env) for who in ("a", "b")]
    for p in procs:
        assert p.wait(timeout=120) == 0
    assert caching.IndexDataCacheFile._bnprop_locked
    cache = caching.IndexDataCacheFile(cache_path=str(tmp_path), filename_base="f",
                                       source_stamp="s")
    _cache_lock.KERNEL_CACHE_PATHS.add(os.path.abspath(tmp_path))
    try:
        index = cache._load_index()
        assert sorted(index) == sorted((who, i) for who in ("a", "b") for i in range(n))
        assert all(cache.load(key) == key for key in index)
        assert len(set(index.values())) == 2 * n  # one data file each
    finally:
        _cache_lock.KERNEL_CACHE_PATHS.discard(os.path.abspath(tmp_path))


def test_only_the_kernels_folders_are_locked(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    taken: list[tuple[str, bool]] = []
    real = _cache_lock.locked

    def spy(index_path: str, exclusive: bool):  # type: ignore[no-untyped-def]
        taken.append((os.path.basename(index_path), exclusive))
        return real(index_path, exclusive)

    monkeypatch.setattr(_cache_lock, "locked", spy)
    other = caching.IndexDataCacheFile(cache_path=str(tmp_path), filename_base="g",
                                       source_stamp="s")
    other.save("k", 1)
    assert other.load("k") == 1 and taken == []  # another library's cache: Numba's own
    monkeypatch.setattr(_cache_lock, "KERNEL_CACHE_PATHS", {os.path.abspath(tmp_path)})
    other.save("k2", 2)
    assert other.load("k2") == 2
    assert taken == [("g.nbi", True), ("g.nbi", False)]
    assert (tmp_path / "g.nbi.lock").exists()


def test_the_kernels_cache_folder_is_registered() -> None:
    from bnprop.kernels import _moments  # any cached kernel: its cache was set up

    assert _cache_stamp.INSTALLED
    path = _moments._moments._cache._cache_path
    assert os.path.abspath(path) in _cache_lock.KERNEL_CACHE_PATHS
    assert isinstance(_moments._moments._cache._cache_file, caching.IndexDataCacheFile)
