"""Training configuration: one frozen dataclass, named presets, and resolution from overrides.

Every field maps to a ``rankscope train`` option of the same name (underscores become dashes).
Resolution order: preset, then a JSON config file, then command-line options.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rankscope.errors import ConfigError
from rankscope.io import config_from_dict, opt, read_config_file


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on; written to ``config.json`` and every checkpoint."""

    genotype: str = opt("msr-darts", "published name (msr-darts, darts-v2, darts-v1), genotype.json, "
                                     "search run dir, JSON or DARTS text")
    # data
    dataset: str = opt("digits", "digits | cifar10 | path to an .npz | imagenet (folder in --data-dir)")
    data_dir: str | None = opt(None, "cifar10: data folder; imagenet: root with train/ and val/")
    train_limit: int | None = opt(None, "class-balanced subset of the training images; None = all")
    test_limit: int | None = opt(None, "class-balanced subset of the test images; None = all")
    image_size: int = opt(224, "imagenet only: crop side in pixels (224 in the paper)")
    crop_padding: int = opt(4, "pixels of zero padding before the random crop; 0 = no crop")
    flip: bool = opt(True, "random horizontal flips")
    cutout: int = opt(16, "side of the cutout square (after normalisation); 0 = off")
    workers: int = opt(4, "imagenet: DataLoader worker processes per rank")
    # network
    layers: int = opt(20, "cells; reductions at layers//3 and 2*layers//3")
    channels: int = opt(36, "initial channels C")
    auxiliary: bool = opt(True, "auxiliary head after cell 2*layers//3 (training only)")
    auxiliary_weight: float = opt(0.4, "weight of the auxiliary loss")
    drop_path_prob: float = opt(0.2, "final drop-path probability (ramped linearly from 0)")
    # optimisation
    label_smoothing: float = opt(0.0, "label smoothing of the cross-entropy (ImageNet: 0.1)")
    epochs: int = opt(600, "training epochs")
    batch_size: int = opt(96, "GLOBAL images per step (split over ranks); see batch_scale_with_world")
    batch_scale_with_world: bool = opt(False, "batch_size is per rank: global batch = batch_size x world")
    lr: float = opt(0.025, "initial SGD learning rate (cosine schedule)")
    lr_min: float = opt(0.0, "learning rate at the last epoch")
    lr_scale_with_world: bool = opt(False, "multiply lr (and lr_min) by the number of processes")
    warmup_epochs: int = opt(0, "linear warm-up epochs before the cosine (ImageNet: 10)")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(3e-4, "L2 weight decay")
    grad_clip: float = opt(5.0, "max global gradient norm; 0 = off")
    # hardware
    amp: bool = opt(False, "CUDA only: mixed precision (autocast); ignored on CPU")
    amp_dtype: str = opt("bf16", "bf16 (no loss scaling) | fp16 (with GradScaler)")
    channels_last: bool = opt(False, "CUDA only: channels-last memory format; ignored on CPU")
    sync_bn: bool = opt(False, "CUDA + distributed only: SyncBatchNorm instead of per-rank BN")
    # run
    eval_every: int = opt(1, "evaluate on the test split every N epochs (and after the last)")
    seed: int = opt(0, "seed of the data order, augmentation, init and drop path")
    device: str = opt("auto", "auto | cpu | cuda")

    def __post_init__(self) -> None:
        _check(self)


_POSITIVE = ("layers", "channels", "epochs", "batch_size", "eval_every", "image_size")
_NON_NEGATIVE = ("auxiliary_weight", "label_smoothing", "lr", "lr_min", "momentum", "weight_decay",
                 "grad_clip", "warmup_epochs", "workers", "cutout", "crop_padding", "seed")


def _check(c: TrainConfig) -> None:
    """One-line ConfigErrors for values no run could use."""
    for name in _POSITIVE:
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    for name in _NON_NEGATIVE:
        if getattr(c, name) < 0:
            raise ConfigError(f"{name} must be >= 0, got {getattr(c, name)}")
    for name in ("train_limit", "test_limit"):
        if getattr(c, name) is not None and getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1 (or unset for all images), got {getattr(c, name)}")
    if c.layers < 3:
        raise ConfigError(f"layers must be >= 3 (two reduction cells and a normal cell), got {c.layers}")
    if not 0.0 <= c.drop_path_prob < 1.0:
        raise ConfigError(f"drop_path_prob must be in [0, 1), got {c.drop_path_prob}")
    if not 0.0 <= c.label_smoothing < 1.0:
        raise ConfigError(f"label_smoothing must be in [0, 1), got {c.label_smoothing}")
    if c.warmup_epochs >= c.epochs and c.warmup_epochs > 0:
        raise ConfigError(f"warmup_epochs ({c.warmup_epochs}) must be < epochs ({c.epochs})")
    if c.amp_dtype not in ("bf16", "fp16"):
        raise ConfigError(f"amp_dtype must be bf16 or fp16, got {c.amp_dtype!r}")
    if c.dataset == "imagenet" and not c.data_dir:
        raise ConfigError("dataset imagenet needs --data-dir ROOT (with ROOT/train/<class>/ and "
                          "ROOT/val/<class>/)")


_CIFAR_PAPER = dict(dataset="cifar10", layers=20, channels=36, epochs=600, batch_size=96, lr=0.025,
                    lr_min=0.0, momentum=0.9, weight_decay=3e-4, grad_clip=5.0, auxiliary=True,
                    auxiliary_weight=0.4, cutout=16, drop_path_prob=0.2, crop_padding=4, flip=True)

PRESETS: dict[str, dict] = {
    # The paper's CIFAR-10 evaluation (REFERENCE.md section 3): a GPU job of days.
    "cifar-paper": dict(_CIFAR_PAPER),
    # The paper's toy experiment: the same recipe with 8 cells.
    "cifar-toy": {**_CIFAR_PAPER, "layers": 8},
    # ImageNet (REFERENCE.md section 3): batch 128 and lr 0.1 per device, 10 warm-up epochs.
    "imagenet-paper": dict(dataset="imagenet", layers=14, channels=48, epochs=250, batch_size=128,
                           batch_scale_with_world=True, lr=0.1, lr_min=0.0, lr_scale_with_world=True,
                           warmup_epochs=10, momentum=0.9, weight_decay=3e-5, grad_clip=5.0,
                           label_smoothing=0.1, auxiliary=True, auxiliary_weight=0.4,
                           drop_path_prob=0.0, cutout=0, image_size=224, workers=8),
    # A CPU run of a few minutes on the embedded 8x8 digits.
    "quick": dict(dataset="digits", layers=5, channels=8, epochs=8, batch_size=64, lr=0.05,
                  lr_min=0.0, auxiliary=True, auxiliary_weight=0.4, drop_path_prob=0.1, cutout=0,
                  crop_padding=1, flip=False),
}


def resolve_config(preset: str = "quick", config_file: str | None = None,
                   overrides: dict | None = None) -> TrainConfig:
    """Preset values, then the config file's, then explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if config_file:
        saved = read_config_file(config_file)
        values.update({k: v for k, v in saved.items() if k not in _RECORD_ONLY})
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return config_from_dict(TrainConfig, values)


# Keys that a run's config.json adds to the TrainConfig fields (records, not settings).
_RECORD_ONLY = ("network", "effective")


def config_fields(record: dict) -> dict:
    """The TrainConfig fields of a config.json record (drops the ``network``/``effective`` records)."""
    return {k: v for k, v in record.items() if k not in _RECORD_ONLY}


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]
