"""``bnprop trace``: every number is the library's, in the terminal and on the page."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import numpy as np
import pytest

import bnprop
from bnprop import jacobians
from bnprop.cli import main
from bnprop.trace import (
    FORMULAS,
    JACOBIAN_FORMULA,
    check_trace_sizes,
    fmt,
    run_trace,
)
from bnprop.trace_mathml import mathml

FORWARD = ("Z", "mu_B", "var_B", "inv_std", "Obar", "A", "Y")
BACKWARD = ("dA", "dgamma", "dbeta", "dZ_frozen", "shift", "proj", "dZ_exact", "dW_frozen",
            "dW_exact", "dO")


def library_values(sizes=(4, 3, 2), seed=0, activation="sigmoid") -> dict[str, np.ndarray]:
    """The documented draws, through the public layer_forward / layer_backward."""
    m, n_in, n_out = sizes
    rng = np.random.default_rng(seed)
    O = rng.standard_normal((m, n_in))
    W = rng.standard_normal((n_out, n_in))
    gamma = rng.uniform(0.5, 2.0, n_out)
    beta = rng.normal(0.0, 0.5, n_out)
    dY = rng.standard_normal((m, n_out))
    c = bnprop.layer_forward(O, W, gamma, beta, activation=activation)
    e = bnprop.layer_backward(dY, c, stats="exact")
    f = bnprop.layer_backward(dY, c, stats="frozen")
    return {"O": O, "W": W, "gamma": gamma, "beta": beta, "Z": c.Z, "mu_B": c.mu,
            "var_B": c.var, "inv_std": c.inv_std, "Obar": c.Obar, "A": c.A, "Y": c.Y,
            "dY": dY, "dA": e.dA, "dgamma": e.dgamma, "dbeta": e.dbeta, "dZ_frozen": f.dZ,
            "dZ_exact": e.dZ, "dW_frozen": f.dW, "dW_exact": e.dW, "dO": e.dO}


@pytest.mark.parametrize("activation", sorted(bnprop.ACTIVATIONS))
def test_every_quantity_is_the_library_value(activation: str) -> None:
    t = run_trace((5, 3, 3), seed=7, activation=activation)
    want = library_values((5, 3, 3), 7, activation)
    assert list(t.quantities) == ["O", "W", "gamma", "beta", *FORWARD, "dY", *BACKWARD]
    for name, value in want.items():
        np.testing.assert_array_equal(t.quantities[name].value, value, err_msg=name)


def test_exact_dZ_is_frozen_minus_the_two_terms() -> None:
    t = run_trace()
    q = {k: v.value for k, v in t.quantities.items()}
    m = q["A"].shape[0]
    scale = q["gamma"] * q["inv_std"]
    np.testing.assert_allclose(q["shift"], scale * q["dA"].mean(axis=0), rtol=1e-13)
    np.testing.assert_allclose(q["proj"], scale * q["Obar"] * (q["dA"] * q["Obar"]).mean(axis=0),
                               rtol=1e-13, atol=1e-17)
    np.testing.assert_allclose(q["dZ_frozen"] - q["shift"] - q["proj"], q["dZ_exact"],
                               rtol=0, atol=1e-15 * np.abs(q["dZ_frozen"]).max())
    assert q["shift"].shape == (q["A"].shape[1],) and m == 4
    assert np.abs(q["dZ_exact"] - q["dZ_frozen"]).max() > 1e-3  # the terms are not negligible


@pytest.mark.parametrize("feature", [0, 2])
def test_jacobian_is_the_stated_one_and_matches_finite_differences(feature: int) -> None:
    t = run_trace((6, 2, 3), seed=1, feature=feature)
    np.testing.assert_array_equal(t.jacobian, jacobians.stated_dA_dZ_training(t.cache)[feature])
    numeric = jacobians.numeric_dA_dZ_training(t.cache)[feature]
    assert jacobians.max_rel_error(t.jacobian, numeric) < 1e-7
    # chain rule: dZ[:, p] = J^T dA[:, p]
    np.testing.assert_allclose(t.jacobian.T @ t.exact.dA[:, feature], t.exact.dZ[:, feature],
                               atol=1e-15)


def parse_text(out: str) -> dict[str, np.ndarray]:
    """Each ``name (shape) = formula`` block's numbers, read back from the printed text."""
    found: dict[str, np.ndarray] = {}
    lines = out.splitlines()
    head = re.compile(r"^(\w+)\s+(\([\d, ]*\))\s+= ")
    for k, line in enumerate(lines):
        match = head.match(line)
        if match is None:
            continue
        shape = tuple(int(s) for s in match.group(2).strip("()").split(",") if s.strip())
        rows = []
        for row in lines[k + 1:]:
            if head.match(row) or not row.startswith("    ") or row.startswith("==") or not row.strip():
                break
            try:
                rows.append([float(x) for x in row.split()])
            except ValueError:  # the note line
                continue
        found[match.group(1)] = np.array(rows).reshape(shape)
    return found


def test_terminal_text_shows_every_quantity_with_its_numbers(capsys: pytest.CaptureFixture) -> None:
    assert main(["trace"]) == 0
    out = capsys.readouterr().out
    printed = parse_text(out)
    want = library_values()
    assert set(printed) == set(want) | {"shift", "proj"}
    t = run_trace()
    for name, q in t.quantities.items():
        np.testing.assert_allclose(printed[name], q.value, rtol=0, atol=5.01e-7, err_msg=name)
        assert f"= {q.formula or '(given)'}" in out
    for name, value in want.items():
        np.testing.assert_allclose(printed[name], value, rtol=0, atol=5.01e-7, err_msg=name)
    assert "m=4, n_in=3, n_out=2" in out and "activation=sigmoid" in out and "seed=0" in out
    assert "upstream gradient dY = dF/dY" in out
    assert "dW_exact - dW_frozen" in out and "relative difference" in out
    assert f"dA[:, 0] / dZ[:, 0] = {JACOBIAN_FORMULA}" in out


def test_text_is_aligned() -> None:
    """In each printed matrix, the decimal points of every row sit in the same columns."""
    text = run_trace((3, 2, 2), seed=4).to_text()
    blocks: list[list[str]] = [[]]
    for line in text.splitlines():
        if re.fullmatch(r"    [ \d.\-]+", line):
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    blocks = [b for b in blocks if b]
    assert len(blocks) == 22 + 3  # every quantity, two differences, the Jacobian
    for block in blocks:
        points = {tuple(i for i, ch in enumerate(row) if ch == ".") for row in block}
        assert len(points) == 1, block


@pytest.mark.parametrize(("args", "match"), [
    (["--sizes", "1,3,2"], r"sizes: need m >= 2"),
    (["--sizes", "4,0,2"], r"sizes: need m >= 2 .* n_in >= 1"),
    (["--sizes", "4,3"], r"sizes: expected three positive integers m,n_in,n_out"),
    (["--sizes", "4,x,2"], r"sizes: expected three positive integers"),
    (["--sizes", "11,3,2"], r"sizes: the trace prints every number, so it keeps m <= 10, n_in <= 8 and n_out <= 8"),
    (["--sizes", "4,9,2"], r"keeps m <= 10, n_in <= 8 and n_out <= 8; got m=4, n_in=9"),
    (["--seed", "-1"], r"seed: expected an integer >= 0, got '-1' instead"),
    (["--seed", "1.5"], r"seed: expected an integer >= 0"),
    (["--activation", "softplus"], r"activation: expected one of 'sigmoid', 'tanh', 'relu', 'identity'. Got 'softplus' instead"),
    (["--html", "{tmp}/missing/page.html"], r"page.html: the folder .*missing does not exist"),
    (["--html", "{tmp}"], r": is a folder; expected the name of the page to write"),
])
def test_bad_options_get_one_line(args: list[str], match: str, tmp_path,
                                  capsys: pytest.CaptureFixture) -> None:
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    assert main(["trace", *args]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.count("\n") == 1
    assert captured.err.startswith("bnprop trace: error: ")
    assert re.search(match, captured.err), captured.err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary


def test_library_validation() -> None:
    assert check_trace_sizes("2,1,1") == (2, 1, 1)
    assert check_trace_sizes((10, 8, 8)) == (10, 8, 8)
    with pytest.raises(bnprop.InputError, match=r"feature: expected an integer in \[0, 2\)"):
        run_trace(feature=2)
    with pytest.raises(bnprop.InputError, match=r"seed: expected an integer >= 0"):
        run_trace(seed=True)
    assert run_trace(seed="3").seed == 3
    from bnprop.cli import build_parser
    from bnprop.trace import MAX_M, MAX_N_IN, MAX_N_OUT

    assert f"at most {MAX_M},{MAX_N_IN},{MAX_N_OUT}" in " ".join(
        build_parser()._subparsers._group_actions[0].choices["trace"].format_help().split())


def test_fmt_rounds_and_drops_the_sign_of_zero() -> None:
    assert fmt(-1e-12) == "0.000000"
    assert fmt(-0.0000004) == "0.000000"
    assert fmt(-0.0000006) == "-0.000001"
    assert fmt(1.25) == "1.250000"


def test_every_formula_renders_as_well_formed_mathml() -> None:
    for name, formula in {**FORMULAS, "J_p": JACOBIAN_FORMULA}.items():
        root = ET.fromstring(mathml(formula, name))
        assert root.tag == "math"
    inv = mathml(FORMULAS["inv_std"], "inv_std")
    assert "<mfrac><mn>1</mn><msqrt>" in inv and "<msubsup><mi>σ</mi><mi>B</mi><mn>2</mn>" in inv
    assert "<msubsup><mrow><mi>d</mi><mi>Z</mi></mrow><mtext>exact</mtext><mi>T</mi>" in mathml(
        FORMULAS["dW_exact"])
    jac = mathml(JACOBIAN_FORMULA)
    assert "<mfrac><mrow><mn>1</mn><msup><mn>1</mn><mi>T</mi></msup></mrow><mi>m</mi>" in jac
    assert "<munder><mo>∑</mo><mtext>rows</mtext></munder>" in mathml(FORMULAS["dbeta"])


@pytest.mark.parametrize("bad", ["(a + b", "a / ", "/ m", "a ^", "a + )"])
def test_unreadable_formula_is_an_error(bad: str) -> None:
    with pytest.raises(ValueError, match="formula"):
        mathml(bad)
