"""Datasets: folder resolution, SHA-256 checks and loading, on fake files. The last tests
use the real data when it is provisioned. Fetching is in test_provision.py."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest

from bnprop._validate import InputError
from bnprop.data import datasets, load_dataset, load_idx_pair, verify, write_idx
from bnprop.data.datasets import FILES, data_dir
from tests.fake_mnist import ALL_FILES, N, fake_arrays, sha256

pytestmark = pytest.mark.usefixtures("fresh_cache")


# -- folder ------------------------------------------------------------------------------


def test_data_dir_precedence(tmp_path, monkeypatch):
    monkeypatch.delenv("BNPROP_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_dir() == tmp_path / "home" / ".cache" / "bnprop"
    monkeypatch.setenv("BNPROP_DATA", str(tmp_path / "env"))
    assert data_dir() == tmp_path / "env"
    assert data_dir(tmp_path / "explicit") == tmp_path / "explicit"
    assert data_dir("~/x") == tmp_path / "home" / "x"
    monkeypatch.setenv("BNPROP_DATA", "")  # empty means unset
    assert data_dir() == tmp_path / "home" / ".cache" / "bnprop"


def test_load_uses_env_then_explicit_dir(fake_root, tmp_path, monkeypatch):
    monkeypatch.setenv("BNPROP_DATA", str(fake_root))
    X, _ = load_dataset("mnist", "test")
    assert X.shape == (20, 784)
    # An explicit folder wins over the environment, even one that lacks the data.
    with pytest.raises(InputError, match=re.escape(str(tmp_path / "empty" / "mnist"))):
        load_dataset("mnist", data_dir=tmp_path / "empty")
    monkeypatch.setenv("BNPROP_DATA", str(tmp_path / "empty"))
    X, _ = load_dataset("mnist", "test", data_dir=fake_root)
    assert X.shape == (20, 784)


# -- loading -----------------------------------------------------------------------------


@pytest.mark.parametrize("split", ["train", "test"])
def test_load_dataset_shapes_dtypes_and_scaling(fake_root, split):
    X, y = load_dataset("mnist", split, data_dir=fake_root)
    images_file, labels_file = FILES[split]
    images = fake_arrays()[images_file]
    assert X.shape == (N[split], 784) and X.dtype == np.float32
    assert y.shape == (N[split],) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    # X[i, 28 r + c] = image[i, r, c] / 255, computed in float32
    np.testing.assert_array_equal(X[3, 28 * 5 + 7], np.float32(images[3, 5, 7]) / np.float32(255))
    np.testing.assert_array_equal(X.reshape(-1, 28, 28) * np.float32(255), images)
    np.testing.assert_array_equal(y, fake_arrays()[labels_file])


def test_load_dataset_rejects_unknown_name_and_split(fake_root):
    with pytest.raises(
        InputError, match=r"^name: expected one of 'mnist', 'fashion-mnist'\. Got 'x' instead\.$"
    ):
        load_dataset("x", data_dir=fake_root)
    with pytest.raises(
        InputError, match=r"^split: expected one of 'train', 'test'\. Got 'val' instead\.$"
    ):
        load_dataset("mnist", "val", data_dir=fake_root)


def write_pair(tmp_path, images, labels):
    write_idx(tmp_path / "img", images)
    write_idx(tmp_path / "lab", labels)
    return tmp_path / "img", tmp_path / "lab"


def test_load_idx_pair_count_mismatch(tmp_path):
    img, lab = write_pair(tmp_path, np.zeros((5, 28, 28), np.uint8), np.zeros(4, np.uint8))
    with pytest.raises(
        InputError,
        match="^"
        + re.escape(f"{lab}: expected one label per image, got 4 labels for 5 images in {img}")
        + " instead.$",
    ):
        load_idx_pair(img, lab)


def test_load_idx_pair_bad_labels(tmp_path):
    img, lab = write_pair(
        tmp_path, np.zeros((4, 28, 28), np.uint8), np.array([1, 12, 3, 10], np.uint8)
    )
    with pytest.raises(
        InputError,
        match="^"
        + re.escape(f"{lab}: expected labels in 0..9, got 2 outside (first: 12 at index 1)")
        + " instead.$",
    ):
        load_idx_pair(img, lab)


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((3, 27, 28), np.uint8),
        np.zeros((3, 784), np.uint8),
        np.zeros((3, 28, 28), np.float32),
    ],
    ids=["27x28", "flat", "float32"],
)
def test_load_idx_pair_bad_images(tmp_path, images):
    img, lab = write_pair(tmp_path, images, np.zeros(3, np.uint8))
    message = (
        f"{img}: expected uint8 images of shape (n, 28, 28), "
        f"got {images.dtype} of shape {images.shape} instead."
    )
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        load_idx_pair(img, lab)


def test_load_idx_pair_bad_labels_shape(tmp_path):
    img, lab = write_pair(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros((3, 1), np.uint8))
    message = f"{lab}: expected uint8 labels of shape (n,), got uint8 of shape (3, 1) instead."
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        load_idx_pair(img, lab)


def test_load_idx_pair_passes_idx_errors_through(tmp_path):
    img, lab = write_pair(tmp_path, np.zeros((3, 28, 28), np.uint8), np.zeros(3, np.uint8))
    lab.write_bytes(lab.read_bytes()[:-1])
    with pytest.raises(InputError, match=f"^{re.escape(str(lab))}: truncated"):
        load_idx_pair(img, lab)


# -- integrity ---------------------------------------------------------------------------


def test_verify_returns_the_folder(fake_root):
    assert verify("mnist", fake_root) == fake_root / "mnist"


def test_sha256_mismatch_is_detected(fake_root):
    path = fake_root / "mnist" / "t10k-images-idx3-ubyte"
    expected = datasets.SHA256["mnist"]["t10k-images-idx3-ubyte"]
    verify("mnist", fake_root)  # passes, and is cached ...
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 0xFF
    path.write_bytes(raw)
    os.utime(path, ns=(1, 1))  # ... but a changed file is hashed again
    message = (
        f"{path}: SHA-256 mismatch: expected {expected}, got {sha256(path)}; "
        f"run 'bnprop data fetch --dataset mnist --data-dir {fake_root}' to replace it."
    )
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        verify("mnist", fake_root)
    with pytest.raises(InputError, match=re.escape(message)):
        load_dataset("mnist", "train", data_dir=fake_root)
    # verify=False skips the check: the corrupt pixel is loaded as is.
    X, _ = load_dataset("mnist", "test", data_dir=fake_root, verify=False)
    assert X.shape == (20, 784)


def test_verification_is_cached_per_process(fake_root, monkeypatch):
    calls = []
    real = datasets._sha256
    monkeypatch.setattr(datasets, "_sha256", lambda path: calls.append(path) or real(path))
    load_dataset("mnist", data_dir=fake_root)
    assert len(calls) == 4
    load_dataset("mnist", "test", data_dir=fake_root)
    verify("mnist", fake_root)
    assert len(calls) == 4
    os.utime(fake_root / "mnist" / "train-labels-idx1-ubyte", ns=(1, 1))
    verify("mnist", fake_root)
    assert len(calls) == 5


def test_missing_dataset_names_the_fetch_command(tmp_path, monkeypatch):
    missing = ", ".join(ALL_FILES)
    message = (
        f"mnist: {missing} not found in {tmp_path / 'mnist'}; "
        f"run 'bnprop data fetch --dataset mnist --data-dir {tmp_path}' to provision it."
    )
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        verify("mnist", tmp_path)
    # The folder the environment names needs no --data-dir: the CLI finds it the same way.
    monkeypatch.setenv("BNPROP_DATA", str(tmp_path))
    message = (
        f"fashion-mnist: t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte not found in "
        f"{tmp_path / 'fashion-mnist'}; run 'bnprop data fetch --dataset fashion-mnist' "
        f"to provision it."
    )
    with pytest.raises(InputError, match="^" + re.escape(message) + "$"):
        load_dataset("fashion-mnist", "test", verify=False)


def test_missing_dataset_quotes_a_data_dir_with_spaces(tmp_path):
    root = tmp_path / "my data"
    with pytest.raises(InputError, match=re.escape(f"--data-dir '{root}'")):
        verify("mnist", root)


# -- the real data, when provisioned ------------------------------------------------------

LABEL_COUNTS = {
    ("mnist", "train"): [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949],
    ("mnist", "test"): [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009],
    ("fashion-mnist", "train"): [6000] * 10,
    ("fashion-mnist", "test"): [1000] * 10,
}


@pytest.mark.parametrize(("name", "split"), list(LABEL_COUNTS))
def test_real_data(name, split):
    try:
        verify(name)
    except InputError as exc:
        pytest.skip(f"real {name} is not provisioned or does not verify: {exc}")
    X, y = load_dataset(name, split)
    n = 60000 if split == "train" else 10000
    assert X.shape == (n, 784) and X.dtype == np.float32
    assert y.shape == (n,) and y.dtype == np.int64
    assert X.min() == 0.0 and X.max() == 1.0
    assert np.bincount(y, minlength=10).tolist() == LABEL_COUNTS[name, split]
