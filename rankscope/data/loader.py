"""A resumable, DDP-exact batch loader over one uint8 image tensor held on the device.

Randomness is a pure function of (seed, epoch) for the order and (seed, epoch, batch index) for the
augmentation, so a run resumed at (epoch, batch) sees exactly the batches an uninterrupted run sees,
and ``world_size`` ranks together see exactly the single-process global batches.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
import torch

from rankscope.data.augment import AugmentConfig, apply_params, normalize, sample_params
from rankscope.errors import ConfigError

_ORDER_STREAM, _AUGMENT_STREAM = 0, 1  # keep the two derived random streams independent


def derive_seed(*keys: int) -> int:
    """A well-mixed 63-bit seed from non-negative integers (numpy SeedSequence hashing)."""
    words = np.random.SeedSequence([int(k) for k in keys]).generate_state(2, dtype=np.uint32)
    return (int(words[0]) << 31) ^ int(words[1])


def _generator(*keys: int) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(derive_seed(*keys))
    return g


class TensorLoader:
    """Batches of (x float32 (B, C, H, W), y int64 (B,)) on ``device`` from uint8 images (N, C, H, W).

    ``batch_size`` is the GLOBAL batch: with ``world_size`` > 1 each rank yields its contiguous slice
    (batch_size // world_size images of every full batch) of the same global batch.
    """

    def __init__(
        self,
        images: torch.Tensor,
        labels: torch.Tensor,
        *,
        batch_size: int,
        shuffle: bool,
        augment: AugmentConfig | None,
        mean: tuple[float, ...],
        std: tuple[float, ...],
        seed: int,
        drop_last: bool = False,
        device: str | torch.device = "cpu",
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        _check_args(images, labels, batch_size, seed, rank, world_size)
        # Moved once; every batch is then an index into device memory.
        self.images = images.to(device)
        self.labels = labels.to(device=device, dtype=torch.int64)
        self.batch_size, self.shuffle, self.augment = batch_size, shuffle, augment
        self.mean, self.std = tuple(mean), tuple(std)
        self.seed, self.drop_last = seed, drop_last
        self.device = torch.device(device)
        self.rank, self.world_size = rank, world_size

    def __len__(self) -> int:
        """Batches per epoch (global batches; every rank yields this many)."""
        n = len(self.labels)
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self.labels)

    def order(self, epoch: int) -> torch.Tensor:
        """The epoch's global sample order, int64 (N,) on the device; identical on every rank."""
        n = len(self.labels)
        if not self.shuffle:
            return torch.arange(n, device=self.device)
        perm = torch.randperm(n, generator=_generator(self.seed, _ORDER_STREAM, epoch))
        return perm.to(self.device)

    def epoch(self, epoch: int, start_batch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """Iterator over this rank's batches start_batch..len-1 of ``epoch`` (arguments checked now)."""
        if epoch < 0 or not 0 <= start_batch <= len(self):
            raise ConfigError(f"cannot start at epoch {epoch}, batch {start_batch} of {len(self)}")
        order = self.order(epoch)
        return (self.batch(order, epoch, b) for b in range(start_batch, len(self)))

    def batch(self, order: torch.Tensor, epoch: int, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's part of global batch ``index`` under ``order``."""
        global_idx = order[index * self.batch_size : (index + 1) * self.batch_size]
        n = len(global_idx)
        # Contiguous rank slices; for full batches these are batch_size // world_size each.
        lo, hi = self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size
        idx = global_idx[lo:hi]
        x, y = self.images[idx], self.labels[idx]
        if self.augment is None:
            return normalize(x, self.mean, self.std), y
        # Draw for the whole global batch, then slice: ranks reproduce the single-process draws.
        gen = _generator(self.seed, _AUGMENT_STREAM, epoch, index)
        h, w = x.shape[-2:]
        params = sample_params(n, h, w, self.augment, gen).slice(lo, hi)
        return apply_params(x, params, self.augment, self.mean, self.std), y


def _check_args(
    images: torch.Tensor, labels: torch.Tensor, batch_size: int, seed: int, rank: int, world_size: int
) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ConfigError(f"images must be uint8 (N, C, H, W), got {images.dtype} {tuple(images.shape)}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise ConfigError(f"labels must be (N,) = ({len(images)},), got {tuple(labels.shape)}")
    if batch_size <= 0:
        raise ConfigError(f"batch_size must be positive, got {batch_size}")
    if world_size < 1 or not 0 <= rank < world_size:
        raise ConfigError(f"rank {rank} is not in 0..world_size-1 (world_size {world_size})")
    if batch_size % world_size:
        raise ConfigError(f"global batch_size {batch_size} is not divisible by world_size {world_size}")
    if seed < 0:
        raise ConfigError(f"seed must be >= 0, got {seed}")


class BatchCycler:
    """Endless iterator over a loader's batches, across epochs; ``position`` is the next (epoch, batch).

    Save ``position`` in a checkpoint and pass it back to ``cycle_batches`` to resume exactly.
    """

    def __init__(self, loader: TensorLoader, start_epoch: int = 0, start_batch: int = 0) -> None:
        if len(loader) == 0:
            raise ConfigError("cannot cycle over a loader with no batches")
        self.loader = loader
        self.position = (start_epoch, start_batch)
        self._it: Iterator[tuple[torch.Tensor, torch.Tensor]] | None = None

    def __iter__(self) -> "BatchCycler":
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        epoch, index = self.position
        if index >= len(self.loader):
            epoch, index = epoch + 1, 0
            self._it = None
        if self._it is None:
            self._it = self.loader.epoch(epoch, index)
        item = next(self._it)
        self.position = (epoch, index + 1)
        return item


def cycle_batches(loader: TensorLoader, start_epoch: int = 0, start_batch: int = 0) -> BatchCycler:
    """Persistent infinite iterator (as DARTS draws validation batches), resumable by position."""
    return BatchCycler(loader, start_epoch, start_batch)
