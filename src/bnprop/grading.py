"""``bnprop grade``: check a learner's gradients of the handout's layer and name the mistake.

The learner writes ``gradients(O, W, gamma, beta, dY, eps)`` for the layer with the sigmoid
(:mod:`bnprop.grade_cases` gives the forward pass) and returns a mapping holding any of
``dA`` (m, n_out), ``dgamma`` (n_out,), ``dbeta`` (n_out,), ``dW`` (n_out, n_in),
``dO`` (m, n_in). :func:`grade` calls it on the fixed cases and compares each returned
gradient ``x`` with the expected ``ref`` case by case, by the normwise relative error::

    rel_error = max|x - ref| / max|ref|          (over the entries of one case)

A gradient is ``correct`` when ``rel_error <= TOL`` on every case. Otherwise the verdict
is the first check that applies: ``raised``, ``wrong-shape``, ``not-finite``, a known
mistake (its answer is within ``TOL``, relative to itself, of the returned one on every
case; see :data:`bnprop.grade_cases.MISTAKES`), or ``unknown``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from bnprop._grade_child import LearnerError, check_signature, collect, one_line
from bnprop._validate import InputError, check_choice, check_positive
from bnprop.grade_cases import (
    EXPECT_MODES,
    GRADIENT_KEYS,
    MISTAKES,
    Case,
    Grads,
    expected,
    make_cases,
)
from bnprop.grade_report import render_html, render_text

#: Largest relative error of a correct answer: float64 rounding is about 1e-11 here.
TOL = 1e-6
#: The verdicts that are not a known mistake's id.
OTHER_VERDICTS = ("correct", "wrong-shape", "not-finite", "raised", "unknown")


@dataclass(frozen=True)
class GradientVerdict:
    """The verdict on one returned gradient.

    Attributes
    ----------
    verdict : str
        ``"correct"``, a mistake's id (``"frozen-statistics"``, ...), ``"wrong-shape"``,
        ``"not-finite"``, ``"raised"`` or ``"unknown"``.
    max_rel_error : float or None
        The largest ``max|x - ref| / max|ref|`` over the cases; None when it is undefined
        (the function raised, or the shape or the values are unusable).
    message : str
        One sentence: what the mistake is and how to fix it.
    """

    verdict: str
    max_rel_error: float | None
    message: str


@dataclass(frozen=True)
class GradeReport:
    """What :func:`grade` found.

    Attributes
    ----------
    source : str
        The file graded, or the function's name.
    expect : str
        ``"exact"`` or ``"frozen"`` (the handout's part (4) as written).
    gradients : dict of str to GradientVerdict
        One entry per gradient the function returned, in the order dA, dgamma, dbeta,
        dW, dO.
    cases : tuple of str
        The names of the cases run.
    error : str or None
        Why nothing could be graded (syntax error, time limit, ...), one line.
    """

    source: str
    expect: str
    gradients: dict[str, GradientVerdict]
    cases: tuple[str, ...]
    error: str | None = None

    @property
    def passed(self) -> bool:
        """True when the function returned at least one gradient and every one is correct."""
        return (self.error is None and bool(self.gradients)
                and all(g.verdict == "correct" for g in self.gradients.values()))

    def to_json(self) -> dict[str, Any]:
        """``{"gradients": {"dA": {"verdict", "max_rel_error", "message"}, ...},
        "passed": bool, "expect": str, "source": str, "error": str | None}``; a
        ``max_rel_error`` that overflowed is ``null`` (JSON has no Infinity)."""
        return {
            "gradients": {k: {"verdict": g.verdict, "max_rel_error": _json_number(
                g.max_rel_error), "message": g.message} for k, g in self.gradients.items()},
            "passed": self.passed, "expect": self.expect, "source": self.source,
            "error": self.error,
        }

    def to_text(self) -> str:
        """The table ``bnprop grade`` prints."""
        return render_text(self)

    def _repr_html_(self) -> str:
        """The table as HTML, for notebooks."""
        return render_html(self)


def _json_number(x: float | None) -> float | None:
    """``x``, or None when it is not finite (strict JSON has no Infinity or NaN)."""
    return x if x is not None and np.isfinite(x) else None


def _rel_error(x: np.ndarray, ref: np.ndarray) -> float:
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    return float(np.max(np.abs(x - ref))) / (scale if scale > 0 else 1.0) if x.size else 0.0


def _close(x: np.ndarray, ref: np.ndarray | None) -> bool:
    return ref is not None and x.shape == ref.shape and _rel_error(x, ref) <= TOL


def _shape_str(shape: tuple[int, ...]) -> str:
    return "(" + ", ".join(map(str, shape)) + ("," if len(shape) == 1 else "") + ")"


def _judge(key: str, expect: str, cases: tuple[Case, ...], records: list[dict[str, Any]],
           arrays: dict[str, np.ndarray], refs: list[Grads],
           mistakes: list[tuple[str, str, list[list[Grads]]]]) -> GradientVerdict:
    """The verdict on gradient ``key`` over every case."""
    for case, rec in zip(cases, records, strict=True):
        if rec["raised"] is not None:
            return GradientVerdict("raised", None, f"gradients raised {rec['raised']} on case "
                                   f"'{case.name}'.")
    for case, rec in zip(cases, records, strict=True):
        if key not in rec["keys"]:
            return GradientVerdict("unknown", None, f"returned on some cases only: missing on "
                                   f"case '{case.name}'; return it on every call.")
        if key in rec["bad"]:
            what = rec["bad"][key]
            fix = ("return one of the expected shape" if what.startswith("an array of shape")
                   else "return a NumPy array of floats")
            return GradientVerdict("wrong-shape", None, f"on case '{case.name}' it is "
                                   f"{what}; {fix}.")
    xs = [arrays[f"c{k}_{key}"] for k in range(len(cases))]
    wants = [r[key] for r in refs]
    if any(x.shape != w.shape for x, w in zip(xs, wants, strict=True)):
        return _judge_shape(key, cases, xs, wants)
    for case, x in zip(cases, xs, strict=True):
        bad = ~np.isfinite(x)
        if bad.any():
            where = tuple(int(i) for i in np.argwhere(bad)[0])
            return GradientVerdict("not-finite", None, f"{int(bad.sum())} of {x.size} entries "
                                   f"are NaN or inf on case '{case.name}', the first at index "
                                   f"{where}; look for a division by zero or a missing eps.")
    errors = [_rel_error(x, w) for x, w in zip(xs, wants, strict=True)]
    worst = max(errors)
    if worst <= TOL:
        what = "the exact gradient" if expect == "exact" else \
            "the handout's part (4) (statistics held fixed)"
        return GradientVerdict("correct", worst, f"equals {what} on all {len(cases)} cases.")
    for mistake_id, fix, per_case in mistakes:
        n_forms = min(len(forms) for forms in per_case)
        for f in range(n_forms):
            if all(_close(x, forms[f].get(key)) for x, forms in zip(xs, per_case, strict=True)):
                return GradientVerdict(mistake_id, worst, fix)
    k = int(np.argmax(errors))
    where = np.unravel_index(int(np.argmax(np.abs(xs[k] - wants[k]))), xs[k].shape)
    return GradientVerdict(
        "unknown", worst, f"wrong, and like no known mistake: largest error on case "
        f"'{cases[k].name}' at index {tuple(int(i) for i in where)} "
        f"(yours {xs[k][where]:.6g}, expected {wants[k][where]:.6g}).")


def _judge_shape(key: str, cases: tuple[Case, ...], xs: list[np.ndarray],
                 wants: list[np.ndarray]) -> GradientVerdict:
    """A shape differs from the expected one on some case: transposed, or wrong-shape."""
    transposed = all(x.ndim == 2 and x.shape == w.shape[::-1] for x, w in zip(xs, wants,
                                                                               strict=True))
    if transposed and all(_close(x, w.T) for x, w in zip(xs, wants, strict=True)):
        return GradientVerdict("transposed", None, next(m.fix for m in MISTAKES
                                                        if m.id == "transposed"))
    k = next(k for k, (x, w) in enumerate(zip(xs, wants, strict=True)) if x.shape != w.shape)
    axes = {"dA": "(m, n_out)", "dgamma": "(n_out,)", "dbeta": "(n_out,)",
            "dW": "(n_out, n_in)", "dO": "(m, n_in)"}[key]
    extra = f", and it is not the transpose of {key} either" if transposed else ""
    return GradientVerdict("wrong-shape", None, f"expected shape {axes} = "
                           f"{_shape_str(wants[k].shape)} on case '{cases[k].name}', got "
                           f"{_shape_str(xs[k].shape)}{extra}.")


def _report(source: str, expect: str, cases: tuple[Case, ...], records: list[dict[str, Any]],
            arrays: dict[str, np.ndarray]) -> GradeReport:
    names = tuple(c.name for c in cases)
    for case, rec in zip(cases, records, strict=True):
        if rec["raised"] is None and not rec["mapping"]:
            return GradeReport(source, expect, {}, names,
                               f"{source}: gradients returned a {rec['returned']} on case "
                               f"'{case.name}'; return a mapping such as "
                               "{'dW': ..., 'dgamma': ...}.")
    returned = {k for rec in records for k in rec["keys"]}
    if not returned and all(rec["raised"] is None for rec in records):
        ignored = sorted({i for rec in records for i in rec["ignored"]})
        hint = f" (it returned only {', '.join(ignored)})" if ignored else ""
        return GradeReport(source, expect, {}, names,
                           f"{source}: gradients returned none of "
                           f"{', '.join(GRADIENT_KEYS)}{hint}; return a dict with at least one.")
    keys = [k for k in GRADIENT_KEYS if k in returned] or list(GRADIENT_KEYS)
    refs = [expected(c, expect) for c in cases]
    mistakes = [(m.id, m.fix, [m.forms(c, expect) for c in cases])
                for m in MISTAKES if expect in m.modes]
    verdicts = {k: _judge(k, expect, cases, records, arrays, refs, mistakes) for k in keys}
    return GradeReport(source, expect, verdicts, names)


def grade(fn: Callable[..., Any] | str | os.PathLike[str], *, expect: str = "exact",
          timeout: float = 10.0) -> GradeReport:
    """Grade a learner's ``gradients(O, W, gamma, beta, dY, eps)``.

    Parameters
    ----------
    fn : callable, or str or path-like
        The function itself (called in this process), or the path of a ``.py`` file that
        defines it (run in a child process, with a time limit).
    expect : {"exact", "frozen"}, default="exact"
        The answer expected: the exact training-mode gradient, or the handout's part (4)
        as written (``mu_B`` and ``var_B`` held fixed).
    timeout : float, default=10.0
        Seconds the child process may run (a file only).

    Returns
    -------
    GradeReport
        One :class:`GradientVerdict` per returned gradient; ``report.passed`` is True only
        when every one is correct.

    Examples
    --------
    >>> import bnprop
    >>> def gradients(O, W, gamma, beta, dY, eps):
    ...     return {"dbeta": dY.sum(axis=0)}       # forgets sigma'(A)
    >>> bnprop.grade(gradients).gradients["dbeta"].verdict
    'unknown'
    """
    check_choice(expect, "expect", EXPECT_MODES)
    cases = make_cases()
    names = tuple(c.name for c in cases)
    raw = [{a: getattr(c, a) for a in ("O", "W", "gamma", "beta", "dY", "eps")} for c in cases]
    if isinstance(fn, str | os.PathLike):
        from bnprop.grade_process import run_file

        path = os.fspath(fn)
        _check_file(path)
        timeout = check_positive(timeout, "timeout")
        try:
            records, arrays = run_file(path, cases, timeout)
        except LearnerError as exc:
            return GradeReport(path, expect, {}, names, f"{path}: {exc}")
        return _report(path, expect, cases, records, arrays)
    if not callable(fn):
        raise InputError(f"fn: expected a function gradients(O, W, gamma, beta, dY, eps) or the "
                         f"path of a .py file defining it, got {type(fn).__name__} instead.")
    source = getattr(fn, "__name__", type(fn).__name__)
    try:
        check_signature(fn)
    except LearnerError as exc:
        return GradeReport(source, expect, {}, names, f"{source}: {exc}")
    code = getattr(fn, "__code__", None)
    records, arrays = collect(fn, raw, code.co_filename if code is not None else None)
    return _report(source, expect, cases, records, arrays)


def _check_file(path: str) -> None:
    if not os.path.isfile(path):
        raise InputError(f"{path}: no such file.")
    if not path.endswith(".py"):
        raise InputError(f"{path}: expected a Python file (.py) defining "
                         "gradients(O, W, gamma, beta, dY, eps).")


TEMPLATE = '''\
"""My gradients of the batch-normalized layer of the handout, for `bnprop grade`.

The layer, one example a row (the sigmoid is the activation):

    Z     = O W^T                                  (m, n_out)
    mu_B  = mean_rows(Z)                           (n_out,)
    var_B = mean_rows((Z - mu_B)**2)               (n_out,)  biased: divide by m
    Obar  = (Z - mu_B) / sqrt(var_B + eps)         (m, n_out)
    A     = gamma * Obar + beta                    (m, n_out)
    Y     = sigmoid(A)                             (m, n_out)

The objective F is a sum over the examples, so dgamma, dbeta and dW sum over the rows.
Compute in float64: answers are compared to a relative error of 1e-6.

Check it with `bnprop grade {name}` (exact gradients, mu_B and var_B depend on W), or
`bnprop grade {name} --expect frozen` (the handout's part (4): mu_B, var_B held fixed).
"""

import numpy as np


def gradients(O, W, gamma, beta, dY, eps):
    """Every gradient of F, given dY = dF/dY, for one batch.

    Parameters
    ----------
    O : ndarray of shape (m, n_in)        the layer's input, float64
    W : ndarray of shape (n_out, n_in)
    gamma, beta : ndarray of shape (n_out,)
    dY : ndarray of shape (m, n_out)      dF/dY
    eps : float                           added to var_B under the square root

    Returns
    -------
    dict with any of these keys (leave out what you have not done yet):
        "dA" (m, n_out), "dgamma" (n_out,), "dbeta" (n_out,),
        "dW" (n_out, n_in), "dO" (m, n_in)
    """
    grads = {{}}
    # Compute the forward pass above, then the gradients, e.g. grads["dA"] = ...
    return grads
'''


def write_template(path: str | os.PathLike[str]) -> None:
    """Write a starter file with the signature and a docstring; never over an existing file."""
    from bnprop._atomic import atomic_writer

    target = os.fspath(path)
    if not target.endswith(".py"):
        raise InputError(f"{target}: the template is Python; give a name ending in .py.")
    if os.path.exists(target):
        raise InputError(f"{target}: already exists; not overwritten (choose another name).")
    text = TEMPLATE.format(name=os.path.basename(target))
    with atomic_writer(target) as f:  # a name that is not UTF-8 is shown escaped in the text
        f.write(text.encode("utf-8", "backslashreplace"))


__all__ = ["TOL", "GradeReport", "GradientVerdict", "grade", "one_line", "write_template"]
