"""ImageNet from the usual folder layout, decoded with Pillow in DataLoader workers (no torchvision).

Layout::

    root/train/<class>/*.JPEG
    root/val/<class>/*.JPEG

Classes are the sorted sub-folder names of ``train``; their position is the label, and ``val`` must
use the same names. Training transform (DARTS ImageNet recipe, hue jitter left out): random-resized
crop (scale 0.08–1, aspect ratio 3/4–4/3), horizontal flip, brightness / contrast / saturation jitter
of 0.4 in random order (PIL.ImageEnhance), ImageNet mean/std normalisation. Eval transform: resize the
shorter side to ``image_size·256/224`` (256 at 224) and take the centre ``image_size`` crop.

Randomness is a pure function of (seed, epoch, sample index), so a sample's augmentation does not
depend on the number of workers or on which worker decodes it, and a resumed run sees the same
images; call ``set_loader_epoch(loader, epoch)`` before each epoch (it also reseeds the sampler's
shuffle). ``batch_size`` is per process.
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageEnhance
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from rankscope.errors import DataError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".jpeg", ".jpg", ".png", ".bmp", ".webp")
_LAYOUT = "expected root/train/<class>/*.JPEG and root/val/<class>/*.JPEG"


def list_image_folder(split_dir: str | os.PathLike, classes: list[str] | None = None
                      ) -> tuple[list[tuple[str, int]], list[str]]:
    """(path, label) pairs sorted by path, and the class names (sorted sub-folders unless given).

    Raises DataError when the folder is missing, has no class sub-folders, holds an unknown class
    (when ``classes`` is given), or contains no images.
    """
    split_dir = Path(split_dir)
    if not split_dir.is_dir():
        raise DataError(f"ImageNet folder {split_dir} not found; {_LAYOUT}")
    found = sorted(d.name for d in split_dir.iterdir() if d.is_dir())
    if not found:
        raise DataError(f"ImageNet folder {split_dir} has no class sub-folders; {_LAYOUT}")
    classes = found if classes is None else list(classes)
    index = {name: i for i, name in enumerate(classes)}
    unknown = [name for name in found if name not in index]
    if unknown:
        raise DataError(f"{split_dir} has class folder(s) not in the training set: "
                        f"{', '.join(unknown[:5])}; train and val must use the same class names")
    samples = []
    for name in found:
        for path in sorted((split_dir / name).iterdir()):
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file():
                samples.append((str(path), index[name]))
    if not samples:
        raise DataError(f"ImageNet folder {split_dir} contains no images "
                        f"({'/'.join(IMAGE_EXTENSIONS)}); {_LAYOUT}")
    return samples, classes


def random_resized_crop_box(width: int, height: int, rng: np.random.Generator,
                            scale: tuple[float, float] = (0.08, 1.0),
                            ratio: tuple[float, float] = (3 / 4, 4 / 3)) -> tuple[int, int, int, int]:
    """A (left, top, right, bottom) box covering a random area fraction and aspect ratio.

    Ten tries at a box that fits; otherwise the largest centred box with the ratio clamped to range.
    """
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            left = int(rng.integers(0, width - w + 1))
            top = int(rng.integers(0, height - h + 1))
            return left, top, left + w, top + h
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        w, h = int(round(height * ratio[1])), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def color_jitter(img: Image.Image, rng: np.random.Generator, strength: float = 0.4) -> Image.Image:
    """Brightness, contrast and saturation each scaled by U(1-s, 1+s), in a random order."""
    enhancers = (ImageEnhance.Brightness, ImageEnhance.Contrast, ImageEnhance.Color)
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=3)
    for k in rng.permutation(3):
        img = enhancers[k](img).enhance(float(factors[k]))
    return img


def resize_center_crop(img: Image.Image, image_size: int) -> Image.Image:
    """Resize the shorter side to image_size·256/224, then crop the centre image_size square."""
    short = int(round(image_size * 256 / 224))
    w, h = img.size
    if w <= h:
        new_w, new_h = short, max(short, int(round(h * short / w)))
    else:
        new_w, new_h = max(short, int(round(w * short / h))), short
    img = img.resize((new_w, new_h), Image.Resampling.BILINEAR)
    left, top = (new_w - image_size) // 2, (new_h - image_size) // 2
    return img.crop((left, top, left + image_size, top + image_size))


def to_normalized_tensor(img: Image.Image, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """RGB PIL image (W, H) -> float32 tensor (3, H, W), normalised per channel."""
    x = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    x = (x - np.asarray(mean, dtype=np.float32)) / np.asarray(std, dtype=np.float32)
    return torch.from_numpy(np.ascontiguousarray(x.transpose(2, 0, 1)))


def train_transform(img: Image.Image, image_size: int, rng: np.random.Generator) -> torch.Tensor:
    """Random-resized crop, flip, colour jitter, normalise: PIL image -> (3, size, size)."""
    box = random_resized_crop_box(img.width, img.height, rng)
    img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box)
    if rng.random() < 0.5:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return to_normalized_tensor(color_jitter(img, rng))


def eval_transform(img: Image.Image, image_size: int) -> torch.Tensor:
    """Resize, centre crop, normalise: PIL image -> (3, size, size)."""
    return to_normalized_tensor(resize_center_crop(img, image_size))


def load_rgb(path: str) -> Image.Image:
    """Decode an image file to RGB; a DataError naming the file if Pillow cannot read it."""
    try:
        with Image.open(path) as im:
            return im.convert("RGB")
    except (OSError, ValueError) as exc:
        raise DataError(f"cannot decode image {path}: {exc}") from None


class ImageFolder(Dataset):
    """One split of an ImageNet-style folder; items are (x float32 (3, S, S), label int)."""

    def __init__(self, split_dir: str | os.PathLike, train: bool, image_size: int = 224,
                 seed: int = 0, classes: list[str] | None = None):
        self.samples, self.classes = list_image_folder(split_dir, classes)
        self.train, self.image_size, self.seed = train, int(image_size), int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Select the epoch's augmentation stream (workers get the new value at the next epoch)."""
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = load_rgb(path)
        if not self.train:
            return eval_transform(img, self.image_size), label
        rng = np.random.default_rng([self.seed, self.epoch, int(index)])
        return train_transform(img, self.image_size, rng), label


def make_imagenet_loaders(root: str | os.PathLike, batch_size: int, workers: int,
                          distributed: bool, seed: int, image_size: int = 224
                          ) -> tuple[DataLoader, DataLoader]:
    """Train and val DataLoaders over ``root/train`` and ``root/val``.

    ``batch_size`` is per process. Shuffling is done by a DistributedSampler seeded with ``seed``
    (over the process group when ``distributed``, else as a single replica), so the order is a
    function of (seed, epoch). The val sampler of a distributed run pads each rank to equal length
    (at most world_size-1 repeated images). Call ``set_loader_epoch`` before each epoch.
    """
    if batch_size < 1 or workers < 0:
        raise DataError(f"batch_size must be >= 1 and workers >= 0, got {batch_size}, {workers}")
    root = Path(root)
    train_set = ImageFolder(root / "train", train=True, image_size=image_size, seed=seed)
    val_set = ImageFolder(root / "val", train=False, image_size=image_size, seed=seed,
                          classes=train_set.classes)
    replicas = {} if distributed else {"num_replicas": 1, "rank": 0}
    train_sampler = DistributedSampler(train_set, shuffle=True, seed=seed, **replicas)
    val_sampler = DistributedSampler(val_set, shuffle=False, **replicas)
    generator = torch.Generator()
    generator.manual_seed(int(seed))  # seeds worker processes' torch RNGs reproducibly
    common = {"num_workers": workers, "pin_memory": torch.cuda.is_available(),
              "generator": generator}
    train = DataLoader(train_set, batch_size=batch_size, sampler=train_sampler, drop_last=False,
                       **common)
    val = DataLoader(val_set, batch_size=batch_size, sampler=val_sampler, **common)
    return train, val


def set_loader_epoch(loader: DataLoader, epoch: int) -> None:
    """Set the epoch on the loader's sampler (shuffle) and dataset (augmentation), when they have one."""
    for obj in (loader.sampler, loader.dataset):
        if hasattr(obj, "set_epoch"):
            obj.set_epoch(epoch)
