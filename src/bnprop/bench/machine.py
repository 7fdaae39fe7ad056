"""This machine: what it is, and its limits (memory copy bandwidth, BLAS GEMM peak).

Copy bandwidth: ``np.copyto(b, a)`` of a float32 array far larger than the caches, on one
thread and split over :func:`bnprop.threads.map_rows`; bytes moved = read + write =
``2 * a.nbytes``. GEMM peak: ``a @ b`` of ``(k, k)`` square matrices, ``2 k^3`` flops,
with OpenBLAS on 1 thread and on ``n`` threads.

The BN kernels' bandwidth: the four serial kernels of one exact forward + backward over
``(m, n)`` arrays read or write ``11 m n`` elements in all::

    moments 1 (Z) + forward_apply 3 (Z, Obar, Y) + backward_sums 3 (dY, Y, Obar)
      + backward_apply 4 (dY, Y, Obar, dZ)

and bytes / second is compared with the one-thread copy bandwidth (they are serial too).
"""

from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from bnprop import kernels as bnk
from bnprop import threads

#: Elements touched by one exact BN forward + backward, per (m, n) element (docstring).
BN_PASSES = 11


def _best(fn: Callable[[], object], repeats: int) -> float:
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def describe() -> dict[str, Any]:
    """CPU model, cores, library versions (what a result table must name)."""
    import numba

    model = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    blas = "unknown"
    try:
        config = np.show_config(mode="dicts")
        deps = config.get("Build Dependencies", {}).get("blas", {})
        blas = f"{deps.get('name', '?')} {deps.get('version', '')}".strip()
    except (TypeError, AttributeError):
        pass
    info = {"cpu": model, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__, "blas": blas, "numba": numba.__version__}
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

    return 2 * a.nbytes / _best(copy, repeats)


def gemm_peak(k: int, blas_threads: int, dtype: Any, repeats: int) -> float:
    """Flops per second of a square ``(k, k) @ (k, k)`` GEMM on ``blas_threads`` threads."""
    rng = np.random.default_rng(0)
    a, b = rng.random((k, k)).astype(dtype), rng.random((k, k)).astype(dtype)
    out = np.empty_like(a)
    with threads.blas_threads_limited(blas_threads):
        t = _best(lambda: np.matmul(a, b, out=out), repeats)
    return 2 * k**3 / t


def bn_kernel_bandwidth(m: int, n: int, dtype: Any, repeats: int) -> tuple[float, float]:
    """``(bytes per second, seconds)`` of the serial BN kernels' forward + backward."""
    rng = np.random.default_rng(0)
    Z0 = rng.standard_normal((m, n)).astype(dtype)
    dY0 = rng.standard_normal((m, n)).astype(dtype)
    Z, dY = Z0, dY0
    Obar, Y, dZ = np.empty_like(Z0), np.empty_like(Z0), np.empty_like(Z0)
    gamma, beta = np.ones(n, dtype), np.zeros(n, dtype)
    mean, M2 = np.empty(n), np.empty(n)
    sum_G, sum_GObar = np.empty(n), np.empty(n)

    def passes() -> None:
        count, _, _ = bnk.moments(Z, mean=mean, M2=M2)
        inv_std = 1.0 / np.sqrt(M2 / count + 1e-5)
        bnk.forward_apply(Z, mean, inv_std, gamma, beta, activation="sigmoid", Obar=Obar, Y=Y)
        bnk.backward_sums(dY, Y, Obar, activation="sigmoid", sum_G=sum_G, sum_GObar=sum_GObar)
        bnk.backward_apply(dY, Y, Obar, gamma, inv_std, sum_G, sum_GObar, count,
                           activation="sigmoid", dZ=dZ)

    t = _best(passes, repeats)
    return BN_PASSES * m * n * np.dtype(dtype).itemsize / t, t
