"""A multilayer perceptron with batch normalization, trained with the layer's own gradients.

The network of Ioffe & Szegedy (2015, section 4.1) is ``MLP((784, 100, 100, 100, 10))``.
Rows are examples; ``X`` is ``(m, sizes[0])``. Hidden layer l (l = 0, 1, ...)::

    batchnorm=True    Y = sigma(gamma * (O W^T - mu) / sqrt(var + eps) + beta)   (layer.py)
    batchnorm=False   Y = sigma(O W^T + b)

Output layer: ``logits = O W^T + b``; loss: mean softmax cross-entropy (loss.py).
Training mode uses the batch statistics ``mu_B, var_B`` (and the exact or frozen
gradient through them, ``stats``); inference mode uses the running statistics.

Running statistics, per BN layer, updated by every training forward (``m`` rows)::

    running="ema"      running_mean = (1 - momentum) * running_mean + momentum * mu_B
                       running_var  = (1 - momentum) * running_var  + momentum * m/(m-1) * var_B
    running="average"  the same with momentum = 1/k at the k-th batch (k = num_batches_tracked):
                       running_mean = (1/k) sum_j mu_B^(j)
                       running_var  = (1/k) sum_j m_j/(m_j-1) var_B^(j)

Both start at ``running_mean = 0``, ``running_var = 1``. ``"ema"`` with momentum 0.1 is
``torch.nn.BatchNorm1d``'s default; ``"average"`` is the paper's Algorithm 2 (population
statistics averaged over the training minibatches) and ``BatchNorm1d(momentum=None)``.

Initialization (the paper says "small random Gaussian values"; we choose, seeded by
``numpy.random.default_rng(seed)``, drawn in float64 then cast, layer by layer in order)::

    W ~ N(0, init_std^2), init_std = 1/sqrt(n_in) by default     every layer, BN or not
    gamma = 1, beta = 0, b = 0

so a net with and one without batch normalization, of the same sizes and seed, start from
the same W matrices (the comparison of the paper's Figure 1).

The MLP is a :class:`bnprop.nn.Sequential` of ``Linear(bias=False), BatchNorm1d,
activation`` per hidden layer (``Linear, activation`` without batch normalization), then
``Linear``: the same modules as its ``to_torch()``. Its parameter and buffer names are
the layer-wise ones it has always had (``hidden.<l>.W``, ``hidden.<l>.gamma``,
``hidden.<l>.beta``, ``hidden.<l>.b``, ``out.W``, ``out.b``; ``hidden.<l>.running_mean``
...), in PyTorch's order, so checkpoints of every version load.

Data parallel (``loss_and_grads(X_p, y_p, comm=comm)``, :mod:`bnprop.distributed`): each of
P processes holds rows ``X_p`` (m_p of them) of a global batch of ``m = sum_p m_p`` rows,
and the same parameters. With ``sync_bn=True`` (SyncBN) the step equals one process on the
global batch, to rounding::

    mu_B, var_B     of the global batch (layer.py: one Allgather of (m_p, mean_p, M2_p))
    running_*       updated with the global mu_B, var_B and m: the same on every process
    loss            (1/m) sum_p sum_{i in p} l_i;   dlogits_p = (P_p - onehot(y_p)) / m
    dgamma, dbeta   global from each layer's backward (one Allreduce of 2 n_out a layer)
    dW, db, loss    sum_p of the local terms: one float64 Allreduce of them all a step

With ``sync_bn=False`` (local statistics, as plain data parallelism and
``torch.nn.parallel.DistributedDataParallel`` with ``BatchNorm1d`` do) each process
normalizes with its own rows' ``mu_p, var_p``; the step is the exact gradient of the same
``(1/m) sum_i l_i`` with example i normalized by its own process's statistics, so
``dgamma, dbeta`` join the packed Allreduce (equal shares: DDP's average of the processes'
mean-loss gradients). Each process's running statistics then follow its own batches
(``m_p``): they differ between processes, the parameters do not.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from types import SimpleNamespace
from typing import Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop._validate import InputError, check_choice, check_positive, check_seed
from bnprop.activations import get_activation
from bnprop.folded import FoldedMLP
from bnprop.nn.batchnorm import RUNNING_MODES, STATS_MODES, BatchNorm1d
from bnprop.nn.convert import folded_layers, load_arrays, read_config
from bnprop.nn.module import ACTIVATION_MODULES, DTYPES, Linear, Module
from bnprop.nn.plan import NormStep
from bnprop.nn.sequential import PREDICT_BLOCK_ROWS, Sequential

__all__ = ["MLP", "PREDICT_BLOCK_ROWS", "STATE_VERSION", "FoldedMLP", "MLPConfig"]

#: Version of the layout written by :meth:`MLP.get_state`.
STATE_VERSION = 1


@dataclass(frozen=True)
class MLPConfig:
    """Everything that defines an :class:`MLP` besides its arrays."""

    sizes: tuple[int, ...]       # (n_features, hidden..., n_classes)
    activation: str = "sigmoid"  # of the hidden layers
    batchnorm: bool = True
    stats: str = "exact"         # "exact" or "frozen" gradient through mu_B, var_B
    dtype: str = "float32"       # of every parameter, buffer and activation
    seed: int = 0                # of the initialization
    eps: float = 1e-5            # under the square root of the normalization
    momentum: float = 0.1        # weight of the new batch in running="ema"
    running: str = "ema"         # "ema" or "average" (Algorithm 2)
    init_std: float | None = None  # std of the initial W; None: 1/sqrt(n_in)

    def to_json(self) -> str:
        return json.dumps({"version": STATE_VERSION, **asdict(self)}, sort_keys=True)


def _check_config(
    sizes: object, activation: object, batchnorm: object, stats: object, dtype: object,
    seed: object, eps: object, momentum: object, running: object, init_std: object,
) -> MLPConfig:
    try:
        sizes_t = tuple(sizes)  # type: ignore[arg-type]
    except TypeError:
        sizes_t = None
    if (
        sizes_t is None or len(sizes_t) < 2
        or not all(isinstance(s, int | np.integer) and not isinstance(s, bool) and s >= 1
                   for s in sizes_t)
    ):
        raise InputError(
            "sizes: expected a sequence of >= 2 positive integers (n_features, hidden..., "
            f"n_classes), e.g. (784, 100, 100, 100, 10), got {sizes!r} instead."
        )
    if sizes_t[-1] < 2:
        raise InputError(f"sizes: expected >= 2 classes in sizes[-1], got {sizes_t[-1]} instead.")
    if not isinstance(batchnorm, bool | np.bool_):
        raise InputError(f"batchnorm: expected True or False, got {batchnorm!r} instead.")
    check_seed(seed)
    momentum_f = check_positive(momentum, "momentum")
    if momentum_f > 1:
        raise InputError(f"momentum: expected a number in (0, 1], got {momentum!r} instead.")
    return MLPConfig(
        sizes=tuple(int(s) for s in sizes_t),
        activation=get_activation(activation).name,  # type: ignore[arg-type]
        batchnorm=bool(batchnorm),
        stats=check_choice(stats, "stats", STATS_MODES),
        dtype=check_choice(dtype, "dtype", DTYPES),
        seed=int(seed),
        eps=check_positive(eps, "eps"),
        momentum=momentum_f,
        running=check_choice(running, "running", RUNNING_MODES),
        init_std=None if init_std is None else check_positive(init_std, "init_std"),
    )


def _modules(cfg: MLPConfig) -> list[Module]:
    """The MLP's modules; weights drawn from one generator, layer by layer in order."""
    rng = np.random.default_rng(cfg.seed)
    pairs = list(zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True))
    modules: list[Module] = []
    for l, (n_in, n_out) in enumerate(pairs):
        last = l == len(pairs) - 1
        modules.append(Linear(n_in, n_out, bias=last or not cfg.batchnorm, dtype=cfg.dtype,
                              rng=rng, init_std=cfg.init_std))
        if last:
            break
        if cfg.batchnorm:
            modules.append(BatchNorm1d(n_out, cfg.eps, cfg.momentum, running=cfg.running,
                                       stats=cfg.stats, dtype=cfg.dtype))
        modules.append(ACTIVATION_MODULES[cfg.activation](dtype=cfg.dtype))
    return modules


#: BatchNorm1d settings a user may change after construction; ``get_state`` keeps them.
_NORM_KEYS = ("eps", "momentum", "running", "stats")


def _set_norms(net: MLP, norms: object) -> None:
    """Give each BatchNorm1d of ``net`` its saved ``{eps, momentum, running, stats}``,
    each checked as the constructor checks it."""
    mods = [m for m in net.modules if isinstance(m, BatchNorm1d)]
    if not isinstance(norms, list) or len(norms) != len(mods) or not all(
            isinstance(n, dict) and sorted(n) == sorted(_NORM_KEYS) for n in norms):
        raise InputError(f"state['config']: norms: expected {len(mods)} dicts of "
                         f"{', '.join(_NORM_KEYS)}, one per BatchNorm1d, got {norms!r}.")
    for i, (mod, n) in enumerate(zip(mods, norms, strict=True)):
        try:
            BatchNorm1d(1, n["eps"], n["momentum"], running=n["running"], stats=n["stats"])
        except InputError as exc:
            raise InputError(f"state['config']: norms[{i}]: {exc}") from None
        for key in _NORM_KEYS:
            setattr(mod, key, n[key])


class MLP(Sequential):
    """Multilayer perceptron, batch-normalized hidden layers, softmax cross-entropy.

    See the module docstring for the equations, the running statistics and the
    initialization.

    Parameters
    ----------
    sizes : sequence of int
        ``(n_features, hidden_1, ..., n_classes)``, e.g. ``(784, 100, 100, 100, 10)``.
    activation : {"sigmoid", "tanh", "relu", "identity"}, default="sigmoid"
    batchnorm : bool, default=True
        Hidden layers ``sigma(BN(O W^T))`` (True) or ``sigma(O W^T + b)`` (False).
    stats : {"exact", "frozen"}, default="exact"
        Gradient through the batch statistics, or with them held fixed (handout part 4).
    dtype : {"float32", "float64"}, default="float32"
    seed : int, default=0
    eps : float, default=1e-5
    momentum : float, default=0.1
        In (0, 1]; weight of the new batch in ``running="ema"``.
    running : {"ema", "average"}, default="ema"
    init_std : float, optional
        Standard deviation of the initial weights; default ``1/sqrt(n_in)`` per layer.
    backend : {"numba", "numpy"}, default="numba"
        The compiled kernels or the NumPy reference.

    Examples
    --------
    >>> import numpy as np
    >>> from bnprop.model import MLP
    >>> from bnprop.optim import SGD
    >>> rng = np.random.default_rng(0)
    >>> X, y = rng.random((60, 8), dtype=np.float32), rng.integers(0, 3, 60)
    >>> net, opt = MLP((8, 16, 3)), SGD(0.5)
    >>> losses = [net.train_step(X, y, opt) for _ in range(50)]
    >>> losses[-1] < losses[0]
    True
    """

    def __init__(
        self,
        sizes: Sequence[int],
        *,
        activation: str = "sigmoid",
        batchnorm: bool = True,
        stats: str = "exact",
        dtype: str = "float32",
        seed: int = 0,
        eps: float = 1e-5,
        momentum: float = 0.1,
        running: str = "ema",
        init_std: float | None = None,
        backend: str = "numba",
    ) -> None:
        cfg = _check_config(sizes, activation, batchnorm, stats, dtype, seed, eps, momentum,
                            running, init_std)
        self.config = cfg
        self._per_layer = 3 if cfg.batchnorm else 2
        super().__init__(*_modules(cfg), backend=backend)

    # ------------------------------------------------------------------ description
    @property
    def sizes(self) -> tuple[int, ...]:
        return self.config.sizes

    def __repr__(self) -> str:
        c = self.config
        return (f"MLP({c.sizes}, activation={c.activation!r}, batchnorm={c.batchnorm}, "
                f"stats={c.stats!r}, dtype={c.dtype!r})")

    def _prefix(self, index: int) -> str:
        """``hidden.<l>.`` for the modules of hidden layer l, ``out.`` for the last."""
        l = index // self._per_layer
        return "out." if l == len(self.config.sizes) - 2 else f"hidden.{l}."

    @property
    def hidden(self) -> list[SimpleNamespace]:
        """Per hidden layer, its live arrays by name (``W``, ``gamma``, ``beta``,
        ``running_mean``, ... or ``W``, ``b``)."""
        arrays = {**self.parameters(), **self.buffers()}
        return [SimpleNamespace(**{k.split(".", 2)[2]: v for k, v in arrays.items()
                                   if k.startswith(f"hidden.{l}.")})
                for l in range(len(self.config.sizes) - 2)]

    @property
    def out(self) -> SimpleNamespace:
        """The output layer's live ``W`` and ``b``."""
        out = self.modules[-1]
        return SimpleNamespace(W=out.W, b=out.b)

    # ------------------------------------------------------------------ inference
    def hidden_inputs(self, X: object) -> list[np.ndarray]:
        """Inference-mode input ``A`` of every hidden activation, ``[(m, n_l), ...]``.

        With BN, ``A = gamma * (O W^T - running_mean) / sqrt(running_var + eps) + beta``
        (after gamma and beta); without, ``A = O W^T + b``. These are the "inputs to a
        sigmoid" of Ioffe & Szegedy's Figure 1 (b, c).
        """
        X = self._check_X(X, training=False)
        collected: list[np.ndarray] = []
        for start in range(0, max(1, X.shape[0]), PREDICT_BLOCK_ROWS):
            H, block = X[start:start + PREDICT_BLOCK_ROWS], []
            for step in self.steps[:-1]:
                H = step.forward(H, False, None)
                if isinstance(step, NormStep):
                    norm = step.norm
                    block.append(bn.scale_shift(step.stage.Z, norm.gamma, norm.beta))
                elif isinstance(step.modules[0], Linear):
                    block.append(H.copy())
            collected.append(block)
        return [np.concatenate([b[l] for b in collected]) for l in range(len(collected[0]))]

    def fold(self) -> FoldedMLP:  # type: ignore[override]
        """The inference network with each BN folded into its linear map.

        ``W_fold = diag(gamma / sqrt(running_var + eps)) W``,
        ``b_fold = beta - gamma * running_mean / sqrt(running_var + eps)``; hidden layers
        without BN and the output layer are copied.
        """
        layers = [(mod.W.copy(), mod.b.copy()) for mod in folded_layers(self)
                  if isinstance(mod, Linear)]
        return FoldedMLP(layers, activation=self.config.activation, backend=self.backend)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, and ``"config"``: the configuration as a
        JSON string in a 0-d unicode array (no object arrays: loads with allow_pickle=False).
        """
        state = {k: v.copy() for k, v in {**self.parameters(), **self.buffers()}.items()}
        config = json.loads(self.config.to_json())
        live = [{k: getattr(m, k) for k in _NORM_KEYS} for m in self.modules
                if isinstance(m, BatchNorm1d)]
        if any(n != {k: config[k] for k in _NORM_KEYS} for n in live):
            config["norms"] = live  # settings changed after construction, per BN layer
        state["config"] = np.array(json.dumps(config, sort_keys=True))
        return state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> MLP:
        """Rebuild the net of :meth:`get_state` exactly; every key and shape is checked."""
        cfg = read_config(state, "MLP")
        if cfg.pop("version", None) != STATE_VERSION:
            raise InputError(f"state['config']: expected an MLP state of version "
                             f"{STATE_VERSION}.")
        norms = cfg.pop("norms", None)
        try:
            net = cls(cfg.pop("sizes"), **cfg)
        except (TypeError, KeyError) as exc:
            raise InputError(f"state['config']: unexpected configuration ({exc}).") from None
        if norms is not None:
            _set_norms(net, norms)
        load_arrays(net, state)
        return net

    def _load_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state``'s arrays into the live ones (kept for callers of the old name)."""
        load_arrays(self, state)

    # ------------------------------------------------------------------ PyTorch
    @classmethod
    def from_torch(cls, module: Any, *, stats: str = "exact", seed: int = 0) -> MLP:  # type: ignore[override]
        """The MLP of a ``torch.nn.Sequential``: :func:`~bnprop.interop.torch.mlp_from_torch`."""
        from bnprop.interop.torch import mlp_from_torch

        return mlp_from_torch(module, stats=stats, seed=seed)
