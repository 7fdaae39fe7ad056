"""This machine: what it is, and its limits (memory copy bandwidth, BLAS GEMM peak).

Copy bandwidth: ``np.copyto(b, a)`` of a float32 array far larger than the caches, on one
thread and split over :func:`bnprop.threads.map_rows`; bytes moved = read + write =
``2 * a.nbytes``; the median of the repeats. GEMM peak: ``a @ b`` of ``(k, k)`` square
matrices, ``2 k^3`` flops, with NumPy's BLAS on 1 thread and on ``n`` threads; the
fastest of the repeats (a peak: other processes only ever slow a call down).
The load average before and after the run is recorded with the machine: a loaded
machine makes every number of the run noisier.
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprop import threads


def _times(fn: Callable[[], object], repeats: int) -> list[float]:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def describe() -> dict[str, Any]:
    """CPU model, cores, library versions, and the kernels NumPy's OpenBLAS runs: the core
    it chose, and ``OPENBLAS_CORETYPE`` where the environment chose it (what a result
    table must name: on one AMD EPYC its Haswell kernels, set by that variable, ran
    float32 GEMMs at 130 GFLOP/s a core against 237 for the SkylakeX ones it chooses
    itself)."""
    import numba

    first: dict[str, str] = {}  # the first processor's lines of /proc/cpuinfo
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if not sep:
                    break
                first.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = first.get("model name") or platform.processor() or "unknown"
    flags = first["flags"].split() if "flags" in first else None
    blas = "unknown"
    try:
        config = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {}).get("blas", {})
        blas = f"{deps.get('name', '?')} {deps.get('version', '')}".strip()
    except (TypeError, AttributeError):
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas, "blas_core": threads.blas_core(),
            "openblas_coretype": os.environ.get("OPENBLAS_CORETYPE"),
            "avx512": None if flags is None else "avx512f" in flags,
            "numba": numba.__version__}
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    try:
        import jax

        info["jax"] = jax.__version__
    except ImportError:
        info["jax"] = None
    return info


def copy_bandwidth(n_bytes: int, n_threads: int, repeats: int) -> float:
    """Bytes per second of ``np.copyto`` (read + write) on ``n_threads`` row parts."""
    a = np.ones((n_bytes // 4 // 1024, 1024), np.float32)
    b = np.empty_like(a)

    def copy() -> None:
        if n_threads == 1:
            np.copyto(b, a)
        else:
            threads.map_rows(lambda s, e: np.copyto(b[s:e], a[s:e]), a.shape[0], min_rows=1)

    return 2 * a.nbytes / statistics.median(_times(copy, repeats))


def gemm_peak(k: int, blas_threads: int, dtype: Any, repeats: int) -> float:
    """Flops per second of a square ``(k, k) @ (k, k)`` GEMM on ``blas_threads`` threads."""
    rng = np.random.default_rng(0)
    a, b = rng.random((k, k)).astype(dtype), rng.random((k, k)).astype(dtype)
    out = np.empty_like(a)
    with threads.blas_threads_limited(blas_threads):
        t = min(_times(lambda: np.matmul(a, b, out=out), repeats))
    blas_threads_used(blas_threads)
    return 2 * k**3 / t


#: Seconds OpenBLAS's idle workers spin after a call on two or more threads before they
#: sleep (its ``THREAD_TIMEOUT``, 2^28 cycles: 0.09 to 0.12 s measured here), with a
#: margin. A two-thread case started meanwhile shares a core with a spinning worker: the
#: wide step's ``dW_1`` in halves on bnprop's helper took 15.0 ms started 0.09 s after a
#: 2-thread OpenBLAS call, 8.5 ms from 0.12 s on (docs/bench.md).
BLAS_SPIN_SECONDS = 0.2
_spin_ends = 0.0


def blas_threads_used(n: int) -> None:
    """Note that OpenBLAS has just run on ``n`` threads: with two or more, its idle
    workers spin for :data:`BLAS_SPIN_SECONDS` from now."""
    global _spin_ends
    if n > 1:
        _spin_ends = time.monotonic() + BLAS_SPIN_SECONDS


def settle_blas_workers() -> None:
    """Sleep until the workers of the last OpenBLAS call on two or more threads
    (:func:`blas_threads_used`) have stopped spinning; return at once if they have."""
    delay = _spin_ends - time.monotonic()
    if delay > 0:
        time.sleep(delay)


#: A 1-minute load average above this before a run: the machine was not quiet.
BUSY_LOAD = 0.5

#: Below this speed-up of a GEMM on 2 BLAS threads over 1, the two cores ran as one.
CORES_APART = 1.5


def two_core_speedup(k: int = 512, repeats: int = 5) -> float:
    """How much faster a float32 ``(k, k)`` GEMM runs on 2 BLAS threads than on 1 (about 2
    on two cores of their own; about 1 when a VM's two vCPUs share a physical core, which
    a host may do for minutes at a time). About 20 ms, then the wait for OpenBLAS's
    workers to stop spinning (:func:`settle_blas_workers`): the section that follows a
    probe starts with two-thread cases."""
    speedup = gemm_peak(k, 2, np.float32, repeats) / gemm_peak(k, 1, np.float32, repeats)
    settle_blas_workers()
    return speedup


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (``None`` where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (AttributeError, OSError):
        return None
