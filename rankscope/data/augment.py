"""Batch augmentation on the tensor's device (airbench style): crop with padding, flip, cutout.

The random parameters of a batch (a few integers per image) are drawn on the CPU from a CPU
``torch.Generator`` and moved to the device, so the same generator state gives the same augmented
batch on CPU and GPU, and a distributed loader can draw them for the global batch and slice.
The pixel work is a handful of vectorised tensor ops for the whole batch, never a Python loop per image.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rankscope.errors import ConfigError


@dataclass(frozen=True)
class AugmentConfig:
    """Training augmentation as DARTS uses it on CIFAR (crop 32 padding 4, flip; cutout 16 at evaluation)."""

    crop_padding: int = 4  # pixels of zero padding on each side before a random crop back to H x W
    flip: bool = True  # horizontal flip with probability 1/2 per image
    cutout: int = 0  # side in pixels of one zeroed square per image, after normalisation; 0 = off

    def __post_init__(self) -> None:
        if self.crop_padding < 0 or self.cutout < 0:
            raise ConfigError(f"crop_padding and cutout must be >= 0 pixels, got {self}")


@dataclass(frozen=True)
class AugmentParams:
    """Random draws for a batch of B images, all int64 CPU tensors of shape (B,); None when off."""

    dy: torch.Tensor | None  # crop offset rows in the padded image, 0..2p
    dx: torch.Tensor | None  # crop offset columns, 0..2p
    flip: torch.Tensor | None  # bool, flip this image
    cy: torch.Tensor | None  # cutout centre row, 0..H-1
    cx: torch.Tensor | None  # cutout centre column, 0..W-1

    def slice(self, lo: int, hi: int) -> "AugmentParams":
        """The parameters of images lo..hi-1 (a rank's part of a global batch)."""
        cut = lambda t: None if t is None else t[lo:hi]  # noqa: E731
        return AugmentParams(cut(self.dy), cut(self.dx), cut(self.flip), cut(self.cy), cut(self.cx))


def sample_params(
    batch: int, height: int, width: int, config: AugmentConfig, generator: torch.Generator
) -> AugmentParams:
    """Draw the per-image random parameters in a fixed order (crop, flip, cutout)."""
    p = config.crop_padding
    dy = dx = flip = cy = cx = None
    if p > 0:
        dy = torch.randint(0, 2 * p + 1, (batch,), generator=generator)
        dx = torch.randint(0, 2 * p + 1, (batch,), generator=generator)
    if config.flip:
        flip = torch.randint(0, 2, (batch,), generator=generator).bool()
    if config.cutout > 0:
        cy = torch.randint(0, height, (batch,), generator=generator)
        cx = torch.randint(0, width, (batch,), generator=generator)
    return AugmentParams(dy, dx, flip, cy, cx)


def _stats(values: tuple[float, ...], x: torch.Tensor) -> torch.Tensor:
    """Per-channel constants shaped (1, C, 1, 1) on x's device."""
    t = torch.tensor(values, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    if t.shape[1] != x.shape[1]:
        raise ConfigError(f"{t.shape[1]} normalisation constants for {x.shape[1]} channels")
    return t


def normalize(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """uint8 (B, C, H, W) pixels -> float32 (x / 255 - mean) / std, mean/std in [0, 1] pixel units."""
    m, s = _stats(mean, x), _stats(std, x)
    # One fused multiply-add instead of three passes: x * 1/(255 s) - m/s.
    return x.to(torch.float32).mul_(1.0 / (255.0 * s)).sub_(m / s)


def crop_and_flip(x: torch.Tensor, params: AugmentParams, padding: int) -> torch.Tensor:
    """Random crop from the zero-padded image, then horizontal flip, as one gather.

    x: (B, C, H, W) any dtype. Padding is pixel value 0 (before normalisation, as torchvision's
    RandomCrop does). Crop-then-flip reads padded column dx + W - 1 - j for output column j.
    """
    b, c, h, w = x.shape
    dev = x.device
    rows = torch.arange(h, device=dev).expand(b, h)  # (B, H)
    cols = torch.arange(w, device=dev).expand(b, w)  # (B, W)
    if params.flip is not None:
        cols = torch.where(params.flip.to(dev)[:, None], (w - 1) - cols, cols)
    if padding > 0 and params.dy is not None and params.dx is not None:
        x = torch.nn.functional.pad(x, (padding, padding, padding, padding))
        rows = rows + params.dy.to(dev)[:, None]
        cols = cols + params.dx.to(dev)[:, None]
    elif params.flip is None:
        return x
    bi = torch.arange(b, device=dev).view(b, 1, 1, 1)
    ci = torch.arange(c, device=dev).view(1, c, 1, 1)
    return x[bi, ci, rows[:, None, :, None], cols[:, None, None, :]]  # (B, C, H, W)


def apply_cutout(x: torch.Tensor, params: AugmentParams, size: int) -> torch.Tensor:
    """Zero one size x size square per image (all channels), centre (cy, cx), clipped at borders.

    Same geometry as DARTS's Cutout: rows clip(cy - size//2, 0, H) .. clip(cy + size//2, 0, H).
    """
    if size <= 0 or params.cy is None or params.cx is None:
        return x
    _, _, h, w = x.shape
    dev = x.device
    half = size // 2
    cy, cx = params.cy.to(dev)[:, None], params.cx.to(dev)[:, None]  # (B, 1)
    r = torch.arange(h, device=dev)[None, :]
    c = torch.arange(w, device=dev)[None, :]
    in_rows = (r >= (cy - half).clamp(0, h)) & (r < (cy + half).clamp(0, h))  # (B, H)
    in_cols = (c >= (cx - half).clamp(0, w)) & (c < (cx + half).clamp(0, w))  # (B, W)
    mask = in_rows[:, None, :, None] & in_cols[:, None, None, :]  # (B, 1, H, W)
    return x.masked_fill(mask, 0.0)


def apply_params(
    x: torch.Tensor,
    params: AugmentParams,
    config: AugmentConfig,
    mean: tuple[float, ...],
    std: tuple[float, ...],
) -> torch.Tensor:
    """uint8 (B, C, H, W) -> augmented, normalised float32 (B, C, H, W) with given random draws."""
    x = crop_and_flip(x, params, config.crop_padding)
    return apply_cutout(normalize(x, mean, std), params, config.cutout)


def augment_batch(
    x: torch.Tensor,
    *,
    crop_padding: int = 4,
    flip: bool = True,
    cutout: int = 0,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    generator: torch.Generator,
) -> torch.Tensor:
    """Augment a uint8 batch (B, C, H, W) on its device; returns normalised float32 (B, C, H, W)."""
    if x.dtype != torch.uint8 or x.ndim != 4:
        raise ConfigError(f"augment_batch expects uint8 (B, C, H, W), got {x.dtype} {tuple(x.shape)}")
    config = AugmentConfig(crop_padding, flip, cutout)
    params = sample_params(x.shape[0], x.shape[2], x.shape[3], config, generator)
    return apply_params(x, params, config, mean, std)
