"""``bnprop check``: the report, the table and the JSON."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest

from bnprop._validate import InputError
from bnprop.check import FD_TOL, run_check
from bnprop.check_bn2d import run_check_bn2d
from bnprop.cli import main


@pytest.mark.parametrize("act", ["sigmoid", "tanh", "relu", "identity"])
def test_statements_hold_except_4_training(act: str) -> None:
    report = run_check(seed=1, sizes=(6, 4, 3), activation=act, trials=2)
    verdict = {s.id: s.holds for s in report.statements}
    assert verdict == {"1": True, "2": True, "3": True, "4-frozen": True, "4-training": False}
    for s in report.statements:
        if s.holds:
            assert s.max_rel_error < FD_TOL
            assert s.errors["finite_differences"] < FD_TOL
        else:
            assert s.max_rel_error > 1e-2
    assert max(report.exact.values()) < FD_TOL


def test_autograd_column_present_with_torch() -> None:
    pytest.importorskip("torch")
    report = run_check(trials=1)
    for s in report.statements:
        assert "autograd" in s.errors
        if s.holds:
            assert s.errors["autograd"] < 1e-10


def test_without_torch_only_finite_differences() -> None:
    report = run_check(trials=1, use_torch=False)
    assert all(set(s.errors) == {"finite_differences"} for s in report.statements)
    assert report.config["torch"] is None


def test_erratum_5_reproduces_math_md() -> None:
    """docs/math.md, Errata: on 8 x 5 -> 4 sigmoid layers the median relative error is 0.61."""
    report = run_check(trials=1)
    assert len(report.errata) == 5
    text = report.errata[4]
    median = float(text.split("median ")[1].split(" ")[0])
    assert 0.5 < median < 0.7


def test_cli_json_is_one_object_with_the_documented_keys(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--json", "--trials", "1", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    obj = json.loads(out)
    assert set(obj) == {"statements", "errata"}
    assert [s["id"] for s in obj["statements"]] == ["1", "2", "3", "4-frozen", "4-training"]
    for s in obj["statements"]:
        assert isinstance(s["claim"], str) and s["claim"]
        assert isinstance(s["holds"], bool)
        assert isinstance(s["max_rel_error"], float)
    assert all(isinstance(e, str) for e in obj["errata"])
    assert obj["statements"][4]["holds"] is False


def test_cli_table(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--trials", "1", "--sizes", "5,3,2", "--activation", "tanh"]) == 0
    out = capsys.readouterr().out
    assert "4-training" in out and "FAILS" in out and "holds" in out
    assert "5 x 3 -> 2 tanh" in out
    assert "Errata" in out


@pytest.mark.parametrize(
    ("sizes", "match"),
    [("8,5", "three integers"), ("a,b,c", "three integers"), ("1,5,4", "m >= 2"),
     ("8,0,4", "n_in >= 1"), ("8,100,100", "n_in \\* n_out <= 4096")],
)
def test_cli_bad_sizes(sizes: str, match: str, capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--sizes", sizes]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert "sizes:" in err
    assert re.search(match, err)


@pytest.mark.parametrize("layer", ["bn1d", "bn2d"])
@pytest.mark.parametrize("seed", ["-1", "-12345678901234567890"])
def test_cli_negative_seed_is_one_line(layer: str, seed: str,
                                       capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--layer", layer, "--seed", seed]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (f"bnprop check: error: seed: expected an integer >= 0, got {seed} "
                            "instead.\n")


@pytest.mark.parametrize("layer", ["bn1d", "bn2d"])
def test_cli_negative_seed_in_a_fresh_process(layer: str) -> None:
    """The console script itself: exit code 2, one line, no traceback from NumPy."""
    result = subprocess.run([sys.executable, "-m", "bnprop", "check", "--layer", layer,
                             "--seed", "-1"], capture_output=True, text=True)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "bnprop check: error: seed: expected an integer >= 0, got -1 instead.\n"


@pytest.mark.parametrize("seed", [-1, 1.5, True, "x", None])
def test_api_bad_seed(seed: object) -> None:
    with pytest.raises(InputError, match=r"^seed: expected an integer >= 0, got .* instead\.$"):
        run_check(seed=seed, trials=1, use_torch=False)  # type: ignore[arg-type]
    with pytest.raises(InputError, match=r"^seed: expected an integer >= 0"):
        run_check_bn2d(seed=seed, trials=1, use_torch=False)  # type: ignore[arg-type]
