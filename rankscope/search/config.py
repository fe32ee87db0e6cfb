"""Search configuration: one frozen dataclass, named presets, and resolution from overrides.

Every field maps to a ``rankscope search`` option of the same name (underscores become dashes).
Resolution order: preset, then a JSON config file, then command-line options.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from rankscope.errors import ConfigError
from rankscope.io import config_from_dict, opt, read_config_file
from rankscope.ops import SEARCH_SPACES


@dataclass(frozen=True)
class SearchConfig:
    """Everything a search run depends on; written to ``config.json`` and every checkpoint."""

    method: str = opt("msr", "msr (stable-rank selection) | darts (alpha, see docs/search.md)")
    # data
    data: str = opt("digits", "digits | cifar10 | path to an .npz (see docs/data.md)")
    data_dir: str | None = opt(None, "folder for cifar10 (else $RANKSCOPE_DATA, else ~/.cache/rankscope)")
    train_limit: int | None = opt(None, "class-balanced subset of the training images; None = all")
    train_fraction: float = opt(0.8, "4:1 train/validation split (MSR-DARTS); 0.5 for method darts "
                                     "unless set")
    crop_padding: int = opt(4, "pixels of zero padding before the random crop; 0 = no crop")
    flip: bool = opt(True, "random horizontal flips")
    # supernet
    space: str = opt("msr", "candidate ops: msr (4 conv ops) | darts (all 8)")
    layers: int = opt(8, "cells; reductions at layers//3 and 2*layers//3")
    channels: int = opt(16, "initial channels C")
    mixing: str = opt("sum", "sum (paper eq. 2) | rank_softmax (authors' code)")
    spectral_norm: bool = opt(True, "normalise every candidate conv to norm sn_c (paper 3.3); off for "
                                    "method darts unless set")
    sn_c: float = opt(1.0, "target spectral norm C")
    sn_iters: int = opt(5, "power iterations Z per training forward")
    sn_method: str = opt("power", "power | exact (FFT, circular padding)")
    impl: str = opt("fast", "supernet implementation: fast (batched spectral norm, channels-last; "
                            "same results) | reference (rankscope.supernet; docs/performance.md)")
    # optimisation
    epochs: int = opt(50, "training epochs of the supernet")
    batch_size: int = opt(128, "images per weight step")
    lr: float = opt(0.025, "initial SGD learning rate (cosine schedule)")
    lr_min: float = opt(0.001, "learning rate at the last epoch")
    momentum: float = opt(0.9, "SGD momentum")
    weight_decay: float = opt(3e-4, "L2 weight decay of the supernet weights")
    grad_clip: float = opt(5.0, "max global gradient norm; 0 = off")
    # selection
    measure: str = opt("operator", "operator (exact, at the edge's resolution) | matrix (C x C)")
    reduction_bug: bool = opt(False, "reproduce the authors' reduction-cell resolution bug")
    choose: str = opt("min-val-loss", "min-val-loss | last | an epoch number (1-based)")
    select: str = opt("min", "min (the paper) | max (Appendix B); both are always recorded")
    # DARTS architecture step (method darts only)
    order: str = opt("first", "DARTS gradient: first | second (unrolled step, DARTS eqs. 7-8)")
    arch_lr: float = opt(3e-4, "Adam learning rate of alpha")
    arch_beta1: float = opt(0.5, "Adam beta1 of alpha")
    arch_beta2: float = opt(0.999, "Adam beta2 of alpha")
    arch_weight_decay: float = opt(1e-3, "L2 weight decay of alpha")
    # run
    seed: int = opt(0, "seed of the split, data order, augmentation and init")
    device: str = opt("auto", "auto | cpu | cuda")

    def __post_init__(self) -> None:
        _check(self)


def _check(c: SearchConfig) -> None:
    choices = {"method": ("msr", "darts"), "space": tuple(SEARCH_SPACES),
               "mixing": ("sum", "rank_softmax"), "sn_method": ("power", "exact"),
               "measure": ("operator", "matrix"), "select": ("min", "max"),
               "order": ("first", "second")}
    for name, valid in choices.items():
        if getattr(c, name) not in valid:
            raise ConfigError(f"{name} must be one of {', '.join(valid)}, got {getattr(c, name)!r}")
    positive = ("layers", "channels", "epochs", "batch_size", "sn_iters")
    for name in positive:
        if getattr(c, name) < 1:
            raise ConfigError(f"{name} must be >= 1, got {getattr(c, name)}")
    if c.layers < 3:
        raise ConfigError(f"layers must be >= 3 (two reduction cells and a normal cell), got {c.layers}")
    if not 0.0 < c.train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be in (0, 1), got {c.train_fraction}")
    if c.choose not in ("min-val-loss", "last") and not (c.choose.isdigit() and 1 <= int(c.choose) <= c.epochs):
        raise ConfigError(f"choose must be min-val-loss, last or an epoch in 1..{c.epochs}, got {c.choose!r}")
    if c.sn_c <= 0:
        raise ConfigError(f"sn_c must be > 0, got {c.sn_c}")
    _check_darts(c)


def _check_darts(c: SearchConfig) -> None:
    """The architecture-step fields; ``mixing`` is an MSR option (DARTS mixes with softmax(alpha))."""
    if not c.arch_lr > 0:
        raise ConfigError(f"arch_lr must be > 0, got {c.arch_lr}")
    for name in ("arch_beta1", "arch_beta2"):
        if not 0.0 <= getattr(c, name) < 1.0:
            raise ConfigError(f"{name} must be in [0, 1), got {getattr(c, name)}")
    if c.arch_weight_decay < 0:
        raise ConfigError(f"arch_weight_decay must be >= 0, got {c.arch_weight_decay}")
    if c.method == "darts" and c.mixing != "sum":
        raise ConfigError(f"mixing={c.mixing!r} applies to method msr; darts mixes with softmax(alpha)")


PRESETS: dict[str, dict] = {
    # The paper's search (section 4.2.1, REFERENCE.md section 3): a GPU job.
    "paper": dict(data="cifar10", epochs=50, batch_size=128, layers=8, channels=16),
    # A CPU run of a few minutes on the embedded digits (8x8 grey): small supernet, few epochs.
    "quick": dict(data="digits", epochs=6, batch_size=64, layers=5, channels=8, crop_padding=1,
                  flip=False),
    # The DARTS baseline as the paper compares with it (REFERENCE.md section 3): second order, full
    # eight-op space, 50/50 split, batch 64, no spectral normalisation.  A GPU job.
    "darts-paper": dict(method="darts", space="darts", order="second", data="cifar10", epochs=50,
                        batch_size=64, layers=8, channels=16, train_fraction=0.5, spectral_norm=False),
    # The DARTS baseline on the embedded digits in a few CPU minutes (first order).
    "darts-quick": dict(method="darts", space="darts", data="digits", epochs=6, batch_size=64, layers=5,
                        channels=8, crop_padding=1, flip=False, train_fraction=0.5, spectral_norm=False),
}

# Defaults that depend on the method, applied when neither preset, file nor options set the field:
# DARTS splits the training set 50/50 and has no spectral normalisation.
METHOD_DEFAULTS: dict[str, dict] = {"darts": dict(train_fraction=0.5, spectral_norm=False)}


def resolve_config(preset: str = "quick", config_file: str | None = None,
                   overrides: dict | None = None) -> SearchConfig:
    """Preset values, then the config file's, then explicit overrides (None values are ignored)."""
    if preset not in PRESETS:
        raise ConfigError(f"unknown preset {preset!r}; choose one of {', '.join(PRESETS)}")
    values = dict(PRESETS[preset])
    if config_file:
        values.update(read_config_file(config_file))
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    for name, value in METHOD_DEFAULTS.get(values.get("method", "msr"), {}).items():
        values.setdefault(name, value)
    if "choose" in values:
        values["choose"] = str(values["choose"])
    return config_from_dict(SearchConfig, values)


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(SearchConfig)]
