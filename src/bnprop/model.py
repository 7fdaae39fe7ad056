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
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from bnprop import batchnorm as bn
from bnprop import layer as bnlayer
from bnprop._validate import InputError, check_array, check_choice, check_positive
from bnprop.activations import get_activation
from bnprop.loss import _softmax, _softmax_cross_entropy, check_labels

if TYPE_CHECKING:
    from bnprop.distributed import Communicator

DTYPES = ("float32", "float64")
RUNNING_MODES = ("ema", "average")
#: Rows per block in inference: bounds the activations held at once.
PREDICT_BLOCK_ROWS = 4096
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
    if not isinstance(seed, int | np.integer) or isinstance(seed, bool) or seed < 0:
        raise InputError(f"seed: expected an integer >= 0, got {seed!r} instead.")
    momentum_f = check_positive(momentum, "momentum")
    if momentum_f > 1:
        raise InputError(f"momentum: expected a number in (0, 1], got {momentum!r} instead.")
    return MLPConfig(
        sizes=tuple(int(s) for s in sizes_t),
        activation=get_activation(activation).name,  # type: ignore[arg-type]
        batchnorm=bool(batchnorm),
        stats=check_choice(stats, "stats", bnlayer.STATS_MODES),
        dtype=check_choice(dtype, "dtype", DTYPES),
        seed=int(seed),
        eps=check_positive(eps, "eps"),
        momentum=momentum_f,
        running=check_choice(running, "running", RUNNING_MODES),
        init_std=None if init_std is None else check_positive(init_std, "init_std"),
    )


@dataclass(eq=False)
class BNLayer:
    """Hidden layer with batch normalization (the handout's layer).

    Parameters ``W`` (n_out, n_in), ``gamma``, ``beta`` (n_out,); buffers
    ``running_mean``, ``running_var`` (n_out,) and ``num_batches_tracked`` (int64 scalar).
    """

    W: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    running_mean: np.ndarray
    running_var: np.ndarray
    num_batches_tracked: np.ndarray = field(default_factory=lambda: np.zeros((), np.int64))

    def parameters(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "gamma": self.gamma, "beta": self.beta}

    def buffers(self) -> dict[str, np.ndarray]:
        return {"running_mean": self.running_mean, "running_var": self.running_var,
                "num_batches_tracked": self.num_batches_tracked}


@dataclass(eq=False)
class DenseLayer:
    """Affine layer ``O W^T + b``: parameters ``W`` (n_out, n_in), ``b`` (n_out,)."""

    W: np.ndarray
    b: np.ndarray

    def parameters(self) -> dict[str, np.ndarray]:
        return {"W": self.W, "b": self.b}

    def buffers(self) -> dict[str, np.ndarray]:
        return {}


@dataclass(frozen=True, eq=False)
class DenseCache:
    """Forward quantities of a hidden layer without BN: input ``O``, ``A = O W^T + b``, ``Y``."""

    O: np.ndarray
    A: np.ndarray
    Y: np.ndarray


def _affine(O: np.ndarray, W: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``O W^T + b``, (m, n_out), in O's dtype."""
    A = O @ W.T
    A += b
    return A


def _affine_backward(
    dA: np.ndarray, O: np.ndarray, W: np.ndarray, *, need_dO: bool = True,
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Gradients of ``A = O W^T + b`` given ``dA``: ``dW = dA^T O``, ``db = sum_rows(dA)``,
    ``dO = dA W`` (skipped for the network's input)."""
    db = dA.sum(axis=0, dtype=np.float64).astype(dA.dtype, copy=False)
    return dA.T @ O, db, (dA @ W if need_dO else None)


def _check_X(X: object, n_features: int, dtype: np.dtype, *, training: bool) -> np.ndarray:
    X = check_array(X, "X", ndim=2, axes=("m", "n_features"), shape=(None, n_features),
                    dtype=dtype)
    if training and X.shape[0] < 2:
        raise InputError(
            f"X: got a training batch of {X.shape[0]} example"
            f"{'' if X.shape[0] == 1 else 's'}; training needs m >= 2 rows (the batch "
            "variance of one example is always 0, and nets without batch normalization "
            "refuse it too, so that every net accepts the same batches)."
        )
    return X


class MLP:
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
    ) -> None:
        cfg = _check_config(sizes, activation, batchnorm, stats, dtype, seed, eps, momentum,
                            running, init_std)
        self.config = cfg
        dt = np.dtype(cfg.dtype)
        rng = np.random.default_rng(cfg.seed)
        weights = []
        for n_in, n_out in zip(cfg.sizes[:-1], cfg.sizes[1:], strict=True):
            std = cfg.init_std if cfg.init_std is not None else 1.0 / np.sqrt(n_in)
            weights.append((rng.standard_normal((n_out, n_in)) * std).astype(dt))
        self.hidden: list[BNLayer | DenseLayer] = []
        for W in weights[:-1]:
            n_out = W.shape[0]
            if cfg.batchnorm:
                self.hidden.append(BNLayer(
                    W=W, gamma=np.ones(n_out, dt), beta=np.zeros(n_out, dt),
                    running_mean=np.zeros(n_out, dt), running_var=np.ones(n_out, dt),
                ))
            else:
                self.hidden.append(DenseLayer(W=W, b=np.zeros(n_out, dt)))
        self.out = DenseLayer(W=weights[-1], b=np.zeros(weights[-1].shape[0], dt))
        #: train_step's path when not given: bnprop.fast's preallocated step (True) or the
        #: reference (False). Not part of the state: a run chooses it, the model does not.
        self.fast_step = False
        self._fast: Any = None  # the bnprop.fast.FastStep, made by the first fast step

    # ------------------------------------------------------------------ description
    @property
    def sizes(self) -> tuple[int, ...]:
        return self.config.sizes

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.config.dtype)

    @property
    def n_classes(self) -> int:
        return self.config.sizes[-1]

    def __repr__(self) -> str:
        c = self.config
        return (f"MLP({c.sizes}, activation={c.activation!r}, batchnorm={c.batchnorm}, "
                f"stats={c.stats!r}, dtype={c.dtype!r})")

    def _layers(self) -> list[tuple[str, BNLayer | DenseLayer]]:
        return [(f"hidden.{i}", layer) for i, layer in enumerate(self.hidden)] + [
            ("out", self.out)]

    def parameters(self) -> dict[str, np.ndarray]:
        """The live parameter arrays (not copies), e.g. ``"hidden.0.W"``, ``"out.b"``.

        Names: ``hidden.<l>.W``, ``hidden.<l>.gamma``, ``hidden.<l>.beta`` (batchnorm) or
        ``hidden.<l>.b`` (no batchnorm), ``out.W``, ``out.b``. Updating them in place
        updates the net.
        """
        return {f"{prefix}.{k}": v for prefix, layer in self._layers()
                for k, v in layer.parameters().items()}

    def buffers(self) -> dict[str, np.ndarray]:
        """The live running statistics: ``hidden.<l>.running_mean``, ``.running_var``,
        ``.num_batches_tracked`` (int64 scalar) per batch-normalized layer."""
        return {f"{prefix}.{k}": v for prefix, layer in self._layers()
                for k, v in layer.buffers().items()}

    # ------------------------------------------------------------------ training
    def _forward_train(
        self, X: np.ndarray, comm: Communicator | None = None,
    ) -> tuple[np.ndarray, list[Any], np.ndarray]:
        """Training-mode forward on a validated ``X``: ``(logits, caches, H)``.

        ``caches[l]`` is the :class:`~bnprop.layer.LayerCache` (BN) or :class:`DenseCache`
        of hidden layer l; ``H`` is the input of the output layer. Updates the running
        statistics. ``comm``: the BN layers use the statistics of the global batch (SyncBN).
        """
        cfg = self.config
        act = get_activation(cfg.activation)
        caches: list[Any] = []
        O = X
        for layer in self.hidden:
            if isinstance(layer, BNLayer):
                cache = bnlayer._forward(O, layer.W, layer.gamma, layer.beta,
                                         cfg.activation, cfg.eps, comm=comm)
                self._update_running(layer, cache.mu, cache.var, cache.m_global)
                O = cache.Y
            else:
                A = _affine(O, layer.W, layer.b)
                cache = DenseCache(O=O, A=A, Y=act.forward(A))
                O = cache.Y
            caches.append(cache)
        return _affine(O, self.out.W, self.out.b), caches, O

    def _update_running(self, layer: BNLayer, mu_B: np.ndarray, var_B: np.ndarray,
                        m: int) -> None:
        """One step of the running statistics (module docstring), in place."""
        layer.num_batches_tracked += 1
        k = int(layer.num_batches_tracked)
        momentum = self.config.momentum if self.config.running == "ema" else 1.0 / k
        layer.running_mean[...] = bn.running_update(layer.running_mean, mu_B, momentum)
        layer.running_var[...] = bn.running_update(
            layer.running_var, bn.unbiased_var(var_B, m), momentum)

    def _backward(
        self, dlogits: np.ndarray, caches: list[Any], H: np.ndarray,
    ) -> dict[str, np.ndarray]:
        """Every parameter gradient from ``dlogits = dF/dlogits``, keyed as :meth:`parameters`."""
        grads: dict[str, np.ndarray] = {}
        dW, db, dO = _affine_backward(dlogits, H, self.out.W, need_dO=bool(self.hidden))
        grads["out.W"], grads["out.b"] = dW, db
        act = get_activation(self.config.activation)
        for i in range(len(self.hidden) - 1, -1, -1):
            layer, cache = self.hidden[i], caches[i]
            if isinstance(layer, BNLayer):
                g = bnlayer._backward(dO, cache, self.config.stats)
                grads[f"hidden.{i}.W"] = g.dW
                grads[f"hidden.{i}.gamma"] = g.dgamma
                grads[f"hidden.{i}.beta"] = g.dbeta
                dO = g.dO
            else:
                dA = act.backward(dO, cache.A, cache.Y)
                dW, db, dO = _affine_backward(dA, cache.O, layer.W, need_dO=i > 0)
                grads[f"hidden.{i}.W"], grads[f"hidden.{i}.b"] = dW, db
        params = self.parameters()
        return {k: grads[k] for k in params}

    def _check_batch(self, X: object, y: object) -> tuple[np.ndarray, np.ndarray]:
        X = _check_X(X, self.sizes[0], self.dtype, training=True)
        return X, check_labels(y, "y", X.shape[0], self.n_classes)

    def loss_and_grads(
        self, X: object, y: object, *, comm: Communicator | None = None,
        m_global: int | None = None, sync_bn: bool = True,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """Training-mode forward and backward on one batch; the parameters are not changed.

        Uses the batch statistics and updates the running statistics.

        Parameters
        ----------
        X : array_like of shape (m, sizes[0]), m >= 2
            With ``comm``: this process's rows of the global batch (m_p >= 1; >= 2 with
            ``sync_bn=False``).
        y : array_like of int, shape (m,)
            Labels in ``0..sizes[-1]-1``.
        comm : Communicator, optional
            Data-parallel step over ``comm.size`` processes (module docstring); every
            process calls with its rows and the same parameters. A communicator of one
            process is the same as none.
        m_global : int, optional
            Rows of the global batch, ``sum_p m_p``; with ``comm`` and not given, found by
            one more (small) collective.
        sync_bn : bool, default=True
            With ``comm``: statistics of the global batch (True) or of this process's rows.

        Returns
        -------
        loss : float
            Mean cross-entropy of the (global) batch, the same on every process.
        grads : dict of str to ndarray
            Gradients of the loss, keyed and shaped as :meth:`parameters`; with ``comm``,
            those of the global batch, the same on every process.
        """
        if comm is not None and getattr(comm, "size", None) != 1:
            return self._loss_and_grads_distributed(X, y, comm, m_global, sync_bn)
        X, y = self._check_batch(X, y)
        if m_global is not None and m_global != X.shape[0]:
            raise InputError(f"m_global: expected the {X.shape[0]} rows of X in one process, "
                             f"got {m_global!r} instead.")
        logits, caches, H = self._forward_train(X)
        loss, dlogits = _softmax_cross_entropy(logits, y, X.shape[0])
        return loss, self._backward(dlogits, caches, H)

    def _loss_and_grads_distributed(
        self, X: object, y: object, comm: Communicator, m_global: int | None, sync_bn: bool,
    ) -> tuple[float, dict[str, np.ndarray]]:
        """:meth:`loss_and_grads` on this process's rows (module docstring, Data parallel)."""
        from bnprop.distributed import Communicator, allreduce_packed

        if not isinstance(comm, Communicator):
            raise InputError(
                "comm: expected a bnprop.distributed.Communicator (SingleProcess, MPIComm, "
                f"ThreadComm), got {type(comm).__name__} instead."
            )
        if not isinstance(sync_bn, bool | np.bool_):
            raise InputError(f"sync_bn: expected True or False, got {sync_bn!r} instead.")
        X = _check_X(X, self.sizes[0], self.dtype, training=False)
        y = check_labels(y, "y", X.shape[0], self.n_classes)
        local_bn = self.config.batchnorm and not sync_bn
        if X.shape[0] < (2 if local_bn else 1):
            raise InputError(
                f"X: got {X.shape[0]} rows on process {comm.rank} of {comm.size}; every "
                "process needs " + ("2 rows with local batch statistics (sync_bn=False)"
                                    if local_bn else "at least one row of the global batch")
                + " (split it with bnprop.distributed.shard)."
            )
        if m_global is None:
            m_global = int(comm.allreduce_sum(np.array([float(X.shape[0])]))[0])
        if isinstance(m_global, bool) or not isinstance(m_global, int | np.integer) \
                or m_global < 2:
            raise InputError(f"m_global: expected the global batch size, an int >= 2, got "
                             f"{m_global!r} instead.")
        bn_comm = comm if sync_bn else None
        logits, caches, H = self._forward_train(X, bn_comm)
        for cache in caches:  # SyncBN counted the global rows: a wrong m_global would not be
            if bn_comm is not None and isinstance(cache, bnlayer.LayerCache):
                if cache.m_global != m_global:  # the same on every process: all raise
                    raise InputError(f"m_global: the processes hold {cache.m_global} rows "
                                     f"in all, got m_global={m_global}.")
                break
        loss, dlogits = _softmax_cross_entropy(logits, y, m_global)
        grads = self._backward(dlogits, caches, H)
        # SyncBN layers return dgamma, dbeta already summed over the processes.
        reduced_by_layer = {f"hidden.{i}.{k}" for i, layer in enumerate(self.hidden)
                            if isinstance(layer, BNLayer) and bn_comm is not None
                            for k in ("gamma", "beta")}
        local = [k for k in grads if k not in reduced_by_layer]
        totals, (loss,) = allreduce_packed(comm, [grads[k] for k in local], [loss])
        grads.update(zip(local, totals, strict=True))
        return loss, grads

    def train_step(
        self, X: object, y: object, optimizer: Any, *, comm: Communicator | None = None,
        m_global: int | None = None, sync_bn: bool = True, fast: bool | None = None,
    ) -> float:
        """:meth:`loss_and_grads`, then ``optimizer.step(self.parameters(), grads)``.

        Returns the batch loss (before the update). ``comm``, ``m_global``, ``sync_bn``: a
        data-parallel step, as in :meth:`loss_and_grads`; every process then takes the same
        optimizer step on the same global gradients, so the parameters stay identical.
        ``fast=True``: with batch normalization and no communicator (or one of one
        process), the preallocated step of :mod:`bnprop.fast` (fused kernels, buffers kept
        per batch shape; the same step to rounding, not bit for bit); ``fast=False``, no
        batch normalization or a data-parallel step: the reference path above.
        ``fast=None``: the attribute ``self.fast_step`` (False unless set; ``bnprop
        train`` sets it).
        """
        if fast is None:
            fast = self.fast_step
        if (fast and self.config.batchnorm and m_global is None
                and (comm is None or getattr(comm, "size", None) == 1)):
            if self._fast is None:
                from bnprop.fast import FastStep

                self._fast = FastStep(self)
            return self._fast.train_step(X, y, optimizer)
        loss, grads = self.loss_and_grads(X, y, comm=comm, m_global=m_global, sync_bn=sync_bn)
        optimizer.step(self.parameters(), grads)
        return loss

    # ------------------------------------------------------------------ inference
    def _logits_inference(
        self, X: np.ndarray, collect: list[np.ndarray] | None = None,
    ) -> np.ndarray:
        """Inference-mode logits of a validated block: BN with the running statistics.

        When ``collect`` is a list, each hidden layer's activation input ``A`` is appended.
        """
        cfg = self.config
        act = get_activation(cfg.activation)
        O = X
        for layer in self.hidden:
            if isinstance(layer, BNLayer):
                inv_std = bn.inverse_std(layer.running_var, cfg.eps)
                A = bn.normalize(O @ layer.W.T, layer.running_mean, inv_std)
                A *= layer.gamma
                A += layer.beta
            else:
                A = _affine(O, layer.W, layer.b)
            if collect is not None:
                collect.append(A)
            O = act.forward(A)
        return _affine(O, self.out.W, self.out.b)

    def hidden_inputs(self, X: object) -> list[np.ndarray]:
        """Inference-mode input ``A`` of every hidden layer's activation, ``[(m, n_l), ...]``.

        With BN, ``A = gamma * (O W^T - running_mean) / sqrt(running_var + eps) + beta``
        (after gamma and beta); without, ``A = O W^T + b``. These are the "inputs to a
        sigmoid" of Ioffe & Szegedy's Figure 1 (b, c).
        """
        X = _check_X(X, self.sizes[0], self.dtype, training=False)
        collected: list[np.ndarray] = []
        self._logits_inference(X, collected)
        return collected

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities in inference mode (running statistics), (m, n_classes).

        Computed in blocks of :data:`PREDICT_BLOCK_ROWS` rows, in the net's dtype.
        """
        X = _check_X(X, self.sizes[0], self.dtype, training=False)
        return _blocked_proba(self._logits_inference, X, self.n_classes)

    def predict(self, X: object) -> np.ndarray:
        """Predicted labels ``argmax_k P_ik``, int64 (m,)."""
        return self.predict_proba(X).argmax(axis=1)

    def accuracy(self, X: object, y: object) -> float:
        """Fraction of rows whose predicted label equals ``y``."""
        pred = self.predict(X)
        y = check_labels(y, "y", pred.shape[0], self.n_classes)
        return float(np.mean(pred == y)) if pred.shape[0] else float("nan")

    def fold(self) -> FoldedMLP:
        """The inference network with each BN folded into its linear map.

        ``W_fold = diag(gamma / sqrt(running_var + eps)) W``,
        ``b_fold = beta - gamma * running_mean / sqrt(running_var + eps)``; hidden layers
        without BN and the output layer are copied.
        """
        layers = []
        for layer in self.hidden:
            if isinstance(layer, BNLayer):
                layers.append(bn.fold(layer.W, layer.gamma, layer.beta,
                                      layer.running_mean, layer.running_var, self.config.eps))
            else:
                layers.append((layer.W.copy(), layer.b.copy()))
        layers.append((self.out.W.copy(), self.out.b.copy()))
        return FoldedMLP(layers, activation=self.config.activation)

    # ------------------------------------------------------------------ state
    def get_state(self) -> dict[str, np.ndarray]:
        """Copies of every parameter and buffer, and ``"config"``: the configuration as a
        JSON string in a 0-d unicode array (no object arrays: loads with allow_pickle=False).
        """
        state = {k: v.copy() for k, v in {**self.parameters(), **self.buffers()}.items()}
        state["config"] = np.array(self.config.to_json())
        return state

    @classmethod
    def from_state(cls, state: dict[str, np.ndarray]) -> MLP:
        """Rebuild the net of :meth:`get_state` exactly; every key and shape is checked."""
        if not hasattr(state, "keys") or "config" not in state:
            raise InputError("state: expected the dict of MLP.get_state(), with key 'config'.")
        raw = np.asarray(state["config"])
        if raw.dtype.kind != "U" or raw.shape != ():
            raise InputError(
                f"state['config']: expected a 0-d unicode array holding JSON, got dtype "
                f"{raw.dtype} and shape {raw.shape} instead."
            )
        try:
            cfg = json.loads(str(raw))
            version = cfg.pop("version")
        except (ValueError, KeyError, AttributeError) as exc:
            raise InputError(f"state['config']: not a JSON MLP configuration ({exc}).") from None
        if version != STATE_VERSION:
            raise InputError(f"state['config']: expected version {STATE_VERSION}, got {version!r}.")
        try:
            net = cls(cfg.pop("sizes"), **cfg)
        except TypeError as exc:
            raise InputError(f"state['config']: unexpected configuration ({exc}).") from None
        net._load_arrays(state)
        return net

    def _load_arrays(self, state: dict[str, np.ndarray]) -> None:
        """Copy ``state``'s arrays into the live ones; each key and shape is checked."""
        expected = {**self.parameters(), **self.buffers()}
        extra = sorted(set(state.keys()) - set(expected) - {"config"})
        if extra:
            raise InputError(f"state: unexpected key {extra[0]!r} for {self!r}.")
        for key, live in expected.items():
            if key not in state:
                raise InputError(f"state: missing key {key!r} for {self!r}.")
            if key.endswith("num_batches_tracked"):
                arr = np.asarray(state[key])
                if arr.shape != () or arr.dtype.kind not in "iu" or int(arr) < 0:
                    raise InputError(f"{key}: expected an integer scalar >= 0, got dtype "
                                     f"{arr.dtype} and shape {arr.shape} instead.")
                live[...] = int(arr)
                continue
            arr = check_array(state[key], key, ndim=live.ndim, shape=live.shape, dtype=live.dtype)
            if key.endswith("running_var") and (arr < 0).any():
                raise InputError(f"{key}: expected variances >= 0, got {arr.min()}.")
            live[...] = arr

    # ------------------------------------------------------------------ PyTorch
    def to_torch(self) -> Any:
        """The net as a ``torch.nn.Sequential``: :func:`~bnprop.interop.torch.mlp_to_torch`."""
        from bnprop.interop.torch import mlp_to_torch

        return mlp_to_torch(self)

    @classmethod
    def from_torch(cls, module: Any, *, stats: str = "exact", seed: int = 0) -> MLP:
        """The MLP of a ``torch.nn.Sequential``: :func:`~bnprop.interop.torch.mlp_from_torch`."""
        from bnprop.interop.torch import mlp_from_torch

        return mlp_from_torch(module, stats=stats, seed=seed)


def _blocked_proba(logits_fn: Any, X: np.ndarray, n_classes: int) -> np.ndarray:
    """``softmax(logits_fn(X_block))`` for blocks of :data:`PREDICT_BLOCK_ROWS` rows."""
    P = np.empty((X.shape[0], n_classes), dtype=X.dtype)
    for start in range(0, X.shape[0], PREDICT_BLOCK_ROWS):
        block = slice(start, start + PREDICT_BLOCK_ROWS)
        P[block] = _softmax(logits_fn(X[block]))
    return P


class FoldedMLP:
    """Inference network of :meth:`MLP.fold`: ``O <- sigma(O W_l^T + b_l)``, then softmax.

    Parameters
    ----------
    layers : list of (W, b)
        Hidden layers (BN folded in) then the output layer, ``W`` (n_out, n_in).
    activation : str
        Activation of the hidden layers.
    """

    def __init__(self, layers: list[tuple[np.ndarray, np.ndarray]], *, activation: str) -> None:
        self.layers = layers
        self.activation = get_activation(activation).name

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
            O = act.forward(_affine(O, W, b))
        return _affine(O, *self.layers[-1])

    def predict_proba(self, X: object) -> np.ndarray:
        """Class probabilities (m, n_classes), in blocks, in the net's dtype."""
        X = _check_X(X, self.sizes[0], self.dtype, training=False)
        return _blocked_proba(self._logits, X, self.sizes[-1])

    def predict(self, X: object) -> np.ndarray:
        """Predicted labels, int64 (m,)."""
        return self.predict_proba(X).argmax(axis=1)

    def accuracy(self, X: object, y: object) -> float:
        """Fraction of rows whose predicted label equals ``y``."""
        pred = self.predict(X)
        y = check_labels(y, "y", pred.shape[0], self.sizes[-1])
        return float(np.mean(pred == y)) if pred.shape[0] else float("nan")
