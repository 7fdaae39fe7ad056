"""Memory of the public training step: allocation after warm-up (tracemalloc) and peak RSS.

After ``warmup`` steps, tracemalloc (which sees NumPy's array allocations) records::

    growth          = traced bytes after ``steps`` more steps - traced bytes before them
    per_step_peak   = max over steps of (peak traced bytes within the step - bytes before it)

``growth`` is what the step keeps (0 for a step without leaks or caches growing);
``per_step_peak`` what it allocates and frees again within a step (temporaries).
Peak RSS is the process's (``getrusage``), whatever ran before in it.
"""

from __future__ import annotations

import resource
import sys
import tracemalloc
from typing import Any

import numpy as np

import bnprop


def step_allocations(sizes: tuple[int, ...], m: int, dtype: Any, *, warmup: int,
                     steps: int) -> dict[str, int]:
    """``{"growth": bytes, "per_step_peak": bytes}`` of ``steps`` calls of
    ``MLP.train_step`` with SGD (module docstring)."""
    rng = np.random.default_rng(0)
    X, y = rng.random((m, sizes[0])).astype(dtype), rng.integers(0, sizes[-1], m)
    net, opt = bnprop.MLP(sizes, dtype=np.dtype(dtype).name), bnprop.SGD(0.01)
    for _ in range(warmup):
        net.train_step(X, y, opt)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        per_step = 0
        for _ in range(steps):
            start = tracemalloc.get_traced_memory()[0]
            tracemalloc.reset_peak()
            net.train_step(X, y, opt)
            per_step = max(per_step, tracemalloc.get_traced_memory()[1] - start)
        growth = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    return {"growth": int(growth), "per_step_peak": int(per_step)}


def peak_rss() -> int:
    """Peak resident set size of this process, bytes."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)
