"""Shared helpers for the tests."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest


def random_layer(
    rng: np.random.Generator, m: int, n_in: int, n_out: int, dtype: type = np.float64,
) -> tuple[np.ndarray, ...]:
    """O, W, gamma, beta, dY with standard-normal entries (gamma kept away from 0)."""
    O = rng.standard_normal((m, n_in))
    W = rng.standard_normal((n_out, n_in))
    gamma = rng.uniform(0.5, 2.0, n_out) * rng.choice([-1.0, 1.0], n_out)
    beta = rng.standard_normal(n_out)
    dY = rng.standard_normal((m, n_out))
    return tuple(a.astype(dtype) for a in (O, W, gamma, beta, dY))


def layer_inputs(m: int, n_in: int, n_out: int, dtype: str = "float64",
                 seed: int = 0, shift: float = 3.0) -> tuple[np.ndarray, ...]:
    """O (offset from 0 by ``shift``: its mean matters), W, gamma, beta, dY of a layer in
    ``dtype``."""
    rng = np.random.default_rng(seed)
    O = (rng.standard_normal((m, n_in)) * 2 + shift).astype(dtype)
    W = rng.standard_normal((n_out, n_in)).astype(dtype)
    gamma, beta = rng.standard_normal(n_out).astype(dtype), rng.standard_normal(n_out).astype(dtype)
    return O, W, gamma, beta, rng.standard_normal((m, n_out)).astype(dtype)


def small_parts(monkeypatch: pytest.MonkeyPatch, n_out: int) -> None:
    """Row parts of at least 1000 rows and chunks of 700 of an ``(m, n_out)`` float64
    array, so that a few thousand rows take the split path in chunks."""
    from bnprop.kernels import rows

    monkeypatch.setattr(rows, "CHUNK_BYTES", n_out * 8 * 700)
    monkeypatch.setattr(rows, "KERNEL_PART_BYTES", n_out * 8 * 1000)
    monkeypatch.setattr(rows, "KERNEL_PART_ROWS", 1000)


def rel_err(a: np.ndarray, b: np.ndarray, scale: float | None = None) -> float:
    """``max|a - b| / max(max|b|, scale)``: normwise relative error.

    ``scale`` is the size of the terms a computation subtracts: where they cancel
    (the exact dZ of a batch of two is O(eps) times its terms), rounding is relative
    to them, not to the small result.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    assert a.shape == b.shape, (a.shape, b.shape)
    ref = max(float(np.max(np.abs(b), initial=0.0)), scale or 0.0)
    err = float(np.max(np.abs(a - b), initial=0.0))
    return err / ref if ref > 0 else err


def assert_grads_match_torch(net, X: np.ndarray, y: np.ndarray):  # type: ignore[no-untyped-def]
    """``net.loss_and_grads(X, y)`` against PyTorch autograd of ``net.to_torch()``: the
    loss within 1e-12, every gradient within 1e-10 (relative). Returns the torch net."""
    import torch

    tnet = net.to_torch()
    loss, grads = net.loss_and_grads(X, y)
    tloss = torch.nn.functional.cross_entropy(tnet(torch.tensor(X)), torch.tensor(y))
    tloss.backward()
    assert abs(loss - tloss.item()) <= 1e-12 * abs(loss)
    for (name, g), t in zip(grads.items(), tnet.parameters(), strict=True):
        assert rel_err(g, t.grad.numpy()) < 1e-10, name
    return tnet


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip tests marked ``slow`` (full reproduction runs) unless ``-m`` names the marker."""
    if "slow" in (config.getoption("markexpr") or ""):
        return
    skip = pytest.mark.skip(reason="slow: full-length run, select it with -m slow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def fresh_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing verified yet in this process (the SHA-256 cache of bnprop.data.datasets)."""
    from bnprop.data import datasets

    monkeypatch.setattr(datasets, "_verified", set())


@pytest.fixture
def fake_root(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """A data root holding unlearnable fake MNIST whose digests are the recorded ones."""
    from bnprop.data import datasets
    from tests.fake_mnist import make_fake

    root = tmp_path / "data"
    monkeypatch.setitem(datasets.SHA256, "mnist", make_fake(root))
    return root


@pytest.fixture
def data_root(tmp_path, monkeypatch: pytest.MonkeyPatch):
    """``(root, digests)``: a learnable fake MNIST under ``BNPROP_DATA``, digests recorded."""
    from bnprop.data import datasets
    from tests.fake_mnist import make_learnable

    root = tmp_path / "data"
    digests = make_learnable(root)
    monkeypatch.setitem(datasets.SHA256, "mnist", digests)
    monkeypatch.setattr(datasets, "_verified", set())
    monkeypatch.setenv("BNPROP_DATA", str(root))
    return root, digests


@pytest.fixture
def two_threads() -> Iterator[None]:
    """bnprop's row split on 2 threads for the test; the previous setting restored after."""
    from bnprop import threads

    n, blas = threads.num_threads(), threads.blas_threads()
    threads.set_threads(2)
    yield
    threads.set_threads(n)
    if blas is not None:
        threads.set_blas_threads(blas)


def count_map_rows(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Patch :func:`bnprop.threads.map_rows` to record each call's number of parts; the
    list it appends to."""
    from bnprop import threads

    parts: list[int] = []
    real = threads.map_rows

    def counting(fn, m, *, min_rows=2048):  # type: ignore[no-untyped-def]
        out = real(fn, m, min_rows=min_rows)
        parts.append(len(out))
        return out

    monkeypatch.setattr(threads, "map_rows", counting)
    return parts
