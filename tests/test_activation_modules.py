"""Activation modules that are not fused after a BatchNorm run the activation kernels on
the kernels backend (the fast path is the public one), equal to the reference to a few
ulps forward and bit for bit backward given the same Y; FoldedMLP uses the same kernel."""

from __future__ import annotations

import numpy as np
import pytest

import bnprop
from bnprop import nn
from bnprop.activations import get_activation
from bnprop.kernels import activations as kernels

ACTS = {"sigmoid": nn.Sigmoid, "tanh": nn.Tanh, "relu": nn.ReLU, "identity": nn.Identity}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", sorted(ACTS))
def test_the_module_runs_the_kernel_and_matches_the_reference(name: str, dtype: str,
                                                              monkeypatch) -> None:  # type: ignore[no-untyped-def]
    calls = []
    for fn in ("activation_rows", "derivative_rows"):
        original = getattr(kernels, fn)
        monkeypatch.setattr(kernels, fn, lambda *a, _f=original, _n=fn: (calls.append(_n),
                                                                           _f(*a))[1])
    rng = np.random.default_rng(0)
    A = (rng.standard_normal((33, 7)) * 20).astype(dtype)
    A[0, :3] = [-90.0, 0.0, 40.0]
    fast, ref = ACTS[name](dtype=dtype), ACTS[name](dtype=dtype)
    ref.backend = "numpy"
    Y, Y_ref = fast._forward(A, True).copy(), ref._forward(A, True).copy()
    finfo = np.finfo(dtype)
    tiny = finfo.tiny if dtype == "float32" else 1e-300  # the kernel returns 0 for subnormals
    np.testing.assert_allclose(Y, Y_ref, rtol=8 * finfo.eps, atol=tiny)
    dY = rng.standard_normal((33, 7)).astype(dtype)
    dX, dX_ref = np.empty_like(A), np.empty_like(A)
    fast._backward(dY, dX)
    np.testing.assert_array_equal(dX, get_activation(name).backward(dY, A, fast._Y))
    ref._backward(dY, dX_ref)  # Y (1 - Y) near Y = 1: an ulp of Y moves it by eps, absolutely
    np.testing.assert_allclose(dX, dX_ref, rtol=16 * finfo.eps,
                               atol=4 * finfo.eps * np.abs(dY).max())
    assert calls == ["activation_rows", "derivative_rows"]


def test_images_through_an_unfused_activation_equal_the_reference() -> None:
    """After a pooling layer the activation sees (N, H, W, C) inside: rows of C."""
    mods = lambda: [nn.Conv2d(1, 3, 3, dtype="float64", rng=0),  # noqa: E731
                    nn.MaxPool2d(2, dtype="float64"), nn.Tanh(dtype="float64"),
                    nn.Flatten(dtype="float64"),
                    nn.Linear(3 * 3 * 3, 4, dtype="float64", rng=1)]
    fast, ref = nn.Sequential(*mods()), nn.Sequential(*mods(), backend="numpy")
    X = np.random.default_rng(2).standard_normal((5, 1, 8, 8))
    y = np.array([0, 1, 2, 3, 0])
    loss, grads = fast.loss_and_grads(X, y)
    loss_ref, grads_ref = ref.loss_and_grads(X, y)
    assert abs(loss - loss_ref) <= 1e-14 * abs(loss_ref)
    for k, g in grads.items():
        np.testing.assert_allclose(g, grads_ref[k], rtol=1e-11, atol=1e-15, err_msg=k)


@pytest.mark.parametrize("backend", ["numba", "numpy"])
def test_a_folded_net_without_bn_predicts_its_net_bit_for_bit(backend: str) -> None:
    net = bnprop.MLP((6, 5, 3), dtype="float64", batchnorm=False, backend=backend)
    rng = np.random.default_rng(4)
    X, y = rng.standard_normal((14, 6)), rng.integers(0, 3, 14)
    for _ in range(3):
        net.train_step(X, y, bnprop.SGD(0.5))
    folded = net.fold()
    assert folded.backend == backend
    np.testing.assert_array_equal(folded.predict_proba(X), net.predict_proba(X))
