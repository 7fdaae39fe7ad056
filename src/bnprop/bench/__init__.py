"""``bnprop bench``: bnprop's speed and memory against PyTorch (and JAX), in one process.

One idea per module: :mod:`~bnprop.bench.timing` (interleaved rounds, medians),
:mod:`~bnprop.bench.layer` (the BN layer's forward + backward),
:mod:`~bnprop.bench.step` (train steps), :mod:`~bnprop.bench.machine` (this machine and
its limits), :mod:`~bnprop.bench.memory` (allocation and RSS),
:mod:`~bnprop.bench.report` (the run, the table, the JSON). torch and jax are imported
inside the functions that use them.
"""

from typing import Any

__all__ = ["run", "table", "write_json"]


def __getattr__(name: str) -> Any:
    """``run``, ``table``, ``write_json`` of :mod:`~bnprop.bench.report`, imported on first
    use, so that each benchmark module imports on its own."""
    if name in __all__:
        from bnprop.bench import report

        return getattr(report, name)
    raise AttributeError(f"module 'bnprop.bench' has no attribute {name!r}")
