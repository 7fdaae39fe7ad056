"""PyTorch as an oracle and an interop target; torch is imported inside each function.

The oracle builds the handout's layer from PyTorch's own parts, Linear without bias,
functional ``batch_norm`` in training mode, the activation, and lets autograd
differentiate ``F = sum(dY * Y)`` so that ``dF/dY = dY``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np


def import_torch() -> Any:
    """Import torch, or raise ImportError naming the extra that installs it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "PyTorch is not installed: pip install 'bnprop[test]' (it pins torch==2.13.0)"
        ) from exc
    return torch


@dataclass(frozen=True)
class TorchLayerGrads:
    """What autograd gives for one layer: forward outputs and gradients, as NumPy."""

    Z: np.ndarray
    Obar: np.ndarray
    A: np.ndarray
    Y: np.ndarray
    dA: np.ndarray
    dgamma: np.ndarray
    dbeta: np.ndarray
    dW: np.ndarray
    dO: np.ndarray


def torch_layer_grads(
    O: np.ndarray, W: np.ndarray, gamma: np.ndarray, beta: np.ndarray, dY: np.ndarray,
    *, activation: str = "sigmoid", eps: float = 1e-5, stats: str = "exact",
) -> TorchLayerGrads:
    """Autograd's forward and gradients of the layer, in the arrays' dtype.

    ``stats="exact"`` uses ``torch.nn.functional.batch_norm(training=True)``;
    ``stats="frozen"`` computes the same statistics and detaches them, so autograd
    treats ``mu_B`` and ``var_B`` as constants (the handout's part 4).
    """
    torch = import_torch()
    F = torch.nn.functional
    acts = {"sigmoid": torch.sigmoid, "tanh": torch.tanh, "relu": torch.relu,
            "identity": lambda x: x}
    tO, tW, tg, tb = (torch.tensor(a, requires_grad=True) for a in (O, W, gamma, beta))
    Z = F.linear(tO, tW)
    with torch.no_grad():
        mu, var = Z.mean(dim=0), Z.var(dim=0, unbiased=False)
        Obar = (Z - mu) / torch.sqrt(var + eps)
    if stats == "exact":
        A = F.batch_norm(Z, None, None, tg, tb, training=True, eps=eps)
    else:
        A = tg * ((Z - mu) / torch.sqrt(var + eps)) + tb
    A.retain_grad()
    Y = acts[activation](A)
    (Y * torch.tensor(dY)).sum().backward()
    return TorchLayerGrads(
        Z=Z.detach().numpy(), Obar=Obar.detach().numpy(), A=A.detach().numpy(),
        Y=Y.detach().numpy(), dA=A.grad.numpy(), dgamma=tg.grad.numpy(),
        dbeta=tb.grad.numpy(), dW=tW.grad.numpy(), dO=tO.grad.numpy(),
    )
