"""``bnprop trace``: every quantity of one layer's forward and backward pass, with its formula.

The layer is drawn from ``numpy.random.default_rng(seed)``, in this order (the draws of
``bnprop check``'s first trial)::

    O     ~ N(0, 1)          (m, n_in)     input o^(l-1)
    W     ~ N(0, 1)          (n_out, n_in)
    gamma ~ U(0.5, 2)        (n_out,)
    beta  ~ N(0, 0.5^2)      (n_out,)
    dY    ~ N(0, 1)          (m, n_out)    the upstream gradient dF/dY, so F = sum(dY * Y)

Every number comes from the public :func:`bnprop.layer_forward` and
:func:`bnprop.layer_backward` (``stats="exact"`` and ``stats="frozen"``). The exact ``dZ``
is the frozen one minus two terms (docs/math.md), shown apart::

    dZ_exact = dZ_frozen - shift - proj
    shift    = gamma * inv_std * mean_rows(dA)                 (n_out,), every row
    proj     = gamma * inv_std * Obar * mean_rows(dA * Obar)   (m, n_out)

built from the library's ``dbeta = sum_rows(dA)`` and ``dgamma = sum_rows(dA * Obar)``.
The Jacobian of one feature's column ``A[:, p]`` w.r.t. ``Z[:, p]`` is
:func:`bnprop.jacobians.stated_dA_dZ_training`'s.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from bnprop._validate import InputError
from bnprop._validate import check_seed as _check_seed
from bnprop.activations import get_activation
from bnprop.check import _random_layer
from bnprop.jacobians import stated_dA_dZ_training
from bnprop.layer import LayerCache, LayerGrads, layer_backward, layer_forward

#: Largest sizes the trace accepts: every matrix must fit on a screen and on the page.
MAX_M, MAX_N_IN, MAX_N_OUT = 10, 8, 8

#: Decimals of every number the terminal and the page display.
DECIMALS = 6


@dataclass(frozen=True)
class Quantity:
    """One named array of the trace.

    Attributes
    ----------
    name : str
        The library's name (``Z``, ``mu_B``, ``dZ_exact``, ...).
    formula : str
        Its right-hand side in ASCII, e.g. ``"O W^T"``; ``*`` is element-wise (broadcast
        over rows), juxtaposition a matrix product. Rendered by :mod:`bnprop.trace_mathml`.
    value : ndarray
    stage : {"input", "forward", "backward"}
    note : str
        What the formula does not say (where the number came from).
    """

    name: str
    formula: str
    value: np.ndarray
    stage: str
    note: str = ""


@dataclass(frozen=True)
class Trace:
    """One traced layer: its inputs, the library's cache and gradients, every quantity.

    Attributes
    ----------
    seed : int
    activation : str
    eps : float
    cache : LayerCache
        ``layer_forward(O, W, gamma, beta, activation=..., eps=...)``.
    exact, frozen : LayerGrads
        ``layer_backward(dY, cache, stats="exact")`` and ``stats="frozen"``.
    quantities : dict of str to Quantity
        Inputs, forward, backward, in the order they are computed.
    feature : int
        The feature ``p`` whose Jacobian ``jacobian`` is.
    jacobian : ndarray (m, m)
        ``dA[:, p] / dZ[:, p] = gamma_p inv_std_p (I - 1 1^T/m - Obar_p Obar_p^T/m)``.
    """

    seed: int
    activation: str
    eps: float
    cache: LayerCache
    exact: LayerGrads
    frozen: LayerGrads
    quantities: dict[str, Quantity]
    feature: int
    jacobian: np.ndarray

    @property
    def sizes(self) -> tuple[int, int, int]:
        """``(m, n_in, n_out)``."""
        return self.cache.m, self.cache.W.shape[1], self.cache.W.shape[0]

    def to_text(self) -> str:
        """The trace as aligned text (what ``bnprop trace`` prints)."""
        return trace_text(self)


#: Right-hand side of every computed quantity, in the notation of :mod:`bnprop.trace_mathml`.
FORMULAS = {
    "Z": "O W^T",
    "mu_B": "mean_rows(Z)",
    "var_B": "mean_rows((Z - mu_B)^2)",
    "inv_std": "1 / sqrt(var_B + eps)",
    "Obar": "(Z - mu_B) * inv_std",
    "A": "gamma * Obar + beta",
    "Y": "sigma(A)",
    "dY": "dF / dY",
    "dA": "sigma'(A) * dY",
    "dgamma": "sum_rows(dA * Obar)",
    "dbeta": "sum_rows(dA)",
    "dZ_frozen": "gamma * inv_std * dA",
    "shift": "gamma * inv_std * mean_rows(dA)",
    "proj": "gamma * inv_std * Obar * mean_rows(dA * Obar)",
    "dZ_exact": "gamma * inv_std * (dA - mean_rows(dA) - Obar * mean_rows(dA * Obar))",
    "dW_frozen": "dZ_frozen^T O",
    "dW_exact": "dZ_exact^T O",
    "dO": "dZ_exact W",
}

JACOBIAN_FORMULA = ("gamma_p inv_std_p (I - (1 1^T) / m - (Obar_p Obar_p^T) / m)")


def check_trace_sizes(sizes: object) -> tuple[int, int, int]:
    """Parse ``"m,n_in,n_out"`` (or a 3-sequence of ints); m >= 2, each within its maximum."""
    try:
        parts = [int(s) for s in (sizes.split(",") if isinstance(sizes, str) else sizes)]  # type: ignore[union-attr]
        if len(parts) != 3:
            raise ValueError
    except (TypeError, ValueError):
        raise InputError(
            f"sizes: expected three positive integers m,n_in,n_out (e.g. 4,3,2), "
            f"got {sizes!r} instead."
        ) from None
    m, n_in, n_out = parts
    if m < 2 or n_in < 1 or n_out < 1:
        raise InputError(
            f"sizes: need m >= 2 (a batch of one has no variance), n_in >= 1 and n_out >= 1; "
            f"got m={m}, n_in={n_in}, n_out={n_out} instead."
        )
    if m > MAX_M or n_in > MAX_N_IN or n_out > MAX_N_OUT:
        raise InputError(
            f"sizes: the trace prints every number, so it keeps m <= {MAX_M}, "
            f"n_in <= {MAX_N_IN} and n_out <= {MAX_N_OUT}; got m={m}, n_in={n_in}, "
            f"n_out={n_out} instead (bnprop grad takes any size)."
        )
    return m, n_in, n_out


def check_seed(seed: object) -> int:
    """An integer >= 0 (or its decimal text, as the command line gives it):
    :func:`bnprop._validate.check_seed`."""
    return _check_seed(int(seed) if isinstance(seed, str) and seed.isdigit() else seed)


def run_trace(
    sizes: tuple[int, int, int] | str = (4, 3, 2),
    *,
    seed: int | str = 0,
    activation: str = "sigmoid",
    eps: float = 1e-5,
    feature: int = 0,
) -> Trace:
    """Draw one layer from ``seed`` and trace its forward and backward pass.

    Parameters
    ----------
    sizes : (m, n_in, n_out) or "m,n_in,n_out", default=(4, 3, 2)
        m >= 2; at most ``MAX_M``, ``MAX_N_IN``, ``MAX_N_OUT``.
    seed : int or str, default=0
        An integer >= 0 (decimal text is read): the seed of ``numpy.random.default_rng``;
        the draws are in the module docstring.
    activation : {"sigmoid", "tanh", "relu", "identity"}, default="sigmoid"
    eps : float, default=1e-5
    feature : int, default=0
        The feature p whose (m, m) Jacobian dA[:, p] / dZ[:, p] is kept.

    Returns
    -------
    Trace
    """
    m, n_in, n_out = check_trace_sizes(sizes)
    act = get_activation(activation)
    seed = check_seed(seed)
    if isinstance(feature, bool) or not isinstance(feature, int | np.integer) \
            or not 0 <= feature < n_out:
        raise InputError(
            f"feature: expected an integer in [0, {n_out}) (n_out = {n_out}), "
            f"got {feature!r} instead."
        )
    O, W, gamma, beta, dY = _random_layer(np.random.default_rng(int(seed)), m, n_in, n_out)
    cache = layer_forward(O, W, gamma, beta, activation=act.name, eps=eps)
    exact = layer_backward(dY, cache, stats="exact")
    frozen = layer_backward(dY, cache, stats="frozen")
    return Trace(
        seed=int(seed), activation=act.name, eps=cache.eps, cache=cache, exact=exact,
        frozen=frozen, quantities=_quantities(cache, exact, frozen, dY), feature=int(feature),
        jacobian=stated_dA_dZ_training(cache)[feature],
    )


def _quantities(
    c: LayerCache, exact: LayerGrads, frozen: LayerGrads, dY: np.ndarray,
) -> dict[str, Quantity]:
    """Every quantity, in the order of computation, each array the library's own."""
    scale = c.gamma * c.inv_std
    m = c.m
    drawn = "drawn from the seed"
    rows = [
        ("O", c.O, "input", f"{drawn}: N(0, 1); the input o^(l-1), one example a row"),
        ("W", c.W, "input", f"{drawn}: N(0, 1); no bias (beta is the bias)"),
        ("gamma", c.gamma, "input", f"{drawn}: U(0.5, 2)"),
        ("beta", c.beta, "input", f"{drawn}: N(0, 0.5^2)"),
        ("Z", c.Z, "forward", ""),
        ("mu_B", c.mu, "forward", "cache.mu"),
        ("var_B", c.var, "forward", "cache.var: biased (1/m), two passes in float64"),
        ("inv_std", c.inv_std, "forward", f"eps = {c.eps:g}"),
        ("Obar", c.Obar, "forward", ""),
        ("A", c.A, "forward", ""),
        ("Y", c.Y, "forward", f"sigma = {c.activation}"),
        ("dY", dY, "backward", f"the upstream gradient, {drawn}: N(0, 1); so F = sum(dY * Y)"),
        ("dA", exact.dA, "backward", "handout (1)"),
        ("dgamma", exact.dgamma, "backward", "handout (2)"),
        ("dbeta", exact.dbeta, "backward", "handout (3)"),
        ("dZ_frozen", frozen.dZ, "backward",
         "handout (4): mu_B and var_B held fixed; layer_backward(stats='frozen')"),
        ("shift", scale * (exact.dbeta / m), "backward",
         "the first term the exact dZ subtracts, the same for every row: "
         "gamma * inv_std * dbeta / m"),
        ("proj", scale * c.Obar * (exact.dgamma / m), "backward",
         "the second term the exact dZ subtracts, along Obar: gamma * inv_std * Obar * dgamma / m"),
        ("dZ_exact", exact.dZ, "backward",
         "through mu_B and var_B: = dZ_frozen - shift - proj; layer_backward(stats='exact')"),
        ("dW_frozen", frozen.dW, "backward", "handout (4)"),
        ("dW_exact", exact.dW, "backward", "the true gradient of F"),
        ("dO", exact.dO, "backward", "passed on to layer l-1"),
    ]
    return {name: Quantity(name, FORMULAS.get(name, ""), np.asarray(value), stage, note)
            for name, value, stage, note in rows}


def fmt(x: float) -> str:
    """One number as displayed, ``DECIMALS`` decimals (``-0`` shown as ``0``)."""
    text = f"{x:.{DECIMALS}f}"
    return text[1:] if text.startswith("-") and not text.strip("-0.") else text


def matrix_lines(a: np.ndarray, indent: str = "    ") -> list[str]:
    """The rows of a 1D or 2D array as lines of right-aligned numbers."""
    rows = np.atleast_2d(a)
    cells = [[fmt(float(x)) for x in row] for row in rows]
    width = max(len(s) for row in cells for s in row)
    return [indent + "  ".join(s.rjust(width) for s in row) for row in cells]


def relative_difference(a: np.ndarray, b: np.ndarray) -> float:
    """``||a - b|| / ||b||`` (Frobenius), ``||a - b||`` when ``b`` is 0."""
    ref = float(np.linalg.norm(b))
    diff = float(np.linalg.norm(np.asarray(a) - b))
    return diff / ref if ref > 0 else diff


def header_lines(t: Trace) -> list[str]:
    """What was traced, and how the layer was drawn."""
    m, n_in, n_out = t.sizes
    return [
        f"bnprop trace: one layer, m={m}, n_in={n_in}, n_out={n_out}, "
        f"activation={t.activation}, eps={t.eps:g}, seed={t.seed}, dtype={t.cache.A.dtype}",
        f"drawn from numpy.random.default_rng({t.seed}): O, W, gamma, beta, then the "
        "upstream gradient dY = dF/dY (F = sum(dY * Y)).",
        "every number is bnprop.layer_forward's or bnprop.layer_backward's "
        "(stats='exact' and 'frozen').",
        "'*' is element-wise (a vector of n_out broadcast over the rows); juxtaposition "
        "is a matrix product.",
    ]


def trace_text(t: Trace) -> str:
    """Every quantity: ``name = formula`` with its shape and note, then its numbers."""
    width = max(len(q.name) for q in t.quantities.values())
    shape_width = max(len(str(q.value.shape)) for q in t.quantities.values())
    lines = header_lines(t)
    stage = ""
    for q in t.quantities.values():
        if q.stage != stage:
            stage = q.stage
            lines += ["", f"== {stage} " + "=" * (60 - len(stage))]
        rhs = q.formula or "(given)"
        lines.append(f"{q.name:<{width}}  {q.value.shape!s:<{shape_width}}  = {rhs}")
        if q.note:
            lines.append(f"{'':<{width + shape_width + 6}}{q.note}")
        lines += matrix_lines(q.value)
    p = t.feature
    lines += ["", "== frozen vs exact " + "=" * 42]
    for name in ("dZ", "dW"):
        f, e = getattr(t.frozen, name), getattr(t.exact, name)
        lines.append(f"{name}_exact - {name}_frozen    relative difference "
                     f"||{name}_exact - {name}_frozen|| / ||{name}_exact|| = "
                     f"{relative_difference(f, e):.3g}")
        lines += matrix_lines(e - f)
    J_err = float(np.max(np.abs(t.jacobian.T @ t.exact.dA[:, p] - t.exact.dZ[:, p])))
    lines += ["", f"== Jacobian of feature p={p} " + "=" * 33,
              f"dA[:, {p}] / dZ[:, {p}] = {JACOBIAN_FORMULA}    {t.jacobian.shape}",
              f"{'':<{width + shape_width + 6}}chain rule: J^T dA[:, {p}] = dZ_exact[:, {p}] "
              f"(max difference {J_err:.1e})"]
    lines += matrix_lines(t.jacobian)
    return "\n".join(lines)
