"""Data layer: sources (digits, official CIFAR-10 format, npz), splits, augmentation, loader."""

from __future__ import annotations

import hashlib
import pickle
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from rankscope.data import (
    AugmentConfig,
    TensorLoader,
    augment_batch,
    class_balanced_subset,
    cycle_batches,
    load_arrays,
    load_cifar10,
    normalize,
    resolve_data_dir,
    split_train_val,
)
from rankscope.data.cifar import CIFAR10_FOLDER, CIFAR10_TARBALL
from rankscope.errors import DataError

NPZ = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-10k.npz"
needs_npz = pytest.mark.skipif(not NPZ.is_file(), reason="shared cifar10-10k.npz not present")
PER_BATCH = 8  # images per fake official batch file


@pytest.fixture(scope="module")
def npz_slice() -> dict[str, np.ndarray]:
    with np.load(NPZ) as z:
        n = 5 * PER_BATCH
        return {
            "x_train": z["x_train"][:n], "y_train": z["y_train"][:n],
            "x_test": z["x_test"][:PER_BATCH], "y_test": z["y_test"][:PER_BATCH],
            "label_names": z["label_names"],
        }  # fmt: skip


def _write_official(folder: Path, s: dict[str, np.ndarray]) -> None:
    """The official layout: pickled dicts, b'data' rows are CHW-flattened (3072) uint8."""
    folder.mkdir(parents=True)

    def dump(name: str, x: np.ndarray, y: np.ndarray) -> None:
        rows = x.transpose(0, 3, 1, 2).reshape(len(x), 3072)
        with open(folder / name, "wb") as f:
            pickle.dump({b"data": rows, b"labels": [int(v) for v in y], b"batch_label": name.encode()}, f, 2)

    for i in range(5):
        sl = slice(i * PER_BATCH, (i + 1) * PER_BATCH)
        dump(f"data_batch_{i + 1}", s["x_train"][sl], s["y_train"][sl])
    dump("test_batch", s["x_test"], s["y_test"])
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [str(n).encode() for n in s["label_names"]]}, f, 2)


def _make_tarball(tmp: Path, s: dict[str, np.ndarray]) -> tuple[Path, str]:
    src = tmp / "src"
    _write_official(src / CIFAR10_FOLDER, s)
    tarball = tmp / "upstream" / CIFAR10_TARBALL
    tarball.parent.mkdir()
    with tarfile.open(tarball, "w:gz") as tar:
        tar.add(src / CIFAR10_FOLDER, arcname=CIFAR10_FOLDER)
    return tarball, hashlib.md5(tarball.read_bytes()).hexdigest()


def _assert_matches(a, s: dict[str, np.ndarray]) -> None:
    assert a.x_train.dtype == torch.uint8 and a.x_train.shape == (5 * PER_BATCH, 3, 32, 32)
    assert np.array_equal(a.x_train.numpy().transpose(0, 2, 3, 1), s["x_train"])
    assert np.array_equal(a.x_test.numpy().transpose(0, 2, 3, 1), s["x_test"])
    assert a.y_train.dtype == torch.int64 and a.y_train.tolist() == s["y_train"].tolist()
    assert a.class_names[0] == "airplane" and a.num_classes == 10 and a.image_size == 32
    assert a.mean == (0.4914, 0.4822, 0.4465)


@needs_npz
def test_official_folder_matches_npz(tmp_path, npz_slice):
    _write_official(tmp_path / CIFAR10_FOLDER, npz_slice)
    _assert_matches(load_arrays("cifar10", str(tmp_path), download=False), npz_slice)


@needs_npz
def test_tarball_md5_checked(tmp_path, npz_slice):
    tarball, md5 = _make_tarball(tmp_path, npz_slice)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / CIFAR10_TARBALL).write_bytes(tarball.read_bytes())
    with pytest.raises(DataError, match="MD5"):
        load_cifar10(str(bad), download=False, md5="0" * 32)
    assert not (bad / CIFAR10_FOLDER).exists()
    good = tmp_path / "good"
    good.mkdir()
    (good / CIFAR10_TARBALL).write_bytes(tarball.read_bytes())
    _assert_matches(load_cifar10(str(good), download=False, md5=md5), npz_slice)
    assert (good / CIFAR10_FOLDER / "test_batch").is_file()


@needs_npz
def test_download_from_file_url(tmp_path, npz_slice, capsys):
    tarball, md5 = _make_tarball(tmp_path, npz_slice)
    root = tmp_path / "cache"
    a = load_cifar10(str(root), url=tarball.as_uri(), md5=md5, progress=True)
    _assert_matches(a, npz_slice)
    assert "100.0%" in capsys.readouterr().err
    assert not list(root.glob("*.part"))
    with pytest.raises(DataError, match="MD5"):  # a corrupt download is rejected and not kept
        load_cifar10(str(tmp_path / "other"), url=tarball.as_uri(), md5="0" * 32, progress=False)
    assert not list((tmp_path / "other").glob("*"))


def test_offline_failure_is_one_line(tmp_path):
    with pytest.raises(DataError) as err:
        load_cifar10(str(tmp_path), url="http://127.0.0.1:9/x.tar.gz", progress=False)
    msg = str(err.value)
    assert "\n" not in msg and "download failed" in msg and str(tmp_path) in msg and "RANKSCOPE_DATA" in msg
    with pytest.raises(DataError, match="not found"):
        load_cifar10(str(tmp_path), download=False)


def test_data_dir_resolution(tmp_path, monkeypatch):
    monkeypatch.setenv("RANKSCOPE_DATA", str(tmp_path / "env"))
    assert resolve_data_dir(str(tmp_path / "arg")) == tmp_path / "arg"
    assert resolve_data_dir() == tmp_path / "env"
    monkeypatch.delenv("RANKSCOPE_DATA")
    assert resolve_data_dir() == Path.home() / ".cache" / "rankscope"


def _npz(tmp_path: Path, **arrays) -> str:
    base = dict(
        x_train=np.zeros((6, 5, 5), np.uint8), y_train=np.array([0, 1, 2, 0, 1, 2]),
        x_test=np.full((3, 5, 5), 255, np.uint8), y_test=np.array([0, 1, 2]),
    )  # fmt: skip
    base.update(arrays)
    path = tmp_path / "d.npz"
    np.savez(path, **{k: v for k, v in base.items() if v is not None})
    return str(path)


def test_npz_grey_and_validation(tmp_path):
    a = load_arrays(_npz(tmp_path))
    assert a.x_train.shape == (6, 1, 5, 5) and a.num_classes == 3 and a.channels == 1
    assert a.mean == (0.0,) and a.std == (0.0,)  # computed from the (all-zero) training images
    cases = {
        "lacks y_test": dict(y_test=None),
        "dtype float32": dict(x_train=np.zeros((6, 5, 5), np.float32)),
        "4 labels for 6": dict(y_train=np.array([0, 1, 2, 0])),
        "expected 0..1": dict(label_names=np.array(["a", "b"])),
        "differ": dict(x_test=np.zeros((3, 4, 4), np.uint8)),
    }
    for fragment, arrays in cases.items():
        with pytest.raises(DataError, match=fragment) as err:
            load_arrays(_npz(tmp_path, **arrays))
        assert "\n" not in str(err.value)
    with pytest.raises(DataError, match="valid sources"):
        load_arrays("imagenet")


@needs_npz
def test_shared_npz_is_cifar_like():
    a = load_arrays(str(NPZ))
    assert a.x_train.shape == (10000, 3, 32, 32) and a.std == (0.2470, 0.2435, 0.2616)
    assert a.class_names[-1] == "truck"


def test_digits():
    a, b = load_arrays("digits"), load_arrays("digits")
    assert a.x_train.dtype == torch.uint8 and a.x_train.shape[1:] == (1, 8, 8)
    assert len(a.x_train) + len(a.x_test) == 1797 and abs(len(a.x_test) / 1797 - 1 / 6) < 0.01
    assert a.num_classes == 10 and int(a.x_train.max()) == 255
    assert torch.equal(a.x_test, b.x_test) and torch.equal(a.y_train, b.y_train)
    counts = torch.bincount(a.y_test)
    assert int(counts.max() - counts.min()) <= 2


def test_class_balanced_subset():
    labels = torch.arange(1000) % 10
    idx = class_balanced_subset(labels, 95, seed=3)
    counts = torch.bincount(labels[idx], minlength=10)
    assert len(idx) == 95 and len(set(idx.tolist())) == 95 and set(counts.tolist()) == {9, 10}
    assert torch.equal(idx, class_balanced_subset(labels, 95, seed=3))
    assert not torch.equal(idx, class_balanced_subset(labels, 95, seed=4))
    skewed = torch.tensor([0] * 3 + [1] * 50)  # class 0 runs out; its share goes to class 1
    assert torch.bincount(skewed[class_balanced_subset(skewed, 20, 0)]).tolist() == [3, 17]
    assert len(class_balanced_subset(labels, None, 0)) == 1000


@pytest.mark.parametrize("balanced", [True, False])
def test_split_train_val(balanced):
    labels = torch.arange(500) % 5
    tr, va = split_train_val(labels, 0.8, seed=1, balanced=balanced)
    assert len(tr) == 400 and len(va) == 100
    assert torch.equal(torch.sort(torch.cat([tr, va])).values, torch.arange(500))
    assert torch.equal(tr, split_train_val(labels, 0.8, seed=1, balanced=balanced)[0])
    assert not torch.equal(tr, split_train_val(labels, 0.8, seed=2, balanced=balanced)[0])
    if balanced:
        assert torch.bincount(labels[va]).tolist() == [20] * 5


def _image(b: int = 2, c: int = 3, h: int = 6, w: int = 6) -> torch.Tensor:
    return torch.arange(b * c * h * w, dtype=torch.int64).remainder(251).add(1).to(torch.uint8).view(b, c, h, w)


ID = dict(mean=(0.4, 0.5, 0.6), std=(0.2, 0.3, 0.25))


def _norm(x: torch.Tensor) -> torch.Tensor:
    return normalize(x, ID["mean"], ID["std"])


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def test_augment_flip_and_identity():
    x = _image(64)
    plain = augment_batch(x, crop_padding=0, flip=False, generator=_gen(0), **ID)
    assert plain.dtype == torch.float32 and torch.equal(plain, _norm(x))
    out = augment_batch(x, crop_padding=0, flip=True, generator=_gen(0), **ID)
    flipped = [torch.equal(o, _norm(x[i : i + 1].flip(-1))[0]) for i, o in enumerate(out)]
    kept = [torch.equal(o, plain[i]) for i, o in enumerate(out)]
    assert all(f or k for f, k in zip(flipped, kept)) and 0 < sum(flipped) < 64


def test_augment_crop_is_translation_of_padded():
    x, p = _image(32), 2
    out = augment_batch(x, crop_padding=p, flip=False, generator=_gen(1), **ID)
    padded = _norm(torch.nn.functional.pad(x, (p, p, p, p)))  # zero padding is pixel value 0
    windows = {(dy, dx) for dy in range(2 * p + 1) for dx in range(2 * p + 1)}
    for i in range(len(x)):
        hits = [w for w in windows if torch.equal(out[i], padded[i, :, w[0] : w[0] + 6, w[1] : w[1] + 6])]
        assert hits, f"image {i} is not a crop of its padded version"


def test_augment_cutout_after_normalisation():
    x = torch.full((16, 3, 8, 8), 200, dtype=torch.uint8)
    mean, std = (0.1, 0.2, 0.3), (0.5, 0.5, 0.5)
    out = augment_batch(x, crop_padding=0, flip=False, cutout=4, mean=mean, std=std, generator=_gen(2))
    base = normalize(x, mean, std)
    for o, b in zip(out, base):
        zero = (o == 0).all(dim=0)  # (H, W): the square, zero in every channel
        assert torch.equal(o[:, ~zero], b[:, ~zero])
        rows, cols = zero.any(1).nonzero().flatten(), zero.any(0).nonzero().flatten()
        assert 1 <= len(rows) <= 4 and 1 <= len(cols) <= 4
        assert int(zero.sum()) == len(rows) * len(cols)  # a (clipped) rectangle
        assert rows.max() - rows.min() + 1 == len(rows) and cols.max() - cols.min() + 1 == len(cols)


def test_augment_deterministic_given_generator():
    x = _image(8)
    kw = dict(crop_padding=2, flip=True, cutout=3, mean=(0.5,) * 3, std=(0.25,) * 3)
    a = augment_batch(x, generator=_gen(5), **kw)
    assert a.shape == x.shape and torch.equal(a, augment_batch(x, generator=_gen(5), **kw))
    assert not torch.equal(a, augment_batch(x, generator=_gen(6), **kw))


def _loader(**kw) -> TensorLoader:
    x = _image(50, 3, 8, 8)
    y = torch.arange(50) % 7
    args = dict(batch_size=8, shuffle=True, augment=AugmentConfig(2, True, 3), seed=11)
    args.update(mean=(0.5,) * 3, std=(0.25,) * 3)
    args.update(kw)
    return TensorLoader(x, y, **args)


def _cat(batches) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*batches)
    return torch.cat(xs), torch.cat(ys)


def test_loader_determinism_and_resume():
    loader = _loader()
    assert len(loader) == 7 and len(_loader(drop_last=True)) == 6
    full = list(loader.epoch(3))
    assert [len(y) for _, y in full] == [8] * 6 + [2]
    again = list(_loader().epoch(3))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full, again))
    tail = list(loader.epoch(3, start_batch=4))
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(full[4:], tail))
    assert not torch.equal(_cat(full)[1], _cat(loader.epoch(4))[1])  # a new order each epoch
    assert sorted(_cat(full)[1].tolist()) == sorted((torch.arange(50) % 7).tolist())


@pytest.mark.parametrize("drop_last", [False, True])
def test_loader_ddp_slices_equal_single_process(drop_last):
    single = list(_loader(drop_last=drop_last).epoch(2))
    ranks = [list(_loader(drop_last=drop_last, rank=r, world_size=2).epoch(2)) for r in range(2)]
    assert len(ranks[0]) == len(ranks[1]) == len(single)
    for b, (x, y) in enumerate(single):
        assert torch.equal(torch.cat([ranks[0][b][0], ranks[1][b][0]]), x)
        assert torch.equal(torch.cat([ranks[0][b][1], ranks[1][b][1]]), y)
    with pytest.raises(Exception, match="divisible"):
        _loader(batch_size=9, world_size=2)


def test_cycle_batches_across_epochs_and_resume():
    loader = _loader(batch_size=16)  # 4 batches per epoch
    expected = list(loader.epoch(1)) + list(loader.epoch(2))
    it = cycle_batches(loader, start_epoch=1)
    got = [next(it) for _ in range(6)]
    assert it.position == (2, 2)
    resumed = cycle_batches(loader, *it.position)
    got += [next(resumed), next(resumed)]
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(expected, got))


def test_loader_without_augment_is_normalised():
    loader = _loader(augment=None, shuffle=False, batch_size=50)
    (x, y), = list(loader.epoch(0))
    assert torch.allclose(x, normalize(_image(50, 3, 8, 8), (0.5,) * 3, (0.25,) * 3))
    assert torch.equal(y, torch.arange(50) % 7)


def test_bad_resume_position_raises_now():
    with pytest.raises(Exception, match="cannot start"):
        _loader().epoch(0, start_batch=99)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_batches_equal_cpu_batches():
    cpu, gpu = list(_loader().epoch(1)), list(_loader(device="cuda").epoch(1))
    for (xc, yc), (xg, yg) in zip(cpu, gpu):
        assert xg.is_cuda and torch.equal(yc, yg.cpu())
        assert torch.allclose(xc, xg.cpu(), atol=1e-6)
