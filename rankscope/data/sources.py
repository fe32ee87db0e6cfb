"""Dataset sources -> ``Arrays``: the embedded digits, official CIFAR-10, and ``.npz`` files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from rankscope.data.cifar import CIFAR10_MD5, CIFAR10_URL, locate_cifar10, read_cifar10_folder
from rankscope.data.splits import split_train_val
from rankscope.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)  # [0, 1] pixel units, per RGB channel
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_TEST_FRACTION = 1 / 6  # sklearn's digits has no official test split: ours is seeded and fixed
DIGITS_SPLIT_SEED = 0
SOURCES = ("digits", "cifar10", "PATH.npz")


@dataclass(frozen=True, eq=False)
class Arrays:
    """A whole dataset in memory as uint8 image tensors (N, C, H, W) and int64 labels (N,)."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    mean: tuple[float, ...]  # per channel, [0, 1] pixel units
    std: tuple[float, ...]
    class_names: tuple[str, ...]
    origin: str = ""  # where the data came from and how the test split was made, for run records

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def channels(self) -> int:
        return int(self.x_train.shape[1])

    @property
    def image_size(self) -> int:
        """Side in pixels of the square images."""
        return int(self.x_train.shape[-1])


def load_arrays(
    source: str, data_dir: str | None = None, *, download: bool = True, progress: bool = True
) -> Arrays:
    """Load ``digits`` (embedded), ``cifar10`` (official format under the data dir) or a ``.npz`` path."""
    if source == "digits":
        return load_digits()
    if source in ("cifar10", "cifar-10"):
        return load_cifar10(data_dir, download=download, progress=progress)
    if source.endswith(".npz") or os.path.isfile(source):
        return load_npz(source)
    raise DataError(f"unknown dataset {source!r}; valid sources: {', '.join(SOURCES)}")


def _to_tensors(x: np.ndarray, y: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.asarray(y, dtype=np.int64))


def load_digits() -> Arrays:
    """sklearn's bundled 8x8 handwritten digits (1,797 images, values 0..16) as 1-channel uint8."""
    from sklearn.datasets import load_digits as sk_digits  # lazy: sklearn is slow to import

    bunch = sk_digits()
    x = np.rint(bunch.images * (255.0 / 16.0)).astype(np.uint8)[:, None]  # (N, 1, 8, 8)
    y = np.asarray(bunch.target, dtype=np.int64)
    train_idx, test_idx = split_train_val(y, 1 - DIGITS_TEST_FRACTION, seed=DIGITS_SPLIT_SEED, balanced=True)
    x_train, y_train = _to_tensors(x[train_idx.numpy()], y[train_idx.numpy()])
    x_test, y_test = _to_tensors(x[test_idx.numpy()], y[test_idx.numpy()])
    mean, std = channel_stats(x_train)
    origin = (
        f"sklearn.datasets.load_digits; test split: class-balanced {DIGITS_TEST_FRACTION:.4f} "
        f"seed {DIGITS_SPLIT_SEED} (split_train_val), {len(test_idx)} test images"
    )
    names = tuple(str(n) for n in bunch.target_names)
    return Arrays("digits", x_train, y_train, x_test, y_test, mean, std, names, origin)


def load_cifar10(
    data_dir: str | None = None,
    *,
    download: bool = True,
    progress: bool = True,
    url: str = CIFAR10_URL,
    md5: str | None = CIFAR10_MD5,
) -> Arrays:
    """CIFAR-10 from ``cifar-10-batches-py`` (or its tarball, downloaded if allowed) under the data dir."""
    folder = locate_cifar10(data_dir, download=download, progress=progress, url=url, md5=md5)
    x_train, y_train, x_test, y_test, names = read_cifar10_folder(folder)
    xt, yt = _to_tensors(x_train, y_train)
    xs, ys = _to_tensors(x_test, y_test)
    _check_labels(yt, ys, 10, str(folder))
    return Arrays(
        "cifar10", xt, yt, xs, ys, CIFAR10_MEAN, CIFAR10_STD, tuple(names) or CIFAR10_CLASSES, str(folder)
    )


def channel_stats(x: torch.Tensor, chunk: int = 4096) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and population std of uint8 images (N, C, H, W), in [0, 1] pixel units."""
    c = x.shape[1]
    total = torch.zeros(c, dtype=torch.float64)
    squares = torch.zeros(c, dtype=torch.float64)
    for i in range(0, len(x), chunk):  # chunks keep the float64 copy small
        part = x[i : i + chunk].to(torch.float64) / 255.0
        total += part.sum(dim=(0, 2, 3))
        squares += (part * part).sum(dim=(0, 2, 3))
    count = x.shape[0] * x.shape[2] * x.shape[3]
    mean = total / count
    std = (squares / count - mean * mean).clamp_min(0).sqrt()
    return tuple(mean.tolist()), tuple(std.tolist())


def _check_labels(y_train: torch.Tensor, y_test: torch.Tensor, k: int, where: str) -> None:
    for name, y in (("y_train", y_train), ("y_test", y_test)):
        if len(y) and (int(y.min()) < 0 or int(y.max()) >= k):
            raise DataError(f"{where}: {name} has labels {int(y.min())}..{int(y.max())}, expected 0..{k - 1}")


def _npz_images(arr: np.ndarray, key: str, path: str) -> np.ndarray:
    """uint8 (N, H, W, C) or grey (N, H, W) -> (N, C, H, W)."""
    if arr.dtype != np.uint8:
        raise DataError(f"{path}: {key} has dtype {arr.dtype}, expected uint8 pixels 0..255")
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or arr.shape[1] != arr.shape[2]:
        raise DataError(f"{path}: {key} has shape {arr.shape}, expected (N, H, H, C) with C 1 or 3, or (N, H, H)")
    return np.ascontiguousarray(arr.transpose(0, 3, 1, 2))


def _npz_labels(arr: np.ndarray, key: str, n: int, path: str) -> np.ndarray:
    if arr.ndim != 1 or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: {key} has dtype {arr.dtype} shape {arr.shape}, expected 1-D integers")
    if len(arr) != n:
        raise DataError(f"{path}: {key} has {len(arr)} labels for {n} images")
    return arr.astype(np.int64)


def _read_npz(path: str) -> dict[str, np.ndarray]:
    if not Path(path).is_file():
        raise DataError(f"dataset file {path} not found; valid sources: {', '.join(SOURCES)}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except (OSError, ValueError) as err:
        msg = " ".join(str(err).split())
        raise DataError(f"cannot read {path} as .npz ({msg}); arrays must be plain, not pickled objects") from err


def load_npz(path: str) -> Arrays:
    """Arrays from ``x_train, y_train, x_test, y_test`` (uint8 HWC or grey HW) and optional ``label_names``."""
    z = _read_npz(path)
    missing = [k for k in ("x_train", "y_train", "x_test", "y_test") if k not in z]
    if missing:
        raise DataError(f"{path} lacks {', '.join(missing)}; it needs x_train, y_train, x_test, y_test")
    x_train, x_test = _npz_images(z["x_train"], "x_train", path), _npz_images(z["x_test"], "x_test", path)
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(f"{path}: x_train images {x_train.shape[1:]} differ from x_test images {x_test.shape[1:]}")
    y_train = _npz_labels(z["y_train"], "y_train", len(x_train), path)
    y_test = _npz_labels(z["y_test"], "y_test", len(x_test), path)
    if "label_names" in z:
        names = tuple(str(n) for n in z["label_names"].tolist())
    else:
        k = int(max(y_train.max(initial=-1), y_test.max(initial=-1))) + 1
        names = tuple(str(i) for i in range(k))
    xt, yt = _to_tensors(x_train, y_train)
    xs, ys = _to_tensors(x_test, y_test)
    _check_labels(yt, ys, len(names), path)
    cifar_like = x_train.shape[1:] == (3, 32, 32) and len(names) == 10
    mean, std = (CIFAR10_MEAN, CIFAR10_STD) if cifar_like else channel_stats(xt)
    return Arrays(Path(path).stem, xt, yt, xs, ys, mean, std, names, str(Path(path).resolve()))
