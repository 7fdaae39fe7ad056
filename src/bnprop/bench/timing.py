"""Interleaved timing: every case runs once per round, in turn; the result is a median.

For each round r and case c: one untimed warm call (skipped for calls longer than the
round's budget, which a warm call would double), then ``inner`` timed calls;
``t_rc = median`` of them. The reported time of c is ``median_r t_rc``. Interleaving
means a slow period of the machine hits every case alike, so ratios measured in the same
run stay fair. A short pause before each case lets the previous one's threads (PyTorch's
OpenMP pool spins after work) go idle. A case may run inside a context of its own (the
measured GEMM floor sets OpenBLAS's threads for its calls only): entered for the case's
calls of a round, left before the next case runs.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext

#: Pause before each case of a round, seconds.
PAUSE = 0.03


def calibrate(fn: Callable[[], object], budget: float, max_inner: int = 50) -> int:
    """Timed calls per round so that a round of ``fn`` takes about ``budget`` seconds."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    return max(1, min(max_inner, int(budget / once)))


def interleaved(cases: dict[str, Callable[[], object]], rounds: int,
                budget: float = 0.05,
                contexts: dict[str, Callable[[], AbstractContextManager]] | None = None,
                per_round: dict[str, list[float]] | None = None) -> dict[str, float]:
    """Median seconds per call of each case (module docstring); ``contexts[name]()``, when
    given, is the context that case's calls run in; ``per_round``, when given, receives
    each case's ``t_rc``, round by round."""
    contexts = contexts or {}
    inner = {}
    for name, fn in cases.items():
        with contexts.get(name, nullcontext)():
            inner[name] = calibrate(fn, budget)
    rounds_of: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(rounds):
        for name, fn in cases.items():
            time.sleep(PAUSE)
            with contexts.get(name, nullcontext)():
                if inner[name] > 1:
                    fn()
                times = []
                for _ in range(inner[name]):
                    t0 = time.perf_counter()
                    fn()
                    times.append(time.perf_counter() - t0)
            rounds_of[name].append(statistics.median(times))
    if per_round is not None:
        per_round.update(rounds_of)
    return {name: statistics.median(ts) for name, ts in rounds_of.items()}


def ratio_spread(per_round: dict[str, list[float]], case: str, peer: str) -> list[float]:
    """``[lowest, highest]`` of ``t_r(case) / t_r(peer)`` over the rounds of
    :func:`interleaved`: how far one round's ratio strays from the median's."""
    ratios = [a / b for a, b in zip(per_round[case], per_round[peer], strict=True)]
    return [min(ratios), max(ratios)]
