"""The Python step's fused optimizer update (bnprop.kernels.optim.flat_update): a large
flat array is updated in row parts on bnprop's workers, with the bits of one pass, and
the compiled steps' helper thread is left asleep (it would spin on the workers' core)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import count_map_rows

from bnprop import threads
from bnprop.kernels import optim


def _operands(kind: str, n: int, dtype: type, seed: int = 0):  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(seed)
    p, g = rng.standard_normal(n).astype(dtype), rng.standard_normal(n).astype(dtype)
    a, b = rng.standard_normal(n).astype(dtype), rng.random(n).astype(dtype)
    if kind == "adam":
        return p, g, a, b, np.array([0.01, 0.1, 0.999, 0.001, 0.003, 0.03, 1e-8], dtype), 0
    if kind == "sgd":  # no momentum: an empty buffer
        empty = np.empty(0, dtype)
        return p, g, empty, empty, np.array([0.0, 0.0, 0.05], dtype), 0
    return p, g, a, a, np.array([0.01, 0.9, 0.05], dtype), 7  # Nesterov, first step


def _one_pass(kind: str, p, g, a, b, coef, flags) -> None:  # type: ignore[no-untyped-def]
    if kind == "adam":
        optim.adam_flat(p, g, a, b, coef)
    else:
        optim.sgd_flat(p, g, a, coef, flags & 1 != 0, flags & 2 != 0, flags & 4 != 0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["adam", "sgd", "sgd-nesterov"])
@pytest.mark.parametrize("n", [1000, 2 * optim.PART_ELEMENTS + 7])
def test_parts_give_the_bits_of_one_pass(monkeypatch: pytest.MonkeyPatch, kind: str,
                                         dtype: type, n: int) -> None:
    parts = count_map_rows(monkeypatch)
    want = [x.copy() for x in _operands(kind, n, dtype)[:4]]
    p, g, a, b, coef, flags = _operands(kind, n, dtype)
    _one_pass(kind, *want, coef, flags)
    with threads.using(2):
        optim.flat_update("adam" if kind == "adam" else "sgd", p, g, a, b, coef, flags)
    assert parts == [1 if n < 2 * optim.PART_ELEMENTS else 2]
    kept = 4 if kind == "adam" else 3  # SGD: b is a (or empty), compared as a
    for got, expected in zip((p, g, a, b)[:kept], want[:kept], strict=True):
        np.testing.assert_array_equal(got, expected)


def test_the_helper_thread_is_not_woken() -> None:
    from bnprop.kernels import blas

    if not blas.available():
        pytest.skip("NumPy's scipy-openblas not found: no helper thread")
    from bnprop.kernels import team

    p, g, a, b, coef, flags = _operands("adam", 4 * optim.PART_ELEMENTS, np.float32)
    before, awake = team.parts_done(), team.helper().ctl[team.STATE] == team.AWAKE
    with threads.using(2):
        for _ in range(5):
            optim.flat_update("adam", p, g, a, b, coef, flags)
    assert team.parts_done() == before
    if not awake:  # asleep before: still asleep (the update never asked for it)
        assert team.helper().ctl[team.STATE] != team.AWAKE
