"""The folded inference MLP: every BN merged into the linear map before it.

``FoldedMLP`` computes ``O <- sigma(O W_l^T + b_l)`` per hidden layer, then the output
layer and the softmax; :meth:`bnprop.model.MLP.fold` builds it with
``W_fold = diag(gamma / sqrt(running_var + eps)) W`` and
``b_fold = beta - gamma * running_mean / sqrt(running_var + eps)``.
"""

from __future__ import annotations

import numpy as np

from bnprop._validate import check_array
from bnprop.activations import get_activation
from bnprop.kernels.activations import ACTIVATION_CODES, activation_rows
from bnprop.loss import check_labels
from bnprop.nn.convert import blocked_proba
from bnprop.nn.module import check_backend


class FoldedMLP:
    """Inference network of :meth:`MLP.fold`: ``O <- sigma(O W_l^T + b_l)``, then softmax.

    Parameters
    ----------
    layers : list of (W, b)
        Hidden layers (BN folded in) then the output layer, ``W`` (n_out, n_in).
    activation : str
        Activation of the hidden layers.
    backend : {"numba", "numpy"}, default="numba"
        The activation's kernel, or the NumPy reference (as the net it was folded from).
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], *, activation: str,
                 backend: str = "numba") -> None:
        self.layers = layers
        self.activation = get_activation(activation).name
        self.backend = check_backend(backend)

    @property
    def sizes(self) -> tuple[int, ...]:
        return (self.layers[0][0].shape[1], *(W.shape[0] for W, _ in self.layers))

    @property
    def dtype(self) -> np.dtype:
        return self.layers[0][0].dtype

    def _logits(self, X: np.ndarray) -> np.ndarray:
        act = get_activation(self.activation)
        O = X
        for W, b in self.layers[:-1]:
            Z = O @ W.T + b  # a fresh C-contiguous array
            if self.backend == "numba":  # the kernel of the net's activation modules
                activation_rows(ACTIVATION_CODES[self.activation], Z, Z)
                O = Z
            else:
                O = act.forward(Z)
        W, b = self.layers[-1]
        return O @ W.T + b

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities (m, n_classes), in blocks, in the net's dtype."""
        X = check_array(X, "X", ndim=2, axes=("m", "n_features"),
                        shape=(None, self.sizes[0]), dtype=self.dtype)
        return blocked_proba(self._logits, X, self.sizes[-1])

    def predict(self, X: object) -> np.ndarray:
        """Predicted labels, int64 (m,)."""
        return self.predict_proba(X).argmax(axis=1)

    def accuracy(self, X: object, y: object) -> float:
        """Fraction of rows whose predicted label equals ``y``."""
        pred = self.predict(X)
        y = check_labels(y, "y", pred.shape[0], self.sizes[-1])
        return float(np.mean(pred == y)) if pred.shape[0] else float("nan")
