"""Element-wise activations ``Y = sigma(A)`` and their local backward step.

Handout part (1): ``J_o(a) = diag(sigma'(a))``, so the backward step is element-wise,

    dA = sigma'(A) * dY                                              (m, n_out)

Each derivative is written from the stored output ``Y`` where the formula allows
(sigmoid, tanh), so backward recomputes nothing:

    sigmoid   Y = 1 / (1 + exp(-A))     sigma'(A) = Y (1 - Y)
    tanh      Y = tanh(A)               sigma'(A) = 1 - Y^2
    relu      Y = max(A, 0)             sigma'(A) = 1[A > 0]   (0 at A = 0, as PyTorch)
    identity  Y = A                     sigma'(A) = 1
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnprop._validate import check_choice


def _sigmoid(A: np.ndarray) -> np.ndarray:
    # 1 / (1 + exp(-A)) = (1 + tanh(A / 2)) / 2: no overflow for any A.
    Y = np.tanh(A * 0.5)
    Y += 1
    Y *= 0.5
    return Y


def _sigmoid_derivative(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return Y * (1 - Y)


def _tanh_derivative(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return 1 - Y * Y


def _relu(A: np.ndarray) -> np.ndarray:
    return np.maximum(A, 0)


def _relu_derivative(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return (A > 0).astype(A.dtype)


def _identity(A: np.ndarray) -> np.ndarray:
    return A.copy()


def _identity_derivative(A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return np.ones_like(A)


@dataclass(frozen=True)
class Activation:
    """An activation: ``forward(A) -> Y`` and ``derivative(A, Y) -> sigma'(A)``."""

    name: str
    forward: Callable[[np.ndarray], np.ndarray]
    derivative: Callable[[np.ndarray, np.ndarray], np.ndarray]

    def backward(self, dY: np.ndarray, A: np.ndarray, Y: np.ndarray) -> np.ndarray:
        """``dA = sigma'(A) * dY`` (handout part 1)."""
        return self.derivative(A, Y) * dY


ACTIVATIONS: dict[str, Activation] = {
    a.name: a
    for a in (
        Activation("sigmoid", _sigmoid, _sigmoid_derivative),
        Activation("tanh", np.tanh, _tanh_derivative),
        Activation("relu", _relu, _relu_derivative),
        Activation("identity", _identity, _identity_derivative),
    )
}


def get_activation(name: str, argname: str = "activation") -> Activation:
    """The activation called ``name``; an unknown name gets a one-line error."""
    return ACTIVATIONS[check_choice(name, argname, tuple(ACTIVATIONS))]
