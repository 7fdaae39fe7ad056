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


def sequential_to_torch(net: Any) -> Any:
    """A :class:`~bnprop.nn.Sequential` (an MLP included) as a ``torch.nn.Sequential``.

    Module for module: ``Linear`` (``W`` -> ``weight``, ``b`` -> ``bias``),
    ``BatchNorm1d`` (``gamma`` -> ``weight``, ``beta`` -> ``bias``, the running statistics,
    ``momentum=None`` for ``running="average"``, PyTorch's cumulative average), and the
    activations; in the net's dtype, in training mode.
    """
    torch = import_torch()
    from bnprop.nn import BatchNorm1d, BatchNorm2d, Conv2d, Flatten, Linear, MaxPool2d

    nn = torch.nn
    tdtype = {np.dtype("float32"): torch.float32, np.dtype("float64"): torch.float64}[net.dtype]
    modules: list[Any] = []
    for mod in net.modules:
        if isinstance(mod, Linear):
            t = nn.Linear(mod.in_features, mod.out_features, bias=mod.has_bias, dtype=tdtype)
        elif isinstance(mod, BatchNorm1d):
            norm = nn.BatchNorm2d if isinstance(mod, BatchNorm2d) else nn.BatchNorm1d
            t = norm(mod.num_features, eps=mod.eps,
                     momentum=mod.momentum if mod.running == "ema" else None, dtype=tdtype)
        elif isinstance(mod, Conv2d):
            t = nn.Conv2d(mod.in_channels, mod.out_channels, mod.kernel_size, mod.stride,
                          mod.padding, bias=mod.has_bias, dtype=tdtype)
        elif isinstance(mod, MaxPool2d):
            t = nn.MaxPool2d(mod.kernel_size, mod.stride)
        elif isinstance(mod, Flatten):
            t = nn.Flatten()
        else:
            t = getattr(nn, _TORCH_ACTIVATIONS[mod.activation])()
        with torch.no_grad():
            for name, arr in [*mod.named_parameters(), *mod.named_buffers()]:
                target = getattr(t, mod.torch_names.get(name, name))
                target.copy_(torch.tensor(arr))
        modules.append(t)
    return nn.Sequential(*modules)


mlp_to_torch = sequential_to_torch


def _torch_array(key: str, tensor: object) -> np.ndarray:
    """``tensor`` as a NumPy array, or one line naming ``key``."""
    from bnprop._validate import InputError

    if not isinstance(tensor, import_torch().Tensor):
        raise InputError(f"{key}: expected a tensor, got {type(tensor).__name__} instead.")
    try:
        return tensor.detach().cpu().numpy()
    except (TypeError, RuntimeError, NotImplementedError) as exc:
        reason = (str(exc).splitlines() or [type(exc).__name__])[0]
        raise InputError(f"{key}: cannot be read as a NumPy array ({reason}).") from None


def _copy_from_torch(net: Any, module: Any) -> None:
    """Copy every parameter and buffer of the torch modules into ``net``'s, in order,
    through :func:`~bnprop.nn.convert.copy_checked`: shapes checked, NaN or inf refused,
    variances >= 0; a message names ``module[i].<torch name>``, e.g.
    ``module[1].running_var``."""
    from bnprop.nn.convert import copy_checked

    live: dict[str, np.ndarray] = {}
    state: dict[str, np.ndarray] = {}
    for i, (mod, t) in enumerate(zip(net.modules, module, strict=True)):
        for name, arr in [*mod.named_parameters(), *mod.named_buffers()]:
            tname = mod.torch_names.get(name, name)
            key = f"module[{i}].{tname}"
            live[key], state[key] = arr, _torch_array(key, getattr(t, tname, None))
    copy_checked(live, state, "the torch.nn.Sequential")


def _norm_settings(i: int, t: Any) -> tuple[float, float | None]:
    """``(eps, momentum)`` of the torch ``BatchNorm1d``/``BatchNorm2d`` ``t`` at index ``i``,
    or one line naming ``module[i]`` for a variant bnprop cannot represent."""
    from bnprop._validate import InputError

    kind = type(t).__name__
    for flag, reason in (("affine", "always learns gamma and beta"),
                         ("track_running_stats", "keeps running statistics for inference")):
        if not getattr(t, flag):
            raise InputError(f"module[{i}]: expected {kind}(affine=True, track_running_stats="
                             f"True), got {flag}=False instead; bnprop's {kind} {reason}.")
    if t.bias is None:
        raise InputError(f"module[{i}]: expected {kind}(bias=True), got bias=False instead; "
                         f"bnprop's {kind} always learns beta (the bias).")
    if not _in_range(t.eps, 0.0, np.inf):
        raise InputError(f"module[{i}]: expected {kind} eps > 0, got {t.eps!r} instead; "
                         "bnprop's eps must be a finite number > 0.")
    if t.momentum is not None and not _in_range(t.momentum, 0.0, 1.0):
        raise InputError(f"module[{i}]: expected {kind} momentum in (0, 1] or None, got "
                         f"{t.momentum!r} instead; bnprop's momentum, the weight of each new "
                         "batch in the running statistics, must be > 0 and <= 1.")
    return float(t.eps), None if t.momentum is None else float(t.momentum)


def _in_range(value: object, low: float, high: float) -> bool:
    """Whether ``value`` is a real number in ``(low, high]``, finite."""
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return False
    return bool(np.isfinite(v) and low < v <= high)


def sequential_from_torch(module: Any, *, stats: str = "exact") -> Any:
    """The :class:`~bnprop.nn.Sequential` of a ``torch.nn.Sequential`` of ``Linear``,
    ``BatchNorm1d`` (affine with a bias, with running statistics, eps > 0, momentum in
    (0, 1] or None) and activations (Sigmoid, Tanh, ReLU, Identity); the dtype follows the
    module's parameters. ``stats`` (not represented in torch) goes to every BatchNorm1d.
    Anything else, and any NaN, inf or negative running variance in the tensors, raises
    :class:`~bnprop.InputError` naming the module's index."""
    torch = import_torch()
    from bnprop import nn as bnn
    from bnprop._validate import InputError

    nn = torch.nn
    _check_sequential(module)
    dtype = _torch_dtype(module)
    act_names = {v: k for k, v in _TORCH_ACTIVATIONS.items()}
    mods: list[Any] = []
    for i, t in enumerate(module):
        if isinstance(t, nn.Linear):
            mods.append(bnn.Linear(t.in_features, t.out_features, t.bias is not None,
                                   dtype=dtype, rng=0))
        elif isinstance(t, nn.BatchNorm1d | nn.BatchNorm2d):
            eps, momentum = _norm_settings(i, t)
            mods.append(getattr(bnn, type(t).__name__)(
                t.num_features, eps, 0.1 if momentum is None else momentum,
                running="average" if momentum is None else "ema", stats=stats, dtype=dtype))
        elif isinstance(t, nn.Conv2d | nn.MaxPool2d | nn.Flatten):
            mods.append(_image_module_from_torch(i, t, dtype))
        elif type(t).__name__ in act_names:
            mods.append(bnn.module.ACTIVATION_MODULES[act_names[type(t).__name__]](dtype=dtype))
        else:
            raise InputError(f"module[{i}]: expected Linear, BatchNorm1d, BatchNorm2d, Conv2d, "
                             "MaxPool2d, Flatten or an activation (Sigmoid, Tanh, ReLU, "
                             f"Identity), got {type(t).__name__} instead.")
    net = bnn.Sequential(*mods)
    _copy_from_torch(net, module)
    return net


def _image_module_from_torch(i: int, t: Any, dtype: str) -> Any:
    """bnprop's ``Conv2d`` (square kernel and stride, zero padding, no dilation or
    groups), ``MaxPool2d`` (no padding, dilation or ceil_mode) or ``Flatten()`` of ``t``."""
    torch = import_torch()
    from bnprop import nn as bnn
    from bnprop._validate import InputError

    nn = torch.nn

    def square(value: Any, what: str) -> int:
        pair = value if isinstance(value, tuple) else (value, value)
        if len(set(pair)) != 1 or isinstance(pair[0], str):
            raise InputError(f"module[{i}]: expected a square {what}, got {value!r} instead.")
        return int(pair[0])

    if isinstance(t, nn.Conv2d):
        if (t.groups != 1 or square(t.dilation, "dilation") != 1
                or t.padding_mode != "zeros"):
            raise InputError(f"module[{i}]: expected Conv2d with groups=1, dilation=1 and "
                             "padding_mode='zeros'.")
        return bnn.Conv2d(t.in_channels, t.out_channels, square(t.kernel_size, "kernel_size"),
                          square(t.stride, "stride"), square(t.padding, "padding"),
                          t.bias is not None, dtype=dtype, rng=0)
    if isinstance(t, nn.MaxPool2d):
        if (square(t.padding, "padding") != 0 or square(t.dilation, "dilation") != 1
                or t.ceil_mode or t.return_indices):
            raise InputError(f"module[{i}]: expected MaxPool2d with padding=0, dilation=1, "
                             "ceil_mode=False, return_indices=False.")
        return bnn.MaxPool2d(square(t.kernel_size, "kernel_size"), square(t.stride, "stride"),
                             dtype=dtype)
    if t.start_dim != 1 or t.end_dim != -1:
        raise InputError(f"module[{i}]: expected Flatten(start_dim=1, end_dim=-1).")
    return bnn.Flatten(dtype=dtype)


def _check_sequential(module: Any) -> None:
    """One line unless ``module`` is a ``torch.nn.Sequential``."""
    from bnprop._validate import InputError

    if not isinstance(module, import_torch().nn.Sequential):
        raise InputError(
            f"module: expected a torch.nn.Sequential, got {type(module).__name__} instead."
        )


def _torch_dtype(module: Any) -> str:
    """"float32" or "float64": the one dtype of the module's parameters."""
    torch = import_torch()
    from bnprop._validate import InputError

    dtypes = {p.dtype for p in module.parameters()}
    if len(dtypes) != 1 or next(iter(dtypes)) not in (torch.float32, torch.float64):
        raise InputError(f"module: expected all parameters float32 or all float64, got {dtypes}.")
    return "float32" if next(iter(dtypes)) == torch.float32 else "float64"


def mlp_from_torch(module: Any, *, stats: str = "exact", seed: int = 0) -> Any:
    """The :class:`~bnprop.model.MLP` of a ``torch.nn.Sequential`` of :func:`mlp_to_torch`'s form.

    Accepted: ``[Linear(bias=False), BatchNorm1d, act]* Linear`` or ``[Linear, act]* Linear``,
    one activation type (Sigmoid, Tanh, ReLU, Identity) throughout, BatchNorm1d affine
    with a bias and running statistics, one eps (> 0) and momentum (in (0, 1] or None),
    float32 or float64, finite tensors. ``stats`` (not represented in torch) and ``seed``
    (recorded only) are passed to the MLP. Anything else raises
    :class:`~bnprop.InputError` naming the module's index.
    """
    torch = import_torch()
    from bnprop._validate import InputError
    from bnprop.model import MLP

    nn = torch.nn
    _check_sequential(module)
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
            _norm_settings(i + 1, norm)
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
    dtype = _torch_dtype(module)
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

    _copy_from_torch(net, module)
    return net
