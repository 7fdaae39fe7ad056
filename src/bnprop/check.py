"""``bnprop check``: each statement of the handout, tested on random layers.

For every statement the handout makes, the report gives the maximum normwise relative
error ``max|stated - reference| / max|reference|`` over a few random layers, where the
reference is central finite differences of the real forward function (float64) and,
when torch is importable, PyTorch autograd. A statement holds when the error is below
``FD_TOL`` against finite differences and ``AUTOGRAD_TOL`` against autograd.

The objective is ``F = sum(dY * Y)`` for a random ``dY``, so ``dF/dY = dY``.

Part (4) is checked twice: ``4-frozen`` against the function with ``mu_B`` and ``var_B``
held fixed (what the handout differentiates: it holds) and ``4-training`` against the
true training-mode function, whose statistics depend on W (it does not hold).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from bnprop import jacobians as jac
from bnprop._validate import InputError, check_seed
from bnprop.activations import get_activation
from bnprop.layer import LayerCache, _backward, _forward

#: Central differences in float64 are good to about 1e-9 here; 1e-6 leaves room.
FD_TOL = 1e-6
#: Autograd and bnprop are both exact up to rounding in float64.
AUTOGRAD_TOL = 1e-10
#: Jacobians are materialized for at most this many rows of each batch.
JACOBIAN_ROWS = 8
#: Random layers used to measure erratum 5 (the frozen gradient in training).
ERRATUM_LAYERS = 1000


@dataclass
class Statement:
    """One statement of the handout and how well it holds."""

    id: str
    claim: str
    holds: bool
    max_rel_error: float
    errors: dict[str, float] = field(default_factory=dict)


@dataclass
class CheckReport:
    """Statements, errata and the exact gradient's own errors."""

    statements: list[Statement]
    errata: list[str]
    exact: dict[str, float]
    config: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        """``{"statements": [...], "errata": [...]}``, as ``bnprop check --json`` prints."""
        return {"statements": [asdict(s) for s in self.statements], "errata": list(self.errata)}

    def to_text(self) -> str:
        """The table ``bnprop check`` prints."""
        cfg = self.config
        m, n_in, n_out = cfg["sizes"]
        lines = [
            f"The handout's statements on {cfg['trials']} random {m} x {n_in} -> {n_out} "
            f"{cfg['activation']} layers (seed {cfg['seed']}, float64, eps {cfg['eps']:g}).",
            "Error: max|stated - reference| / max|reference|; references: central finite "
            f"differences (FD){', PyTorch ' + cfg['torch'] + ' autograd' if cfg['torch'] else ''}.",
            "",
        ]
        header = f"{'statement':<11} {'FD error':>9} {'autograd':>9}  verdict   claim"
        lines += [header, "-" * len(header)]
        for s in self.statements:
            fd = _fmt(s.errors.get("finite_differences"))
            ag = _fmt(s.errors.get("autograd"))
            verdict = "holds" if s.holds else "FAILS"
            lines.append(f"{s.id:<11} {fd:>9} {ag:>9}  {verdict:<8}  {s.claim}")
        lines += [
            "",
            "bnprop's exact gradient (docs/math.md), same layers: "
            + ", ".join(f"{k} {_fmt(v)}" for k, v in self.exact.items()),
            "",
            "Errata (docs/math.md), measured here:",
        ]
        lines += [f"  {i}. {e}" for i, e in enumerate(self.errata, 1)]
        return "\n".join(lines)


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.1e}"


def _random_layer(
    rng: np.random.Generator, m: int, n_in: int, n_out: int, *, unit_affine: bool = False,
) -> tuple[np.ndarray, ...]:
    O = rng.standard_normal((m, n_in))
    W = rng.standard_normal((n_out, n_in))
    if unit_affine:
        gamma, beta = np.ones(n_out), np.zeros(n_out)
    else:
        gamma = rng.uniform(0.5, 2.0, n_out)
        beta = rng.normal(0.0, 0.5, n_out)
    dY = rng.standard_normal((m, n_out))
    return O, W, gamma, beta, dY


def _objective(cache: LayerCache, dY: np.ndarray) -> Callable[[np.ndarray], float]:
    """``A -> F = sum(dY * sigma(A))``."""
    act = get_activation(cache.activation)
    return lambda A: float(np.sum(dY * act.forward(A)))


def _torch_version() -> str | None:
    try:
        import torch
    except ImportError:
        return None
    return str(torch.__version__)


def check_sizes(sizes: object) -> tuple[int, int, int]:
    """Parse ``"m,n_in,n_out"`` (or a 3-tuple) and bound it so the check stays quick."""
    try:
        parts = [int(s) for s in (sizes.split(",") if isinstance(sizes, str) else sizes)]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InputError(
            f"sizes: expected three integers m,n_in,n_out (e.g. 8,5,4), got {sizes!r} instead."
        ) from None
    if len(parts) != 3:
        raise InputError(
            f"sizes: expected three integers m,n_in,n_out (e.g. 8,5,4), got {sizes!r} instead."
        )
    m, n_in, n_out = parts
    if m < 2 or n_in < 1 or n_out < 1:
        raise InputError(
            f"sizes: need m >= 2 (a batch of one has no variance), n_in >= 1 and n_out >= 1; "
            f"got m={m}, n_in={n_in}, n_out={n_out}."
        )
    if m > 512 or n_in * n_out > 4096:
        raise InputError(
            f"sizes: the check differentiates numerically over every weight; keep m <= 512 and "
            f"n_in * n_out <= 4096, got m={m}, n_in * n_out={n_in * n_out}."
        )
    return m, n_in, n_out


def run_check(
    *,
    seed: int = 0,
    sizes: tuple[int, int, int] | str = (8, 5, 4),
    activation: str = "sigmoid",
    trials: int = 5,
    eps: float = 1e-5,
    use_torch: bool = True,
) -> CheckReport:
    """Check the handout's four statements on ``trials`` random layers.

    Parameters
    ----------
    seed : int, default=0
        An integer >= 0.
    sizes : (m, n_in, n_out) or "m,n_in,n_out", default=(8, 5, 4)
    activation : {"sigmoid", "tanh", "relu", "identity"}, default="sigmoid"
    trials : int, default=5
        Random layers per statement.
    eps : float, default=1e-5
    use_torch : bool, default=True
        Also compare with PyTorch autograd when torch is importable.

    Returns
    -------
    CheckReport
    """
    m, n_in, n_out = check_sizes(sizes)
    act = get_activation(activation)
    if not isinstance(trials, int) or trials < 1:
        raise InputError(f"trials: expected an integer >= 1, got {trials!r} instead.")
    seed = check_seed(seed)
    torch_version = _torch_version() if use_torch else None
    rng = np.random.default_rng(seed)
    errs: dict[str, dict[str, list[float]]] = {
        k: {"finite_differences": [], "autograd": []}
        for k in ("1", "2", "3", "4-frozen", "4-training")
    }
    exact: dict[str, list[float]] = {"dW vs FD": [], "dO vs FD": [], "dA/dZ vs FD": []}
    if torch_version:
        exact["dW vs autograd"] = []
        exact["dO vs autograd"] = []

    for _ in range(trials):
        O, W, gamma, beta, dY = _random_layer(rng, m, n_in, n_out)
        cache = _forward(O, W, gamma, beta, act.name, eps)
        _measure(cache, dY, errs, exact, with_torch=torch_version is not None)

    statements = []
    for key, claim in CLAIMS.items():
        found = {k: max(v) for k, v in errs[key].items() if v}
        holds = found["finite_differences"] <= FD_TOL and found.get("autograd", 0.0) <= AUTOGRAD_TOL
        statements.append(Statement(key, claim, bool(holds), max(found.values()), found))
    return CheckReport(
        statements=statements,
        errata=errata(rng, m, n_in, n_out, act.name, eps, errs),
        exact={k: max(v) for k, v in exact.items()},
        config={"seed": seed, "sizes": (m, n_in, n_out), "activation": act.name,
                "trials": trials, "eps": eps, "torch": torch_version},
    )



def _measure(
    cache: LayerCache, dY: np.ndarray, errs: dict[str, dict[str, list[float]]],
    exact: dict[str, list[float]], *, with_torch: bool,
) -> None:
    """Append this layer's errors for every statement to ``errs`` and ``exact``."""
    O, W, gamma, beta = cache.O, cache.W, cache.gamma, cache.beta
    act, eps = cache.activation, cache.eps
    frozen = _backward(dY, cache, "frozen")
    true = _backward(dY, cache, "exact")
    F_of_A = _objective(cache, dY)
    rows = range(min(cache.m, JACOBIAN_ROWS))

    def fd(key: str, *pairs: tuple[np.ndarray, np.ndarray]) -> None:
        errs[key]["finite_differences"].append(max(jac.max_rel_error(a, b) for a, b in pairs))

    fd("1", *[(jac.stated_J_o_wrt_a(cache, i), jac.numeric_J_o_wrt_a(cache, i)) for i in rows],
       (frozen.dA, jac.central_difference(F_of_A, cache.A)))
    fd("2", *[(jac.stated_J_a_wrt_gamma(cache, i), jac.numeric_J_a_wrt_gamma(cache, i))
              for i in rows],
       (frozen.dgamma, jac.central_difference(
           lambda g: F_of_A(jac.forward_A(cache, gamma=g)), gamma)))
    fd("3", *[(jac.stated_J_a_wrt_beta(cache, i), jac.numeric_J_a_wrt_beta(cache, i))
              for i in rows],
       (frozen.dbeta, jac.central_difference(
           lambda b: F_of_A(jac.forward_A(cache, beta=b)), beta)))
    dW_fd_frozen = jac.central_difference(
        lambda w: F_of_A(jac.forward_A(cache, W=w, frozen=True)), W)
    dW_fd_true = jac.central_difference(lambda w: F_of_A(jac.forward_A(cache, W=w)), W)
    fd("4-frozen", *[(jac.stated_J_a_wrt_W_frozen(cache, i),
                      jac.numeric_J_a_wrt_W(cache, i, frozen=True)) for i in rows],
       (frozen.dW, dW_fd_frozen))
    # The same formula, against the function that training really differentiates.
    fd("4-training", (frozen.dW, dW_fd_true))

    dO_fd_true = jac.central_difference(
        lambda o: F_of_A(_forward(o, W, gamma, beta, act, eps).A), O)
    exact["dW vs FD"].append(jac.max_rel_error(true.dW, dW_fd_true))
    exact["dO vs FD"].append(jac.max_rel_error(true.dO, dO_fd_true))
    exact["dA/dZ vs FD"].append(jac.max_rel_error(
        jac.stated_dA_dZ_training(cache), jac.numeric_dA_dZ_training(cache)))

    if with_torch:
        from bnprop.interop.torch import torch_layer_grads

        tt = torch_layer_grads(O, W, gamma, beta, dY, activation=act, eps=eps)
        tf = torch_layer_grads(O, W, gamma, beta, dY, activation=act, eps=eps, stats="frozen")
        errs["1"]["autograd"].append(jac.max_rel_error(true.dA, tt.dA))
        errs["2"]["autograd"].append(jac.max_rel_error(true.dgamma, tt.dgamma))
        errs["3"]["autograd"].append(jac.max_rel_error(true.dbeta, tt.dbeta))
        errs["4-frozen"]["autograd"].append(jac.max_rel_error(frozen.dW, tf.dW))
        errs["4-training"]["autograd"].append(jac.max_rel_error(frozen.dW, tt.dW))
        exact["dW vs autograd"].append(jac.max_rel_error(true.dW, tt.dW))
        exact["dO vs autograd"].append(jac.max_rel_error(true.dO, tt.dO))


CLAIMS = {
    "1": "J_o(a) = diag(sigma'(a)), so grad_a f = sigma'(a) * grad_o f",
    "2": "J_a(gamma) = diag(Obar), so grad_gamma f = sum_rows(Obar * grad_a f)",
    "3": "J_a(beta) = I, so grad_beta f = sum_rows(grad_a f)",
    "4-frozen": "grad_W f = (diag(gamma * inv_std) grad_a f)^T o, statistics held fixed",
    "4-training": "the same part (4) formula as the training-mode gradient "
                  "(mu_B, var_B depend on W)",
}


def frozen_gradient_errors(
    rng: np.random.Generator, m: int, n_in: int, n_out: int, activation: str, eps: float,
    layers: int = ERRATUM_LAYERS,
) -> np.ndarray:
    """``||dW_frozen - dW|| / ||dW||`` (Frobenius) on random layers, gamma = 1, beta = 0."""
    out = np.empty(layers)
    for k in range(layers):
        O, W, gamma, beta, dY = _random_layer(rng, m, n_in, n_out, unit_affine=True)
        cache = _forward(O, W, gamma, beta, activation, eps)
        dW_frozen = _backward(dY, cache, "frozen").dW
        dW = _backward(dY, cache, "exact").dW
        out[k] = np.linalg.norm(dW_frozen - dW) / np.linalg.norm(dW)
    return out


def errata(
    rng: np.random.Generator, m: int, n_in: int, n_out: int, activation: str, eps: float,
    errs: dict[str, dict[str, list[float]]],
) -> list[str]:
    """The errata of docs/math.md, each with what was measured on layers of these sizes."""
    O, W, gamma, beta, _ = _random_layer(rng, m, n_in, n_out)
    cache = _forward(O, W, gamma, beta, activation, eps)
    Z = O @ W.T
    mean_O = O.mean(axis=0)
    var_err = float(np.max(np.abs(cache.var - Z.var(axis=0))))
    rel = frozen_gradient_errors(rng, m, n_in, n_out, activation, eps)
    p5, p50, p95 = np.percentile(rel, [5, 50, 95])
    obar_mean = float(np.max(np.abs(cache.Obar.mean(axis=0))))
    obar_var = cache.Obar.var(axis=0)
    return [
        f"mu_B is the mean of Z = W o^(l-1) over the batch, not of o^(l-1): here mean(o^(l-1)) "
        f"has {mean_O.size} entries, mu_B = mean_rows(Z) has {cache.mu.size}, and "
        f"|mean_rows(Z) - W mean_rows(o^(l-1))| = "
        f"{float(np.max(np.abs(cache.mu - W @ mean_O))):.1e} (the mean commutes with W).",
        f"sigma_B is written without its square: the formula defines the biased variance "
        f"sigma_B^2 = (1/m) sum (Z_i - mu_B)^2; bnprop's var equals numpy.var(Z, axis=0) to "
        f"{var_err:.1e}, and differs from the unbiased one by m/(m-1) = {m / (m - 1):.4f}.",
        f"mu_B, sigma_B^2, gamma, beta lie in R^(n_l) (one entry per output neuron, here "
        f"{n_out}), not R^(n_(l-1)) (here {n_in}).",
        f"Obar is the normalized pre-activation of layer l, shape (m, n_l) = {cache.Obar.shape}, "
        f"not an output of layer l-1: its columns have mean within {obar_mean:.1e} of 0 and "
        f"variance var_B/(var_B + eps) in [{obar_var.min():.6f}, {obar_var.max():.6f}].",
        f"Part (4) holds the batch statistics fixed; in training they depend on W. On "
        f"{rel.size} random {m} x {n_in} -> {n_out} {activation} layers (gamma = 1, beta = 0, "
        f"random upstream gradient), ||dW_frozen - dW|| / ||dW|| has median {p50:.2f} "
        f"(5th to 95th percentile {p5:.2f} to {p95:.2f}); the largest error of 4-training "
        f"above is {max(errs['4-training']['finite_differences']):.2f}.",
    ]
