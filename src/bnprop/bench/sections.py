"""A bench section measured while the two cores are apart, or measured again.

The targets are set for two threads on two cores. A VM's host can put its two vCPUs on
one physical core for seconds to minutes; a section measured then times every two-thread
side at up to half speed, bnprop's most (its threads hand work to each other many times a
step), and its ratios are not those of two cores: in one run of 2026-11-30 the float64
wide step took 223 ms against PyTorch's 112 and its own GEMMs' 84, where runs on two
cores give 70-73 against 70-73.

So each section is bracketed by :func:`bnprop.bench.machine.two_core_speedup` (about
20 ms each), and when either probe is below :data:`~bnprop.bench.machine.CORES_APART`
the section's results are dropped and it is measured again, at most ``retries`` times;
the last attempt is kept whatever its probes say (the table then warns). The choice
looks at the probes only, never at the ratios, so it cannot pick a lucky measurement.

Each attempt is one entry of ``machine.two_core_speedup``::

    {"before": section, "speedup": x, "speedup_after": y, "attempt": k, "kept": bool}
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from bnprop.bench.machine import CORES_APART

#: The lists a section appends to, cut back to their length before a dropped attempt.
#: (A section's other results, ``train_job`` and ``cnn_phases``, are set anew by the
#: next attempt.)
APPENDED = ("comparisons", "unavailable")


def apart(entry: dict[str, Any]) -> bool:
    """Whether both probes of a section's attempt found the two cores apart."""
    return min(entry["speedup"], entry.get("speedup_after", entry["speedup"])) >= CORES_APART


def run_section(out: dict[str, Any], name: str, run: Callable[[], None], *,
                probe: Callable[[], float], retries: int,
                log: Callable[[str], None]) -> None:
    """``run()`` (which adds its results to ``out``) between two probes, and again while a
    probe finds the cores ran as one, at most ``retries`` more times (module docstring).
    The first attempt's ``compile_s`` entries are kept: they time the first (compiling)
    calls, which a later attempt no longer makes."""
    probes = out["machine"]["two_core_speedup"]
    compile_s: dict[str, float] | None = None
    for attempt in range(1, retries + 2):
        marks = {key: len(out[key]) for key in APPENDED}
        entry: dict[str, Any] = {"before": name, "speedup": round(probe(), 2)}
        run()
        entry.update(speedup_after=round(probe(), 2), attempt=attempt, kept=True)
        probes.append(entry)
        if compile_s is None:
            compile_s = dict(out["compile_s"])
        if apart(entry) or attempt > retries:
            break
        entry["kept"] = False
        log(f"bench: the two cores ran as one around the {name} section (x{entry['speedup']} "
            f"before, x{entry['speedup_after']} after; below x{CORES_APART}): measuring it "
            "again")
        for key, n in marks.items():
            del out[key][n:]
    out["compile_s"].update(compile_s or {})
