"""``bnprop check --layer bn2d``: the handout's statements per channel (m = N H W)."""

from __future__ import annotations

import json

import pytest

from bnprop._validate import InputError
from bnprop.check_bn2d import run_check_bn2d
from bnprop.cli import main


@pytest.mark.parametrize("activation", ["sigmoid", "tanh"])
def test_statements_hold_per_channel_except_part_4_in_training(activation: str) -> None:
    report = run_check_bn2d(trials=2, activation=activation, seed=1)
    verdicts = {s.id: s.holds for s in report.statements}
    assert verdicts == {"1": True, "2": True, "3": True, "4-frozen": True,
                        "4-training": False, "dX": True}
    for s in report.statements:
        assert "finite_differences" in s.errors
        if "autograd" in s.errors and s.id != "4-training":
            assert s.errors["autograd"] < 1e-12
    assert report.config["sizes"] == (18, 18, 3)  # m = N H W rows, C_in k k, C_out
    assert max(report.exact.values()) < 1e-6


def test_cli_check_bn2d(capsys: pytest.CaptureFixture) -> None:
    assert main(["check", "--layer", "bn2d", "--trials", "1", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [s["id"] for s in out["statements"]] == ["1", "2", "3", "4-frozen", "4-training",
                                                    "dX"]
    assert main(["check", "--layer", "bn2d", "--trials", "1", "--no-torch"]) == 0
    text = capsys.readouterr().out
    assert "BatchNorm2d" in text and "m = N H W = 18" in text and "Errata" not in text


def test_bad_arguments() -> None:
    with pytest.raises(InputError, match="trials: expected an integer >= 1"):
        run_check_bn2d(trials=0)
    with pytest.raises(InputError, match="N H W = 1"):
        run_check_bn2d(shape=(1, 1, 1, 1), trials=1)
