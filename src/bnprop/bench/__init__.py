"""``bnprop bench``: bnprop's speed and memory against PyTorch (and JAX), in one process.

One idea per module: :mod:`~bnprop.bench.timing` (interleaved rounds, medians),
:mod:`~bnprop.bench.layer` (the BN layer's forward + backward),
:mod:`~bnprop.bench.step` (train steps), :mod:`~bnprop.bench.machine` (this machine and
its limits), :mod:`~bnprop.bench.memory` (allocation and RSS),
:mod:`~bnprop.bench.report` (the run, the table, the JSON). torch and jax are imported
inside the functions that use them.
"""

from bnprop.bench.report import run, table, write_json

__all__ = ["run", "table", "write_json"]
