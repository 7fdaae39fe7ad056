"""A max pooling fused into the conv stage before it (``nn.plan.ConvNormStep``).

Oracle: the same net with the pooling as a step of its own (the plan before the fusion),
bit for bit: the fused step runs the same kernels on the same rows, only in other calls;
and the pooling's image-range calls against the whole-batch reference.
"""

from __future__ import annotations

import numpy as np
import pytest

from bnprop import conv as ref
from bnprop import nn, threads
from bnprop.model_cnn import cnn
from bnprop.nn.plan import ConvNormStep, ModuleStep


def _pool_apart(net: nn.Sequential) -> nn.Sequential:
    """``net`` with each fused pooling taken out into a step of its own."""
    steps = []
    for step in net.steps:
        if isinstance(step, ConvNormStep) and step.pool is not None:
            act = step.modules[2] if len(step.modules) == 4 else None
            steps += [ConvNormStep(step.conv, step.norm, act, None), ModuleStep(step.pool)]
        else:
            steps.append(step)
    net.steps = steps
    return net


def test_a_max_pool_after_a_conv_stage_joins_its_step() -> None:
    net = cnn((4, 6), (8,))
    kinds = [(type(s).__name__, [type(m).__name__ for m in s.modules]) for s in net.steps]
    assert kinds[:2] == [("ConvNormStep", ["Conv2d", "BatchNorm2d", "ReLU", "MaxPool2d"])] * 2
    assert [k for k, _ in kinds[2:]] == ["ModuleStep", "NormStep", "ModuleStep"]
    bare = nn.Sequential(nn.Conv2d(1, 3, 3, bias=False), nn.BatchNorm2d(3), nn.MaxPool2d(2),
                         nn.Flatten(), nn.Linear(3 * 3 * 3, 2))
    assert bare.steps[0].pool is bare.modules[2]  # no activation between: fused too


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(("N", "n_threads"), [(24, 1), (24, 2), (25, 2), (3, 2)])
@pytest.mark.parametrize("stats", ["exact", "frozen"])
def test_the_fused_pool_gives_the_bits_of_a_pool_step_apart(backend: str, N: int,
                                                            n_threads: int,
                                                            stats: str) -> None:
    """Training steps (loss, every gradient, running statistics) and inference: the
    same bits. N = 24 and 25 on 2 threads: two row parts of whole images."""
    rng = np.random.default_rng(N)
    X = rng.random((N, 1, 28, 28)).astype(np.float32)
    y = rng.integers(0, 10, N)
    fused = cnn((16, 8), (12,), stats=stats, backend=backend, seed=3)
    apart = _pool_apart(cnn((16, 8), (12,), stats=stats, backend=backend, seed=3))
    with threads.using(n_threads):
        for _ in range(2):
            (loss_f, g_f), (loss_a, g_a) = fused.loss_and_grads(X, y), apart.loss_and_grads(X, y)
            assert loss_f == loss_a
            for name in g_a:
                np.testing.assert_array_equal(g_f[name], g_a[name], err_msg=name)
        np.testing.assert_array_equal(fused.predict_proba(X), apart.predict_proba(X))
        if backend == "numba" and n_threads == 2 and N > 3:
            stage, unit = fused.steps[0].stage, 28 * 28
            assert sorted(stage._starts) == [0, (N // 2) * unit]  # whole images a part
    for a, b in zip(fused.modules, apart.modules, strict=True):
        for name in ("running_mean", "running_var"):
            if hasattr(a, name):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))


@pytest.mark.parametrize("backend", ["numba", "numpy"])
@pytest.mark.parametrize(("k", "s"), [(2, 2), (3, 2), (2, 3)])
def test_pooling_images_in_ranges_equals_the_whole_batch(backend: str, k: int, s: int) -> None:
    """``_forward_images`` / ``_backward_images`` over [0, 2) and [2, 5): the reference's
    pooled values, window offsets and input gradient of the whole batch."""
    rng = np.random.default_rng(k * 10 + s)
    X = rng.standard_normal((5, 9, 8, 3))
    pool = nn.MaxPool2d(k, s, dtype="float64")
    pool.backend = backend
    pool._prepare(X, True)
    for n0, n1 in ((0, 2), (2, 5)):
        pool._forward_images(X, n0, n1)
    Y, arg = ref.maxpool_forward(X, k, s)
    np.testing.assert_array_equal(pool._Y, Y)
    np.testing.assert_array_equal(pool._arg, arg)
    dY = rng.standard_normal(Y.shape)
    dX = np.full(X.shape, np.nan)
    for n0, n1 in ((0, 2), (2, 5)):
        pool._backward_images(dY, dX, n0, n1)
    np.testing.assert_array_equal(dX, ref.maxpool_backward(dY, arg, X.shape, k, s))
