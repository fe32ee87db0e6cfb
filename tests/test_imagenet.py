import numpy as np
import pytest
import torch
import torch.distributed as dist
from PIL import Image

from rankscope.errors import DataError
from rankscope.imagenet import (IMAGENET_MEAN, ImageFolder, list_image_folder,
                                make_imagenet_loaders, random_resized_crop_box, resize_center_crop,
                                set_loader_epoch, to_normalized_tensor)


@pytest.fixture(scope="module")
def tiny_imagenet(tmp_path_factory):
    """2 classes × 3 training JPEGs and 1 val JPEG each, random pixels of assorted sizes."""
    root = tmp_path_factory.mktemp("imagenet")
    rng = np.random.default_rng(0)
    sizes = [(40, 30), (30, 50), (64, 64)]
    for split, count in (("train", 3), ("val", 1)):
        for cls in ("n02", "n01"):
            folder = root / split / cls
            folder.mkdir(parents=True)
            for k in range(count):
                w, h = sizes[k]
                pixels = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
                Image.fromarray(pixels).save(folder / f"{cls}_{k}.JPEG", quality=90)
    (root / "train" / "n01" / "notes.txt").write_text("not an image")
    return root


def test_listing_sorted_classes_and_labels(tiny_imagenet):
    samples, classes = list_image_folder(tiny_imagenet / "train")
    assert classes == ["n01", "n02"]
    assert len(samples) == 6
    assert [label for _, label in samples] == [0, 0, 0, 1, 1, 1]


def test_missing_empty_and_mismatched_folders_are_clear_errors(tmp_path, tiny_imagenet):
    with pytest.raises(DataError, match=r"not found; expected root/train/<class>/\*\.JPEG"):
        make_imagenet_loaders(tmp_path / "nope", 2, 0, False, 0)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match="no class sub-folders"):
        list_image_folder(tmp_path / "train")
    (tmp_path / "train" / "n01").mkdir()
    with pytest.raises(DataError, match="no images"):
        list_image_folder(tmp_path / "train")
    with pytest.raises(DataError, match="not in the training set"):
        list_image_folder(tiny_imagenet / "val", classes=["n01"])


def test_crop_box_always_inside_the_image():
    rng = np.random.default_rng(1)
    for w, h in [(40, 30), (100, 5), (5, 100), (224, 224)]:
        for _ in range(50):
            left, top, right, bottom = random_resized_crop_box(w, h, rng)
            assert 0 <= left < right <= w and 0 <= top < bottom <= h


def test_eval_resize_and_normalisation():
    img = Image.new("RGB", (90, 40), tuple(int(round(m * 255)) for m in IMAGENET_MEAN))
    cropped = resize_center_crop(img, 32)
    assert cropped.size == (32, 32)
    x = to_normalized_tensor(cropped)
    assert x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert x.abs().max() < 0.02  # the mean colour normalises to ~0


def test_loaders_shapes_determinism_and_workers(tiny_imagenet):
    train, val = make_imagenet_loaders(tiny_imagenet, batch_size=4, workers=0, distributed=False,
                                       seed=3, image_size=32)
    assert len(train.dataset) == 6 and len(val.dataset) == 2

    def epoch_batches(loader, epoch):
        set_loader_epoch(loader, epoch)
        return [(x.clone(), y.clone()) for x, y in loader]

    first = epoch_batches(train, 0)
    x, y = first[0]
    assert x.shape == (4, 3, 32, 32) and x.dtype == torch.float32 and y.dtype == torch.int64
    again = epoch_batches(train, 0)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(first, again))
    other = epoch_batches(train, 1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, other))
    vx, vy = next(iter(val))
    assert vx.shape == (2, 3, 32, 32) and sorted(vy.tolist()) == [0, 1]

    # Two worker processes decode the same images with the same augmentation.
    train2, _ = make_imagenet_loaders(tiny_imagenet, batch_size=4, workers=2, distributed=False,
                                      seed=3, image_size=32)
    parallel = epoch_batches(train2, 1)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
               for a, b in zip(other, parallel))


def test_distributed_sampler_with_a_one_process_group(tiny_imagenet, tmp_path):
    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0,
                            world_size=1)
    try:
        train, val = make_imagenet_loaders(tiny_imagenet, 3, 0, True, seed=0, image_size=32)
        assert train.sampler.num_replicas == 1 and len(list(train)) == 2
    finally:
        dist.destroy_process_group()


def test_unreadable_image_names_the_file(tmp_path):
    folder = tmp_path / "train" / "n01"
    folder.mkdir(parents=True)
    (folder / "broken.JPEG").write_bytes(b"not a jpeg")
    ds = ImageFolder(tmp_path / "train", train=True, image_size=16)
    with pytest.raises(DataError, match="broken.JPEG"):
        ds[0]
