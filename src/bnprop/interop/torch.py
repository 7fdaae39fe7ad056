"""PyTorch as an oracle and an interop target; torch is imported inside each function.

The oracle builds the handout's layer from PyTorch's own parts, Linear without bias,
functional ``batch_norm`` in training mode, the activation, and lets autograd
differentiate ``F = sum(dY * Y)`` so that ``dF/dY = dY``.

:func:`mlp_to_torch` and :func:`mlp_from_torch` convert a :class:`bnprop.model.MLP` to and
from the equivalent ``torch.nn.Sequential`` (parameters and running statistics included).
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


#: bnprop activation name -> torch.nn module class name.
_TORCH_ACTIVATIONS = {"sigmoid": "Sigmoid", "tanh": "Tanh", "relu": "ReLU", "identity": "Identity"}


def mlp_to_torch(net: Any) -> Any:
    """The :class:`~bnprop.model.MLP` as a ``torch.nn.Sequential`` with the same numbers.

    Per hidden layer ``Linear(n_in, n_out, bias=False), BatchNorm1d(n_out, eps, momentum),
    activation`` (or ``Linear(n_in, n_out), activation`` without batchnorm), then
    ``Linear(n_hidden, n_classes)``. ``momentum`` is ``None`` for ``running="average"``
    (PyTorch's cumulative average). Parameters, ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` are copied, in the net's dtype. The module is in training mode.
    """
    torch = import_torch()
    nn = torch.nn
    cfg = net.config
    tdtype = {"float32": torch.float32, "float64": torch.float64}[cfg.dtype]

    def copy(a: np.ndarray) -> Any:
        return torch.tensor(a, dtype=tdtype)

    modules: list[Any] = []
    for layer in net.hidden:
        n_out, n_in = layer.W.shape
        if cfg.batchnorm:
            linear = nn.Linear(n_in, n_out, bias=False, dtype=tdtype)
            norm = nn.BatchNorm1d(
                n_out, eps=cfg.eps, momentum=cfg.momentum if cfg.running == "ema" else None,
                dtype=tdtype,
            )
            with torch.no_grad():
                linear.weight.copy_(copy(layer.W))
                norm.weight.copy_(copy(layer.gamma))
                norm.bias.copy_(copy(layer.beta))
                norm.running_mean.copy_(copy(layer.running_mean))
                norm.running_var.copy_(copy(layer.running_var))
                norm.num_batches_tracked.fill_(int(layer.num_batches_tracked))
            modules += [linear, norm]
        else:
            linear = nn.Linear(n_in, n_out, dtype=tdtype)
            with torch.no_grad():
                linear.weight.copy_(copy(layer.W))
                linear.bias.copy_(copy(layer.b))
            modules.append(linear)
        modules.append(getattr(nn, _TORCH_ACTIVATIONS[cfg.activation])())
    n_out, n_in = net.out.W.shape
    out = nn.Linear(n_in, n_out, dtype=tdtype)
    with torch.no_grad():
        out.weight.copy_(copy(net.out.W))
        out.bias.copy_(copy(net.out.b))
    modules.append(out)
    return nn.Sequential(*modules)


def mlp_from_torch(module: Any, *, stats: str = "exact", seed: int = 0) -> Any:
    """The :class:`~bnprop.model.MLP` of a ``torch.nn.Sequential`` of :func:`mlp_to_torch`'s form.

    Accepted: ``[Linear(bias=False), BatchNorm1d, act]* Linear`` or ``[Linear, act]* Linear``,
    one activation type (Sigmoid, Tanh, ReLU, Identity) throughout, BatchNorm1d affine
    with running statistics, one eps and momentum, float32 or float64. ``stats`` (not
    represented in torch) and ``seed`` (recorded only) are passed to the MLP. Anything
    else raises :class:`~bnprop.InputError` naming the module's index.
    """
    torch = import_torch()
    from bnprop._validate import InputError
    from bnprop.model import MLP

    nn = torch.nn
    if not isinstance(module, nn.Sequential):
        raise InputError(
            f"module: expected a torch.nn.Sequential, got {type(module).__name__} instead."
        )
    mods = list(module)
    act_names = {v: k for k, v in _TORCH_ACTIVATIONS.items()}

    def fail(i: int, want: str) -> InputError:
        got = type(mods[i]).__name__ if i < len(mods) else "the end of the Sequential"
        return InputError(f"module[{i}]: expected {want}, got {got} instead.")

    if not mods or not isinstance(mods[-1], nn.Linear) or mods[-1].bias is None:
        raise fail(len(mods) - 1 if mods else 0, "the output layer Linear(bias=True) last")
    batchnorm = len(mods) > 1 and isinstance(mods[1], nn.BatchNorm1d)
    hidden: list[tuple[Any, Any]] = []  # (linear, norm or None)
    activation = None
    i = 0
    while i < len(mods) - 1:
        linear = mods[i]
        if not isinstance(linear, nn.Linear):
            raise fail(i, "Linear")
        if batchnorm:
            if linear.bias is not None:
                raise fail(i, "Linear(bias=False) before BatchNorm1d (beta is the bias)")
            norm = mods[i + 1]
            if not isinstance(norm, nn.BatchNorm1d):
                raise fail(i + 1, "BatchNorm1d (every hidden layer or none)")
            if not norm.affine or not norm.track_running_stats:
                raise fail(i + 1, "BatchNorm1d(affine=True, track_running_stats=True)")
            i += 2
        else:
            if linear.bias is None:
                raise fail(i, "Linear(bias=True) in a net without BatchNorm1d")
            norm = None
            i += 1
        name = act_names.get(type(mods[i]).__name__) if i < len(mods) - 1 else None
        if name is None or (activation is not None and name != activation):
            want = (f"the activation {_TORCH_ACTIVATIONS[activation]}" if activation
                    else "an activation (Sigmoid, Tanh, ReLU, Identity)")
            raise fail(i, want)
        activation = name
        hidden.append((linear, norm))
        i += 1

    linears = [lin for lin, _ in hidden] + [mods[-1]]
    sizes = [linears[0].in_features]
    for j, lin in enumerate(linears):
        if lin.in_features != sizes[-1]:
            raise InputError(
                f"module: Linear layer {j} takes {lin.in_features} inputs but the layer "
                f"before it gives {sizes[-1]}."
            )
        sizes.append(lin.out_features)
    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise InputError(f"module: expected all parameters float32 or all float64, got {dtypes}.")
    dtype = "float32" if next(iter(dtypes)) == torch.float32 else "float64"
    norms = [norm for _, norm in hidden if norm is not None]
    kwargs: dict[str, Any] = {}
    if norms:
        settings = {(n.eps, n.momentum) for n in norms}
        if len(settings) != 1:
            raise InputError(f"module: BatchNorm1d layers differ in (eps, momentum): {settings}.")
        eps, momentum = settings.pop()
        kwargs = {"eps": eps, "running": "average" if momentum is None else "ema"}
        if momentum is not None:
            kwargs["momentum"] = momentum
    net = MLP(sizes, activation=activation or "sigmoid", batchnorm=bool(norms), stats=stats,
              dtype=dtype, seed=seed, **kwargs)

    def numpy(t: Any) -> np.ndarray:
        return t.detach().cpu().numpy()

    state: dict[str, np.ndarray] = {}
    for j, (linear, norm) in enumerate(hidden):
        state[f"hidden.{j}.W"] = numpy(linear.weight)
        if norm is None:
            state[f"hidden.{j}.b"] = numpy(linear.bias)
        else:
            state[f"hidden.{j}.gamma"] = numpy(norm.weight)
            state[f"hidden.{j}.beta"] = numpy(norm.bias)
            state[f"hidden.{j}.running_mean"] = numpy(norm.running_mean)
            state[f"hidden.{j}.running_var"] = numpy(norm.running_var)
            state[f"hidden.{j}.num_batches_tracked"] = numpy(norm.num_batches_tracked)
    state["out.W"] = numpy(mods[-1].weight)
    state["out.b"] = numpy(mods[-1].bias)
    net._load_arrays(state)
    return net
