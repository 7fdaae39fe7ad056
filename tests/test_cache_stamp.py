"""A change to any kernel file makes every kernel's Numba cache stale (kernels/_cache_stamp.py):
a compiled function carries the code of the functions it calls from other files."""

from __future__ import annotations

import importlib
import os
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from numba.core.dispatcher import Dispatcher

import bnprop.kernels
from bnprop.kernels import _cache_stamp


def test_the_stamp_follows_the_content_of_every_file(tmp_path: Path) -> None:
    (tmp_path / "a.py").write_text("x = 1\n")
    (tmp_path / "b.py").write_text("y = 2\n")
    (tmp_path / "notes.txt").write_text("not code\n")
    first = _cache_stamp.kernels_stamp(str(tmp_path))
    assert _cache_stamp.kernels_stamp(str(tmp_path)) == first
    (tmp_path / "notes.txt").write_text("still not code\n")
    assert _cache_stamp.kernels_stamp(str(tmp_path)) == first
    (tmp_path / "b.py").write_text("y = 3\n")  # same size, another content
    os.utime(tmp_path / "b.py", ns=(1, 1))
    second = _cache_stamp.kernels_stamp(str(tmp_path))
    assert second != first
    (tmp_path / "c.py").write_text("")
    assert _cache_stamp.kernels_stamp(str(tmp_path)) not in (first, second)


def test_every_cached_kernel_is_stamped_with_the_whole_folder() -> None:
    assert _cache_stamp.INSTALLED
    found = 0
    for info in pkgutil.iter_modules(bnprop.kernels.__path__):
        module = importlib.import_module(f"bnprop.kernels.{info.name}")
        for obj in vars(module).values():
            if isinstance(obj, Dispatcher) and obj.__module__ == module.__name__:
                locator = obj._cache._impl.locator
                assert type(locator).__name__.startswith("Kernels"), obj
                assert locator.get_source_stamp()[1] == _cache_stamp.kernels_stamp()
                found += 1
    assert found > 30


_PROBE = """
import numpy as np
from bnprop.kernels import loss
loss.labels_in_range(np.arange(3), 5)
stats = loss.labels_in_range.stats
print(sum(stats.cache_hits.values()), sum(stats.cache_misses.values()))
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX paths")
def test_editing_another_kernel_file_recompiles_a_cached_function(tmp_path: Path) -> None:
    """The failure it prevents: a cached function kept another file's old code."""
    package = Path(bnprop.__file__).parent
    shutil.copytree(package, tmp_path / "bnprop",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    env.pop("NUMBA_CACHE_DIR", None)

    def run() -> str:
        out = subprocess.run([sys.executable, "-c", _PROBE], env=env, capture_output=True,
                             text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        return out.stdout.split()

    assert run() == ["0", "1"]  # compiled and written
    assert run() == ["1", "0"]  # loaded
    with open(tmp_path / "bnprop" / "kernels" / "_finite.py", "a") as f:
        f.write("# another file of the folder changes\n")
    assert run() == ["0", "1"]  # stale: compiled again
    assert run() == ["1", "0"]
