"""bnprop: batch-normalized networks with hand-derived, verified backpropagation.

The handout's layer (``../shared/MATH.md`` gives the notation)::

    a = gamma * (W o - mu_B) / sqrt(var_B + eps) + beta,    o' = sigma(a)

:func:`layer_forward` computes it for a batch (rows are examples) and
:func:`layer_backward` returns every gradient, exact or with frozen statistics.
"""

from bnprop._validate import InputError
from bnprop.activations import ACTIVATIONS
from bnprop.layer import LayerCache, LayerGrads, layer_backward, layer_forward

__version__ = "0.1.0"

__all__ = [
    "ACTIVATIONS",
    "InputError",
    "LayerCache",
    "LayerGrads",
    "__version__",
    "layer_backward",
    "layer_forward",
]
