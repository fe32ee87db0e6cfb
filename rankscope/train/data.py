"""Training data for ``rankscope train``: in-memory tensor datasets or an ImageNet folder.

Both kinds are exposed as a ``TrainData`` whose ``train_batches(epoch)`` / ``test_batches()`` yield
this rank's (x float32 (B, C, H, W), y int64 (B,)) on the training device, so the runner and the
shared engine never care where images come from.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Iterator

import torch

from rankscope.data import AugmentConfig, TensorLoader, class_balanced_subset, load_arrays
from rankscope.errors import ConfigError
from rankscope.train.config import TrainConfig
from rankscope.train.distributed import DistEnv

Batch = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainData:
    """A dataset ready for one rank: batch iterators plus what the network needs to know."""

    name: str
    num_classes: int
    in_channels: int
    image_size: int
    n_train: int              # global number of training images per epoch
    n_test: int               # global number of test images
    steps_per_epoch: int
    train_batches: Callable[[int], Iterable[Batch]]   # epoch -> this rank's batches
    test_batches: Callable[[], Iterable[Batch]]
    network_dataset: str      # "cifar" or "imagenet" (NetworkConfig.dataset)


def global_batch(cfg: TrainConfig, env: DistEnv) -> int:
    """Images per optimiser step over all ranks."""
    return cfg.batch_size * env.world_size if cfg.batch_scale_with_world else cfg.batch_size


def to_device(batches: Iterable[Batch], device: torch.device, channels_last: bool) -> Iterator[Batch]:
    """Move (x, y) to ``device`` (no-op if already there); channels-last x when asked (CUDA)."""
    for x, y in batches:
        x = x.to(device, non_blocking=True)
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        yield x, y.to(device, non_blocking=True)


def build_data(cfg: TrainConfig, env: DistEnv, device: torch.device, channels_last: bool) -> TrainData:
    """The configured dataset for this rank (raises DataError / ConfigError with one line)."""
    if cfg.dataset == "imagenet":
        return _imagenet_data(cfg, env, device, channels_last)
    return _tensor_data(cfg, env, device, channels_last)


def _tensor_data(cfg: TrainConfig, env: DistEnv, device: torch.device, channels_last: bool) -> TrainData:
    """digits / cifar10 / npz: whole splits on the device, sharded by rank with a fixed global batch."""
    arrays = load_arrays(cfg.dataset, cfg.data_dir)
    tr = _subset(arrays.y_train, cfg.train_limit, cfg.seed)
    te = _subset(arrays.y_test, cfg.test_limit, cfg.seed)
    batch = global_batch(cfg, env)
    common = dict(mean=arrays.mean, std=arrays.std, seed=cfg.seed, device=device, rank=env.rank,
                  world_size=env.world_size)
    augment = AugmentConfig(crop_padding=cfg.crop_padding, flip=cfg.flip, cutout=cfg.cutout)
    train = TensorLoader(arrays.x_train[tr], arrays.y_train[tr], batch_size=batch, shuffle=True,
                         augment=augment, **common)
    # The test batch only has to divide by the world size; larger batches evaluate faster.
    test = TensorLoader(arrays.x_test[te], arrays.y_test[te], batch_size=batch, shuffle=False,
                        augment=None, **common)
    return TrainData(
        name=arrays.name, num_classes=arrays.num_classes, in_channels=arrays.channels,
        image_size=arrays.image_size, n_train=train.num_samples, n_test=test.num_samples,
        steps_per_epoch=len(train),
        train_batches=lambda epoch: to_device(train.epoch(epoch), device, channels_last),
        test_batches=lambda: to_device(test.epoch(0), device, channels_last),
        network_dataset="cifar")


def _subset(labels: torch.Tensor, limit: int | None, seed: int) -> torch.Tensor:
    if limit is None or limit >= len(labels):
        return torch.arange(len(labels))
    return class_balanced_subset(labels, limit, seed)


def _imagenet_data(cfg: TrainConfig, env: DistEnv, device: torch.device, channels_last: bool) -> TrainData:
    """ImageNet folder via Pillow in DataLoader workers; a DistributedSampler shards by rank."""
    from rankscope.imagenet import make_imagenet_loaders, set_loader_epoch

    if cfg.train_limit is not None or cfg.test_limit is not None:
        raise ConfigError("train_limit/test_limit apply to digits, cifar10 and npz only; for a small "
                          "ImageNet run point --data-dir at a smaller folder")
    batch = global_batch(cfg, env)
    if batch % env.world_size:
        raise ConfigError(f"global batch {batch} is not divisible by the world size {env.world_size}")
    train, test = make_imagenet_loaders(cfg.data_dir, batch // env.world_size, cfg.workers,
                                        env.distributed, cfg.seed, image_size=cfg.image_size)

    def train_batches(epoch: int) -> Iterable[Batch]:
        set_loader_epoch(train, epoch)  # reseeds the sampler's shuffle and the augmentation stream
        return to_device(train, device, channels_last)

    return TrainData(
        name=f"imagenet:{cfg.data_dir}", num_classes=len(train.dataset.classes), in_channels=3,
        image_size=cfg.image_size, n_train=len(train.dataset), n_test=len(test.dataset),
        steps_per_epoch=len(train), train_batches=train_batches,
        test_batches=lambda: to_device(test, device, channels_last), network_dataset="imagenet")
