"""The cases ``bnprop grade`` runs a learner's gradients on, the expected answers, and the
known wrong answers it can name.

The learner's layer is the handout's, with the sigmoid (rows are examples)::

    Z = O W^T,  Obar = (Z - mu_B) * inv_std,  A = gamma * Obar + beta,  Y = sigma(A)

The expected gradients come from :func:`bnprop.layer_forward` and
:func:`bnprop.layer_backward` (``stats="exact"``, or ``"frozen"`` for the handout's part
(4) as written). Each known mistake is the same computation with one thing changed, built
from the pure functions of :mod:`bnprop.batchnorm`; the ``G`` below is ``dA``::

    frozen-statistics        dZ = gamma * inv_std * G                      (exact only)
    missing-mean-term        dZ = gamma * inv_std * (G - Obar * mean_rows(G * Obar))
    missing-variance-term    dZ = gamma * inv_std * (G - mean_rows(G))
    unbiased-variance        var_B = sum_rows((Z - mu_B)^2) / (m - 1) in the forward pass;
                             backward by the m-formula, or differentiated through 1/(m-1)
    mean-instead-of-sum      every gradient / m
    transposed               the gradient's transpose (2D gradients)
    sigmoid-derivative-of-input   dA = A (1 - A) * dY instead of Y (1 - Y) * dY

The cases are chosen so that on every gradient a mistake changes, the mistake's answer
differs from the expected one and from every other mistake's on at least one case: a
batch of two (where the exact ``dW`` is zero but for eps), batches of 4 and 64, inputs
far from zero (so a missing mean term moves ``dW`` a lot), ``gamma`` far from 1 and of
both signs, and an ``eps`` large enough to matter. All in float64.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from bnprop import batchnorm as bn
from bnprop.activations import get_activation
from bnprop.layer import layer_backward, layer_forward

#: The gradients a learner may return, in the order the report lists them.
GRADIENT_KEYS = ("dA", "dgamma", "dbeta", "dW", "dO")
#: ``--expect``: the exact gradient, or the handout's part (4) as written.
EXPECT_MODES = ("exact", "frozen")

Grads = dict[str, np.ndarray]


@dataclass(frozen=True)
class Case:
    """One call of the learner's ``gradients(O, W, gamma, beta, dY, eps)``."""

    name: str
    O: np.ndarray
    W: np.ndarray
    gamma: np.ndarray
    beta: np.ndarray
    dY: np.ndarray
    eps: float

    @property
    def m(self) -> int:
        """Rows of the batch."""
        return self.O.shape[0]


def _case(rng: np.random.Generator, name: str, m: int, n_in: int, n_out: int, *,
          offset: float = 0.0, w_scale: float = 1.0, eps: float = 1e-5) -> Case:
    O = offset + rng.standard_normal((m, n_in))
    W = w_scale * rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)
    gamma = rng.uniform(0.5, 2.0, n_out) * rng.choice([-1.0, 1.0], n_out)
    beta = rng.normal(0.0, 0.5, n_out)
    dY = rng.standard_normal((m, n_out))
    return Case(name, O, W, gamma, beta, dY, eps)


def make_cases() -> tuple[Case, ...]:
    """The fixed cases (seeded): sizes m, n_in, n_out all different, so a transpose is
    always a change of shape."""
    rng = np.random.default_rng(2015)
    return (
        _case(rng, "m=4", 4, 3, 5),
        _case(rng, "m=2", 2, 3, 4),
        _case(rng, "m=64", 64, 7, 6),
        _case(rng, "far from zero (O near 20)", 16, 5, 3, offset=20.0),
        _case(rng, "eps=0.01 (small var_B)", 8, 5, 6, w_scale=0.2, eps=1e-2),
    )


def expected(case: Case, expect: str) -> Grads:
    """The right answer: :func:`bnprop.layer_backward` with ``stats=expect``."""
    cache = layer_forward(case.O, case.W, case.gamma, case.beta, activation="sigmoid",
                          eps=case.eps)
    g = layer_backward(case.dY, cache, stats=expect)
    return {k: getattr(g, k) for k in GRADIENT_KEYS}


def _forward(case: Case, *, ddof: int = 0) -> tuple[np.ndarray, ...]:
    """``Obar, inv_std, A, Y`` with ``var_B = M2 / (m - ddof)``."""
    Z = case.O @ case.W.T
    m, mu, M2 = bn.batch_moments(Z)
    inv_std = bn.inverse_std(M2 / (m - ddof), case.eps)
    Obar = bn.normalize(Z, mu, inv_std)
    A = case.gamma * Obar + case.beta
    return Obar, inv_std, A, get_activation("sigmoid").forward(A)


def _backward(case: Case, dA: np.ndarray, Obar: np.ndarray, inv_std: np.ndarray, expect: str,
              *, mean_term: float = 1.0, var_term: float = 1.0) -> Grads:
    """Gradients from ``dA``: the exact ``dZ`` with its mean and variance terms weighted by
    ``mean_term`` and ``var_term`` (1: as derived, 0: left out), or the frozen one."""
    sum_G, sum_GObar = bn.backward_sums(dA, Obar)
    if expect == "exact":
        dZ = bn.dZ_exact(dA, Obar, case.gamma, inv_std, mean_term * sum_G,
                         var_term * sum_GObar, case.m)
    else:
        dZ = bn.dZ_frozen(dA, case.gamma, inv_std)
    return {"dA": dA, "dgamma": sum_GObar, "dbeta": sum_G, "dW": dZ.T @ case.O,
            "dO": dZ @ case.W}


def _dA(case: Case, A: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return get_activation("sigmoid").derivative(A, Y) * case.dY


def _frozen_statistics(case: Case, expect: str) -> list[Grads]:
    Obar, inv_std, A, Y = _forward(case)
    return [_backward(case, _dA(case, A, Y), Obar, inv_std, "frozen")]


def _missing_term(which: str) -> Callable[[Case, str], list[Grads]]:
    def variant(case: Case, expect: str) -> list[Grads]:
        Obar, inv_std, A, Y = _forward(case)
        weights = {"mean_term": 0.0} if which == "mean" else {"var_term": 0.0}
        return [_backward(case, _dA(case, A, Y), Obar, inv_std, "exact", **weights)]
    return variant


def _unbiased_variance(case: Case, expect: str) -> list[Grads]:
    Obar, inv_std, A, Y = _forward(case, ddof=1)
    dA = _dA(case, A, Y)
    forms = [_backward(case, dA, Obar, inv_std, expect)]  # the m-formula on the wrong Obar
    if expect == "exact":  # what autograd gives through var = M2 / (m - 1)
        forms.append(_backward(case, dA, Obar, inv_std, expect, var_term=case.m / (case.m - 1)))
    return forms


def _mean_instead_of_sum(case: Case, expect: str) -> list[Grads]:
    return [{k: v / case.m for k, v in expected(case, expect).items()}]


def _transposed(case: Case, expect: str) -> list[Grads]:
    return [{k: v.T for k, v in expected(case, expect).items() if v.ndim == 2}]


def _sigmoid_derivative_of_input(case: Case, expect: str) -> list[Grads]:
    Obar, inv_std, A, _ = _forward(case)
    return [_backward(case, A * (1 - A) * case.dY, Obar, inv_std, expect)]


@dataclass(frozen=True)
class Mistake:
    """A known wrong answer: ``forms(case, expect)`` lists the ways a learner computes it."""

    id: str
    modes: tuple[str, ...]
    forms: Callable[[Case, str], list[Grads]]
    fix: str


#: The known mistakes, in the order they are tried. ``fix`` is the report's sentence.
MISTAKES: tuple[Mistake, ...] = (
    Mistake("frozen-statistics", ("exact",), _frozen_statistics,
            "mu_B and var_B were held constant (the handout's part (4)), but in training they "
            "depend on W: use dZ = gamma*inv_std*(dA - mean_rows(dA) - Obar*mean_rows(dA*Obar))."),
    Mistake("missing-mean-term", ("exact",), _missing_term("mean"),
            "the term from mu_B is missing: subtract mean_rows(dA) in "
            "dZ = gamma*inv_std*(dA - mean_rows(dA) - Obar*mean_rows(dA*Obar))."),
    Mistake("missing-variance-term", ("exact",), _missing_term("var"),
            "the term from var_B is missing: subtract Obar*mean_rows(dA*Obar) in "
            "dZ = gamma*inv_std*(dA - mean_rows(dA) - Obar*mean_rows(dA*Obar))."),
    Mistake("unbiased-variance", EXPECT_MODES, _unbiased_variance,
            "var_B was divided by m-1; batch norm uses the biased variance "
            "mean_rows((Z - mu_B)**2) (np.var's default; torch.var needs unbiased=False)."),
    Mistake("mean-instead-of-sum", EXPECT_MODES, _mean_instead_of_sum,
            "this is the gradient divided by m: F sums over the batch, so sum over the rows "
            "(not mean) and do not divide dY by m."),
    Mistake("transposed", EXPECT_MODES, _transposed,
            "this is the transpose of the gradient: rows are examples, and dW = dZ^T O has "
            "shape (n_out, n_in) like W."),
    Mistake("sigmoid-derivative-of-input", EXPECT_MODES, _sigmoid_derivative_of_input,
            "sigma'(A) was computed as A*(1-A); the sigmoid's derivative is Y*(1-Y) with "
            "Y = sigma(A)."),
)
