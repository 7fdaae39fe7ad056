"""The backward BN pass by columns (kernels/_bn_columns.py, kernels/_team_bn.py): any cut of
the columns gives the whole pass's bits, whether the caller or the helper thread computes
a part, and the compiled step that shares its wide layers' passes keeps one thread's bits."""

from __future__ import annotations

import itertools
import time

import numpy as np
import pytest

import bnprop
from bnprop import nn, threads
from bnprop.kernels import blas

pytestmark = pytest.mark.skipif(not blas.available(), reason="needs NumPy's scipy-openblas")

if blas.available():
    from numba import njit

    from bnprop.kernels import _bn_columns, _bn_compiled, _team_bn, team
    from bnprop.kernels.activations import ACTIVATION_CODES

    @njit
    def _shared(dY, Y, Obar, gamma, inv_std, act, frozen, m_total, sG, sGO, ctl, use,
                pending):  # type: ignore[no-untyped-def]
        owned = team.acquire(ctl, use)
        left = _team_bn.backward_columns(dY, Y, Obar, gamma, inv_std, act, frozen, m_total,
                                         sG, sGO, ctl, owned, pending)
        team.release(ctl, owned)
        return left

ACTS = ["sigmoid", "tanh", "relu", "identity"]


def _case(m: int, n: int, dtype: type, act: str, seed: int = 0):  # type: ignore[no-untyped-def]
    """The pass's inputs and the whole-width kernels' results (in place, as the step)."""
    rng = np.random.default_rng(seed + m * n)
    A = (2.0 * rng.standard_normal((m, n))).astype(dtype)
    Y = {"sigmoid": 1 / (1 + np.exp(-A)), "tanh": np.tanh(A), "relu": np.maximum(A, 0),
         "identity": A}[act].astype(dtype)
    Obar = rng.standard_normal((m, n)).astype(dtype)
    dY = (rng.standard_normal((m, n)) / m).astype(dtype)
    gamma = (1.0 + rng.standard_normal(n)).astype(dtype)
    inv_std = 0.5 + rng.random(n)
    code = ACTIVATION_CODES[act]
    whole = {}
    for frozen in (False, True):
        dZ, sG, sGO = dY.copy(), np.empty(n), np.empty(n)
        if frozen:
            _bn_compiled._backward_frozen(dZ, Y, Obar, gamma, inv_std, code, sG, sGO, dZ)
        else:
            _bn_compiled._backward_sums(dZ, Y, Obar, code, sG, sGO)
            _bn_compiled._backward_apply(dZ, Y, Obar, gamma, inv_std, sG, sGO, float(m), code,
                                         dZ)
        whole[frozen] = (dZ, sG, sGO)
    return (dY, Y, Obar, gamma, inv_std, code), whole


def _assert_whole(got, want) -> None:  # type: ignore[no-untyped-def]
    for g, w, name in zip(got, want, ("dZ", "sum_G", "sum_GObar"), strict=True):
        np.testing.assert_array_equal(g, w, err_msg=name)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("frozen", [False, True])
def test_any_cut_of_the_columns_gives_the_whole_pass(act: str, dtype: type,
                                                     frozen: bool) -> None:
    for m, n, cuts in [(5, 7, [0, 3, 7]), (33, 130, [0, 1, 64, 129, 130]),
                       (64, 1024, [0, 128, 256, 640, 1024])]:
        (dY, Y, Obar, gamma, inv_std, code), whole = _case(m, n, dtype, act)
        dZ, sG, sGO = dY.copy(), np.full(n, np.nan), np.full(n, np.nan)
        for c0, c1 in reversed(list(itertools.pairwise(cuts))):  # each part alone
            _bn_columns.backward_part(dZ, Y, Obar, gamma, inv_std, code, frozen, float(m),
                                      sG, sGO, c0, c1)
        _assert_whole((dZ, sG, sGO), whole[frozen])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel", ["_sums_by_act", "_sums_by_act dA", "_apply_by_act",
                                    "_frozen_by_act"])
def test_the_column_loops_vectorize(kernel: str, dtype: type) -> None:
    """The row kernels loop over ``[c0, c1)`` given at run time: with a signed index LLVM
    could not prove it >= 0, kept NumPy's negative-index test in every access and ran
    the loops scalar (4-5x slower). Each activation's kernel, compiled on its own (the
    bounds unknown), holds a vectorized loop."""
    m, n = 8, 64
    dY, Y, Obar = (np.ones((m, n), dtype) for _ in range(3))
    vec, sums = np.ones(n, dtype), np.zeros(n)
    args = {"_sums_by_act": (dY, Y, Obar, sums, sums.copy(), None, 0, n),
            "_sums_by_act dA": (dY, Y, Obar, sums, sums.copy(), dY.copy(), 0, n),
            "_apply_by_act": (dY, Y, Obar, vec, vec, vec, dY, True, 0, n),
            "_frozen_by_act": (dY, Y, Obar, vec, sums, sums.copy(), dY, True, 0, n)}[kernel]
    by_code = getattr(_bn_compiled, kernel.split()[0]).py_func
    for name, cell in zip(by_code.__code__.co_freevars, by_code.__closure__, strict=True):
        kernel_of = cell.cell_contents
        kernel_of(*args)
        for sig in kernel_of.signatures:
            assert "vector.body" in kernel_of.inspect_llvm(sig), (kernel, name, sig)


def _run_shared(args, m: int, frozen: bool, ctl, use, pending=0):  # type: ignore[no-untyped-def]
    dY, Y, Obar, gamma, inv_std, code = args
    dZ, sG, sGO = dY.copy(), np.full(dY.shape[1], np.nan), np.full(dY.shape[1], np.nan)
    left = _shared(dZ, Y, Obar, gamma, inv_std, code, frozen, float(m), sG, sGO, ctl, use,
                   pending)
    return (dZ, sG, sGO), left


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("frozen", [False, True])
def test_a_part_taken_back_by_the_caller_gives_the_whole_pass(dtype: type,
                                                              frozen: bool) -> None:
    """``ctl`` says the helper is awake but no thread reads it: the caller offers the
    columns ``[h, n)`` once, then takes them back; a narrow or small pass is not offered."""
    for m, n, offered in [(256, 1024, True), (300, 1100, True), (255, 1024, False),
                          (512, 1000, False)]:
        args, whole = _case(m, n, dtype, "sigmoid")
        ctl = np.zeros(team.SLOTS, np.int64)
        ctl[team.STATE] = team.AWAKE
        got, left = _run_shared(args, m, frozen, ctl, True)
        _assert_whole(got, whole[frozen])
        assert left == 0 and ctl[team.OWNER] == 0
        assert ctl[team.SEQ] == (1 if offered else 0)
        assert ctl[team.CLAIM] == (3 if offered else 0)  # posted, then claimed back


@pytest.mark.parametrize("frozen", [False, True])
def test_while_the_helper_is_busy_the_caller_computes_every_chunk(frozen: bool) -> None:
    """A task ``pending`` the helper has not finished: nothing is offered (the helper has
    one task at a time), the caller computes the chunks itself and hands ``pending`` back
    for its caller to finish; once it is done, the rest is offered."""
    m, n = 256, 1024
    args, whole = _case(m, n, np.float32, "tanh")
    ctl = np.zeros(team.SLOTS, np.int64)
    ctl[team.STATE], ctl[team.SEQ], ctl[team.CLAIM] = team.AWAKE, 7, 2 * 7 + 1  # claimed
    got, left = _run_shared(args, m, frozen, ctl, True, pending=7)
    _assert_whole(got, whole[frozen])
    assert left == 7 and ctl[team.SEQ] == 7 and ctl[team.CLAIM] == 2 * 7 + 1
    ctl[team.DONE] = 2 * 7  # the helper finished task 7
    got, left = _run_shared(args, m, frozen, ctl, True, pending=7)
    _assert_whole(got, whole[frozen])
    assert left == 0 and ctl[team.SEQ] == 8 and ctl[team.CLAIM] == 2 * 8 + 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_parts_on_the_helper_give_the_whole_pass(dtype: type) -> None:
    team.prefer(True)
    try:
        with threads.using(2):
            cases = [(m, _case(m, n, dtype, act)) for m, n, act in
                     [(256, 1024, "relu"), (300, 1100, "sigmoid")]]
            m, (args, whole) = cases[0]
            # a hang guard: the helper's first use compiles its loop (over 10 s cold)
            start, deadline = team.parts_done(), time.monotonic() + 120.0
            while team.parts_done() == start:  # until the helper has taken a part
                assert time.monotonic() < deadline, "the helper never took a part"
                ctl, use = team.for_call()
                _assert_whole(_run_shared(args, m, False, ctl, use)[0], whole[False])
            for _ in range(10):
                for m, (args, whole) in cases:
                    for frozen in (False, True):
                        ctl, use = team.for_call()
                        _assert_whole(_run_shared(args, m, frozen, ctl, use)[0],
                                      whole[frozen])
    finally:
        team.prefer(None)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_a_step_sharing_its_wide_passes_keeps_one_threads_bits(dtype: str,
                                                               stats: str) -> None:
    """Layers of 1024 features at batch 256: the compiled step on two threads shares each
    backward BN pass with the helper, and gives the Python step's bits on one thread."""
    from bnprop.nn.compiled import compiled_step

    def net() -> nn.Sequential:
        return nn.Sequential(
            nn.Linear(20, 1024, bias=False, dtype=dtype, rng=1),
            nn.BatchNorm1d(1024, dtype=dtype, stats=stats), nn.Tanh(dtype=dtype),
            nn.Linear(1024, 1024, bias=False, dtype=dtype, rng=2),
            nn.BatchNorm1d(1024, dtype=dtype, stats=stats), nn.ReLU(dtype=dtype),
            nn.Linear(1024, 10, dtype=dtype, rng=3))

    two, one = net(), net()
    one._compiled = None  # the Python step only
    o_two, o_one = bnprop.SGD(0.1, momentum=0.9), bnprop.SGD(0.1, momentum=0.9)
    rng = np.random.default_rng(0)
    team.prefer(True)
    try:
        for _ in range(4):
            X = rng.standard_normal((256, 20)).astype(dtype)
            y = rng.integers(0, 10, 256)
            with threads.using(2):
                assert compiled_step(two, X) is not None
                loss_two = two.train_step(X, y, o_two)
            with threads.using(1):
                assert one.train_step(X, y, o_one) == loss_two
    finally:
        team.prefer(None)
    for (name, p), (_, q) in zip(two.named_parameters(), one.named_parameters(), strict=True):
        np.testing.assert_array_equal(p, q, err_msg=name)
    for name, v in two.buffers().items():
        np.testing.assert_array_equal(v, one.buffers()[name], err_msg=name)
