"""Seeded, recordable subsets and splits of a labelled dataset.

Every function returns sorted int64 index tensors (CPU) into the label array, so that a run directory
can record exactly which images were used, and the same seed always gives the same indices.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from rankscope.errors import ConfigError

LabelsLike = torch.Tensor | np.ndarray | Sequence[int]
SeedLike = int | torch.Generator


def as_labels(labels: LabelsLike) -> torch.Tensor:
    """Labels as a 1-D int64 CPU tensor."""
    t = torch.as_tensor(np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels))
    if t.ndim != 1:
        raise ConfigError(f"labels must be 1-D, got shape {tuple(t.shape)}")
    return t.to(torch.int64)


def as_generator(seed: SeedLike) -> torch.Generator:
    """A CPU generator: an int seed is turned into a fresh generator, a generator is used as is."""
    if isinstance(seed, torch.Generator):
        return seed
    g = torch.Generator()
    g.manual_seed(int(seed))
    return g


def _per_class_permutations(labels: torch.Tensor, gen: torch.Generator) -> list[torch.Tensor]:
    """For each class present (ascending), its indices in a seeded random order."""
    out = []
    for c in torch.unique(labels).tolist():
        idx = torch.nonzero(labels == c).flatten()
        out.append(idx[torch.randperm(len(idx), generator=gen)])
    return out


def class_balanced_subset(labels: LabelsLike, limit: int | None, seed: SeedLike = 0) -> torch.Tensor:
    """Indices of ``limit`` samples spread as evenly over the classes as the data allows.

    Classes are filled round-robin (in a seeded class order) from seeded per-class permutations, so
    every class gets ``limit // K`` or one more, unless a class runs out, whose share goes to the
    others. ``limit`` None or >= N returns all indices.
    """
    y = as_labels(labels)
    n = len(y)
    if limit is None or limit >= n:
        return torch.arange(n, dtype=torch.int64)
    if limit <= 0:
        raise ConfigError(f"subset limit must be a positive number of samples, got {limit}")
    gen = as_generator(seed)
    perms = _per_class_permutations(y, gen)
    class_order = torch.randperm(len(perms), generator=gen)
    # Sort key: (position within its class, class rank) -> a round-robin over classes.
    keys = torch.cat([torch.arange(len(p)) * len(perms) + class_order[k] for k, p in enumerate(perms)])
    order = torch.argsort(keys, stable=True)[:limit]
    return torch.sort(torch.cat(perms)[order]).values


def split_train_val(
    labels: LabelsLike, train_fraction: float = 0.8, seed: SeedLike = 0, balanced: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Seeded disjoint split covering all samples: (train_idx, val_idx), both sorted.

    ``balanced`` stratifies by class (each class contributes round(fraction * its count) to train);
    otherwise one global permutation is cut at round(fraction * N). 0.8 is MSR-DARTS's 4:1 split,
    0.5 the DARTS one.
    """
    if not 0.0 < train_fraction < 1.0:
        raise ConfigError(f"train_fraction must be strictly between 0 and 1, got {train_fraction}")
    y = as_labels(labels)
    gen = as_generator(seed)
    groups = _per_class_permutations(y, gen) if balanced else [torch.randperm(len(y), generator=gen)]
    train, val = [], []
    for g in groups:
        cut = int(round(train_fraction * len(g)))
        train.append(g[:cut])
        val.append(g[cut:])
    train_idx, val_idx = torch.cat(train), torch.cat(val)
    if len(train_idx) == 0 or len(val_idx) == 0:
        raise ConfigError(
            f"train_fraction {train_fraction} of {len(y)} samples leaves an empty train or validation set"
        )
    return torch.sort(train_idx).values, torch.sort(val_idx).values
