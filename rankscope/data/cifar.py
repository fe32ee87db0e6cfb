"""CIFAR-10 in the official python format: data directory, download, MD5 check, extraction, reading."""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import shutil
import sys
import tarfile
import tempfile
import urllib.request
from pathlib import Path

import numpy as np

from rankscope.errors import DataError

CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR10_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR10_TARBALL = "cifar-10-python.tar.gz"
CIFAR10_FOLDER = "cifar-10-batches-py"
CIFAR10_TRAIN_FILES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_FILES = CIFAR10_TRAIN_FILES + ("test_batch", "batches.meta")
DATA_ENV = "RANKSCOPE_DATA"
_HINT = "(or pass --data-dir / set RANKSCOPE_DATA)"


def resolve_data_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """The data directory: the argument, else $RANKSCOPE_DATA, else ~/.cache/rankscope."""
    if data_dir:
        return Path(data_dir).expanduser()
    if os.environ.get(DATA_ENV):
        return Path(os.environ[DATA_ENV]).expanduser()
    return Path.home() / ".cache" / "rankscope"


def file_md5(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _one_line(err: BaseException) -> str:
    return " ".join(str(getattr(err, "reason", None) or err or type(err).__name__).split())


def _report(done: int, total: int | None, name: str) -> None:
    mb = done / 1e6
    text = f"{100 * done / total:5.1f}% of {total / 1e6:.1f} MB" if total else f"{mb:.1f} MB"
    sys.stderr.write(f"\rdownloading {name}: {text}")
    sys.stderr.flush()


def download_file(
    url: str, dest: Path, *, md5: str | None = None, progress: bool = True, timeout: float = 30.0
) -> Path:
    """Stream ``url`` to a temporary file next to ``dest``, check its MD5, then rename it into place.

    Raises OSError/ValueError (network, disk) and DataError (checksum); the temporary file is removed.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=dest.name + ".", suffix=".part")
    h, done, step = hashlib.md5(), 0, 0
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
            total = int(resp.headers.get("Content-Length") or 0) or None
            for chunk in iter(lambda: resp.read(1 << 20), b""):
                out.write(chunk)
                h.update(chunk)
                done += len(chunk)
                if progress and done >= step:  # redraw every ~1 % (or 1 MB without a length)
                    _report(done, total, dest.name)
                    step = done + max(total // 100 if total else 0, 1 << 20)
        if progress:
            _report(done, total, dest.name)
            sys.stderr.write("\n")
        if md5 is not None and h.hexdigest() != md5:
            raise DataError(
                f"downloaded {dest.name} has MD5 {h.hexdigest()}, expected {md5}; the download is corrupt, try again"
            )
        os.replace(tmp, dest)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return dest


def _safe_extract(tar: tarfile.TarFile, target: Path) -> None:
    """Extract refusing absolute paths, '..' and links (the 'data' filter where Python has it)."""
    if hasattr(tarfile, "data_filter"):
        tar.extractall(target, filter="data")
        return
    for member in tar.getmembers():  # Python < 3.11.4: check by hand
        name = Path(member.name)
        if name.is_absolute() or ".." in name.parts or member.issym() or member.islnk():
            raise DataError(f"refusing to extract unsafe tar member {member.name!r}")
    tar.extractall(target)


def extract_tarball(tarball: Path, root: Path, *, md5: str | None = CIFAR10_MD5) -> Path:
    """Verify the tarball's MD5 and extract its ``cifar-10-batches-py`` folder into ``root``, atomically."""
    if md5 is not None and (got := file_md5(tarball)) != md5:
        raise DataError(
            f"{tarball} has MD5 {got}, expected {md5}; delete it and download it again {_HINT}"
        )
    staging = Path(tempfile.mkdtemp(dir=root, prefix=".extract-"))
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            _safe_extract(tar, staging)
        folder = staging / CIFAR10_FOLDER
        if not all((folder / f).is_file() for f in CIFAR10_FILES):
            raise DataError(f"{tarball} does not contain {CIFAR10_FOLDER}/ with {', '.join(CIFAR10_FILES)}")
        os.replace(folder, root / CIFAR10_FOLDER)
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DataError(f"cannot extract {tarball} ({_one_line(err)}); delete it and download it again") from err
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return root / CIFAR10_FOLDER


class _BatchUnpickler(pickle.Unpickler):
    """Unpickles only dicts/lists/bytes and numpy arrays: the CIFAR batches need nothing else."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("_codecs", "encode"),  # how protocol-2 pickles written by Python 3 store bytes
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201
        if (module, name) in self._ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"forbidden global {module}.{name}")


def read_batch(path: Path) -> dict:
    """One official batch file as a dict with bytes keys (b'data', b'labels', ...)."""
    try:
        with open(path, "rb") as f:
            return _BatchUnpickler(io.BytesIO(f.read()), encoding="bytes").load()
    except (OSError, pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise DataError(f"cannot read CIFAR-10 file {path} ({_one_line(err)}); delete the folder and retry") from err


def _images_labels(batch: dict, path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3, 32, 32) uint8 images (rows are CHW-flattened, 3072 values) and (N,) int64 labels."""
    try:
        data = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
    except KeyError as err:
        raise DataError(f"CIFAR-10 file {path} lacks key {err}; delete the folder and retry") from err
    if data.ndim != 2 or data.shape[1] != 3072 or len(labels) != len(data):
        raise DataError(f"CIFAR-10 file {path} has data {data.shape}, labels {labels.shape}; expected (N, 3072), (N,)")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar10_folder(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, list[str]]:
    """x_train (50000, 3, 32, 32), y_train, x_test, y_test, class names from ``cifar-10-batches-py``."""
    parts = [_images_labels(read_batch(folder / f), folder / f) for f in CIFAR10_TRAIN_FILES]
    x_test, y_test = _images_labels(read_batch(folder / "test_batch"), folder / "test_batch")
    meta = read_batch(folder / "batches.meta")
    names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta.get(b"label_names", [])]
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])
    return x_train, y_train, x_test, y_test, names


def locate_cifar10(
    data_dir: str | os.PathLike | None = None,
    *,
    download: bool = True,
    progress: bool = True,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
) -> Path:
    """The ``cifar-10-batches-py`` folder, extracting (and first downloading) the tarball if needed."""
    root = resolve_data_dir(data_dir)
    folder = root / CIFAR10_FOLDER
    if all((folder / f).is_file() for f in CIFAR10_FILES):
        return folder
    tarball = root / CIFAR10_TARBALL
    if not tarball.is_file():
        if not download:
            raise DataError(
                f"CIFAR-10 not found in {root}; download {CIFAR10_TARBALL} from {url} and place it in {root} {_HINT}"
            )
        try:
            download_file(url, tarball, md5=md5, progress=progress)
        except (OSError, ValueError) as err:  # URLError, timeouts and disk errors are OSErrors
            raise DataError(
                f"CIFAR-10 not found in {root} and download failed ({_one_line(err)}); "
                f"download {CIFAR10_TARBALL} by hand and place it in {root} {_HINT}"
            ) from err
    return extract_tarball(tarball, root, md5=md5)
