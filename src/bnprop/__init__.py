"""bnprop: batch-normalized networks with hand-derived, verified backpropagation.

The handout's layer (``docs/math.md`` in the repository derives it)::

    a = gamma * (W o - mu_B) / sqrt(var_B + eps) + beta,    o' = sigma(a)

:func:`layer_forward` computes it for a batch (rows are examples) and
:func:`layer_backward` returns every gradient, exact or with frozen statistics.
"""

from bnprop._validate import InputError
from bnprop.activations import ACTIVATIONS
from bnprop.data.datasets import load_dataset
from bnprop.grading import GradeReport, GradientVerdict, grade
from bnprop.layer import LayerCache, LayerGrads, layer_backward, layer_forward, release_buffers
from bnprop.loss import softmax_cross_entropy
from bnprop.model import MLP, FoldedMLP
from bnprop.optim import SGD, Adam, Schedule

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "MLP",
    "SGD",
    "Adam",
    "FoldedMLP",
    "GradeReport",
    "GradientVerdict",
    "InputError",
    "LayerCache",
    "LayerGrads",
    "Schedule",
    "__version__",
    "grade",
    "layer_backward",
    "layer_forward",
    "load_dataset",
    "release_buffers",
    "softmax_cross_entropy",
]
