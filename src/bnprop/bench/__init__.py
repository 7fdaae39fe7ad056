"""``bnprop bench``: bnprop's public API against PyTorch eager and JAX jit, in one process.

One idea per module: :mod:`~bnprop.bench.timing` (interleaved rounds, medians),
:mod:`~bnprop.bench.layer` (``layer_forward`` + ``layer_backward``),
:mod:`~bnprop.bench.step` (``MLP.train_step``), :mod:`~bnprop.bench.jax_peer` (the
jitted JAX step, XLA's threads), :mod:`~bnprop.bench.job` (the default ``bnprop train``
job in steps per second), :mod:`~bnprop.bench.floor` (GEMM flops and floors),
:mod:`~bnprop.bench.shape_floor` (the measured floor: a case's own GEMMs, timed),
:mod:`~bnprop.bench.machine` (this machine and its limits), :mod:`~bnprop.bench.memory`
(allocation and RSS), :mod:`~bnprop.bench.targets` (MET / MISSED / BLOCKED),
:mod:`~bnprop.bench.cnn` (the CNN step and its phases), :mod:`~bnprop.bench.report`
(the run, the JSON), :mod:`~bnprop.bench.table` (Markdown).
torch and jax are imported inside the functions that use them.
"""

from bnprop.bench.report import run, write_json
from bnprop.bench.table import table

__all__ = ["run", "table", "write_json"]
