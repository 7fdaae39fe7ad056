"""A Sequential as data: its state (arrays + a JSON description) and its folded form.

``get_state`` gives ``{name: array copy}`` for every parameter and buffer, plus
``"config"``: a 0-d unicode array holding JSON (no object arrays, so the state loads with
``allow_pickle=False``)::

    {"version": 1, "kind": "Sequential", "dtype": "float32",
     "modules": [{"type": "Linear", "in_features": 784, "out_features": 100, "bias": false},
                 {"type": "BatchNorm1d", "num_features": 100, "eps": 1e-05, ...}, ...]}
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop import conv as ref
from bnprop._validate import InputError, check_array
from bnprop.loss import _softmax
from bnprop.nn.batchnorm import BatchNorm1d
from bnprop.nn.batchnorm2d import BatchNorm2d
from bnprop.nn.conv import Conv2d
from bnprop.nn.module import ACTIVATION_MODULES, Linear, Module, _Activation
from bnprop.nn.pool import Flatten, MaxPool2d

#: Rows per block in inference: bounds the activations held at once.
PREDICT_BLOCK_ROWS = 4096
#: Version of the layout written by :func:`get_state`.
STATE_VERSION = 1


def module_config(mod: Module) -> dict[str, Any]:
    """The constructor arguments of one module, as JSON-able values."""
    if isinstance(mod, Linear):
        return {"type": "Linear", "in_features": mod.in_features,
                "out_features": mod.out_features, "bias": mod.has_bias}
    if isinstance(mod, BatchNorm1d):  # BatchNorm2d too
        return {"type": type(mod).__name__, "num_features": mod.num_features, "eps": mod.eps,
                "momentum": mod.momentum, "running": mod.running, "stats": mod.stats}
    if isinstance(mod, Conv2d):
        return {"type": "Conv2d", "in_channels": mod.in_channels,
                "out_channels": mod.out_channels, "kernel_size": mod.kernel_size,
                "stride": mod.stride, "padding": mod.padding, "bias": mod.has_bias}
    if isinstance(mod, MaxPool2d):
        return {"type": "MaxPool2d", "kernel_size": mod.kernel_size, "stride": mod.stride}
    if isinstance(mod, _Activation | Flatten):
        return {"type": type(mod).__name__}
    raise InputError(f"module: {type(mod).__name__} cannot be saved.")  # pragma: no cover


def build_module(cfg: dict[str, Any], dtype: str) -> Module:
    """The module of :func:`module_config` (weights drawn, then to be overwritten)."""
    args = dict(cfg)
    kind = args.pop("type", None)
    activations = {cls.__name__: cls for cls in ACTIVATION_MODULES.values()}
    try:
        if kind == "Linear":
            return Linear(args.pop("in_features"), args.pop("out_features"),
                          args.pop("bias"), dtype=dtype, **args)
        if kind in ("BatchNorm1d", "BatchNorm2d"):
            norm = BatchNorm1d if kind == "BatchNorm1d" else BatchNorm2d
            return norm(args.pop("num_features"), dtype=dtype, **args)
        if kind == "Conv2d":
            return Conv2d(args.pop("in_channels"), args.pop("out_channels"),
                          args.pop("kernel_size"), dtype=dtype, **args)
        if kind == "MaxPool2d":
            return MaxPool2d(args.pop("kernel_size"), dtype=dtype, **args)
        if kind == "Flatten" and not args:
            return Flatten(dtype=dtype)
        if kind in activations and not args:
            return activations[kind](dtype=dtype)
    except (TypeError, KeyError) as exc:
        raise InputError(f"state['config']: bad {kind} module ({exc}).") from None
    raise InputError(f"state['config']: unknown module {cfg!r}.")


def get_state(net: Any) -> dict[str, np.ndarray]:
    """Copies of every parameter and buffer, and ``"config"`` (module docstring)."""
    state = {k: v.copy() for k, v in {**net.parameters(), **net.buffers()}.items()}
    config = {"version": STATE_VERSION, "kind": "Sequential", "dtype": str(net.dtype),
              "modules": [module_config(m) for m in net.modules]}
    state["config"] = np.array(json.dumps(config, sort_keys=True))
    return state


def read_config(state: object, owner: str = "Sequential") -> dict[str, Any]:
    """The JSON ``state["config"]`` as a dict (one clear line when it is not one)."""
    if not hasattr(state, "keys") or "config" not in state:  # type: ignore[operator]
        raise InputError(f"state: expected the dict of {owner}.get_state(), with key "
                         "'config'.")
    raw = np.asarray(state["config"])  # type: ignore[index]
    if raw.dtype.kind != "U" or raw.shape != ():
        raise InputError(
            f"state['config']: expected a 0-d unicode array holding JSON, got dtype "
            f"{raw.dtype} and shape {raw.shape} instead."
        )
    try:
        cfg = json.loads(str(raw))
    except ValueError as exc:
        raise InputError(f"state['config']: not a JSON {owner} configuration ({exc}).") \
            from None
    if not isinstance(cfg, dict):
        raise InputError(f"state['config']: not a JSON {owner} configuration (not an "
                         "object).")
    return cfg


def from_state(state: dict[str, np.ndarray]) -> Any:
    """The Sequential of :func:`get_state`, every key and shape checked."""
    from bnprop.nn.sequential import Sequential

    cfg = read_config(state)
    if cfg.get("version") != STATE_VERSION or cfg.get("kind") != "Sequential":
        raise InputError(f"state['config']: expected a Sequential state of version "
                         f"{STATE_VERSION}, got {cfg.get('kind')!r} version "
                         f"{cfg.get('version')!r}.")
    modules = cfg.get("modules")
    if not isinstance(modules, list) or not all(isinstance(m, dict) for m in modules):
        raise InputError("state['config']: expected a list of modules under 'modules'.")
    net = Sequential(*(build_module(m, cfg.get("dtype", "float32")) for m in modules))
    load_arrays(net, state)
    return net


def load_arrays(net: Any, state: dict[str, np.ndarray]) -> None:
    """Copy ``state``'s arrays into the net's live ones (:func:`copy_checked`)."""
    copy_checked({**net.parameters(), **net.buffers()}, state,
                 repr(net) if "\n" not in repr(net) else type(net).__name__)


def copy_checked(expected: dict[str, np.ndarray], state: dict[str, np.ndarray],
                 who: str) -> None:
    """Copy ``state``'s arrays into the live ``expected`` ones of ``who``: each key, shape
    and value checked (finite, variances >= 0, batch counters in range), one line each."""
    extra = sorted(set(state.keys()) - set(expected) - {"config"})
    if extra:
        raise InputError(f"state: unexpected key {extra[0]!r} for {who}.")
    for key, live in expected.items():
        if key not in state:
            raise InputError(f"state: missing key {key!r} for {who}.")
        if key.endswith("num_batches_tracked"):
            arr = np.asarray(state[key])
            if arr.shape != () or arr.dtype.kind not in "iu":
                raise InputError(f"{key}: expected an integer scalar >= 0, got dtype "
                                 f"{arr.dtype} and shape {arr.shape} instead.")
            if not 0 <= int(arr) <= np.iinfo(np.int64).max:
                raise InputError(f"{key}: expected an integer scalar from 0 to 2**63 - 1, got "
                                 f"{int(arr)} instead.")
            live[...] = int(arr)
            continue
        arr = check_array(state[key], key, ndim=live.ndim, shape=live.shape, dtype=live.dtype)
        if key.endswith("running_var") and (arr < 0).any():
            raise InputError(f"{key}: expected variances >= 0, got {arr.min()}.")
        live[...] = arr


def folded_conv(conv: Conv2d, norm: BatchNorm2d | None) -> Conv2d:
    """One ``Conv2d`` with bias equal to ``conv -> norm`` in inference (``norm`` None: a
    copy). :func:`bnprop.batchnorm.fold` on the GEMM's matrix ``W2`` (rows per output
    channel, :func:`bnprop.conv.weight_matrix`); a bias
    ``b`` of ``conv`` enters as ``mu_pop - b``::

        W_fold = diag(gamma / sqrt(var + eps)) W2
        b_fold = beta - gamma (mu - b) / sqrt(var + eps)
    """
    b = conv.b if conv.has_bias else np.zeros(conv.out_channels, conv.dtype)
    W, b_fold = conv.W, b
    if norm is not None:
        W2, b_fold = bn.fold(conv.W2, norm.gamma, norm.beta,
                             norm.running_mean.astype(np.float64) - b, norm.running_var,
                             norm.eps)
        W = ref.weight_from_matrix(W2, conv.W.shape)
    out = Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride,
                 conv.padding, True, dtype=str(conv.dtype), rng=0)
    out.W[...], out.b[...] = W, b_fold
    return out


def folded_layers(net: Any) -> list[Module]:
    """The modules of the folded net: ``Linear(bias=False) -> BatchNorm1d`` becomes one
    ``Linear`` with ``W_fold, b_fold`` (:func:`bnprop.batchnorm.fold`), ``Conv2d ->
    BatchNorm2d`` one ``Conv2d`` (:func:`folded_conv`); a lone ``BatchNorm1d`` becomes the
    diagonal ``Linear`` of its inference map, a lone ``BatchNorm2d`` the diagonal 1 x 1
    ``Conv2d``; the rest is copied."""
    out: list[Module] = []
    mods, i, dt = net.modules, 0, str(net.dtype)
    while i < len(mods):
        mod = mods[i]
        nxt = mods[i + 1] if i + 1 < len(mods) else None
        if isinstance(mod, Conv2d) or isinstance(mod, BatchNorm2d):
            if isinstance(mod, BatchNorm2d):  # the identity 1 x 1 convolution, then mod
                mod, nxt, i = Conv2d(mod.num_features, mod.num_features, 1, bias=False,
                                     dtype=dt, rng=0), mod, i - 1
                mod.W[...] = np.eye(nxt.num_features, dtype=nxt.dtype)[:, :, None, None]
            norm = nxt if isinstance(nxt, BatchNorm2d) else None
            out.append(folded_conv(mod, norm))
            i += 1 if norm is None else 2
            continue
        if isinstance(mod, Linear) and not mod.has_bias and type(nxt) is BatchNorm1d:
            W, b = nxt.fold_into(mod.W)
            i += 2
        elif type(mod) is BatchNorm1d:
            W, b = mod.fold_into(np.eye(mod.num_features, dtype=mod.dtype))
            i += 1
        elif isinstance(mod, Linear):
            W, b = mod.W, (mod.b if mod.has_bias else np.zeros(mod.out_features, mod.dtype))
            i += 1
        else:
            out.append(build_module(module_config(mod), dt))
            i += 1
            continue
        lin = Linear(W.shape[1], W.shape[0], True, dtype=dt, rng=0)
        lin.W[...], lin.b[...] = W, b
        out.append(lin)
    return out


def fold(net: Any) -> Any:
    """The inference network of ``net`` as a Sequential (see :func:`folded_layers`)."""
    from bnprop.nn.sequential import Sequential

    return Sequential(*folded_layers(net), backend=net.backend)


def blocked_proba(logits_fn: Any, X: np.ndarray, n_classes: int,
                  block_rows: int = PREDICT_BLOCK_ROWS) -> np.ndarray:
    """``softmax(logits_fn(X_block))`` for blocks of ``block_rows`` rows."""
    P = np.empty((X.shape[0], n_classes), dtype=X.dtype)
    for start in range(0, X.shape[0], block_rows):
        block = slice(start, start + block_rows)
        P[block] = _softmax(logits_fn(X[block]))
    return P
