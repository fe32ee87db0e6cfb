"""Discrete cells and evaluation networks built from a genotype (REFERENCE.md sections 1 and 3).

Two networks share one ``Cell``:

* ``NetworkCIFAR``: 3×3 stem to 3·C channels, ``layers`` cells with reductions at layers//3 and
  2·layers//3 (channels double there), optional auxiliary head after cell 2·layers//3, global
  average pool and a linear classifier.
* ``NetworkImageNet``: the DARTS 224×224 stem (three stride-2 3×3 convs, so the first cell sees a
  28×28 map and is told its older input came from a "reduction"), the same cell stack, and the
  ImageNet auxiliary head (no BN after its 768-channel conv).

``forward(x)`` returns ``(logits, logits_aux)``; ``logits_aux`` is ``None`` in eval mode or without
an auxiliary head. ``net.drop_path_prob`` is a plain attribute the trainer ramps over epochs.

Small inputs: the auxiliary heads pool 5×5 as the papers do when the feature map is at least 5×5;
on smaller maps (e.g. 8×8 digits, whose aux input is 2×2) they fall back to an adaptive average pool
to 2×2, and on maps larger than the design size they average the head's final map to 1×1, so the
768-feature classifier fits any input that survives the reductions. At the design sizes (CIFAR
32×32, ImageNet 224×224) both fallbacks are no-ops and the heads are exactly the published ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from rankscope.errors import ConfigError
from rankscope.genotype import Genotype, from_dict
from rankscope.ops import FactorizedReduce, Identity, ReLUConvBN, make_op

DATASETS = ("cifar", "imagenet")


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Zero whole samples of ``x`` (B, ...) with probability ``p``; scale survivors by 1/(1-p).

    The mask is made with ``x.new_empty`` so it lives on x's device and dtype (the DARTS code used a
    CUDA-only tensor type). The expected value of the output equals ``x``.
    """
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return x * 0.0
    keep = 1.0 - p
    # One Bernoulli draw per sample, broadcast over (C, H, W).
    mask = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(keep)
    return x * mask / keep


class Cell(nn.Module):
    """A discrete cell: 2 preprocessed inputs, 4 intermediate nodes, concat of the genotype's nodes.

    Inputs s0 (B, C_prev_prev, H0, W0) and s1 (B, C_prev, H, W); when ``reduction_prev`` is set, s0
    is twice the size of s1 and is halved by FactorizedReduce. Output (B, len(concat)·C, H', W') with
    H' = H/2 in a reduction cell, H otherwise.
    """

    def __init__(self, genotype: Genotype, C_prev_prev: int, C_prev: int, C: int,
                 reduction: bool, reduction_prev: bool):
        super().__init__()
        self.reduction = reduction
        self.preprocess0 = _build("preprocess0", lambda: (
            FactorizedReduce(C_prev_prev, C, affine=True) if reduction_prev
            else ReLUConvBN(C_prev_prev, C, 1, 1, 0, affine=True)), C)
        self.preprocess1 = ReLUConvBN(C_prev, C, 1, 1, 0, affine=True)
        edges = genotype.reduce if reduction else genotype.normal
        concat = genotype.reduce_concat if reduction else genotype.normal_concat
        ops = []
        for k, (name, index) in enumerate(edges):
            # Only edges leaving the two cell inputs are strided in a reduction cell.
            stride = 2 if reduction and index < 2 else 1
            ops.append(_build(f"edge {k} ({name!r}, input {index})",
                              lambda: make_op(name, C, stride, affine=True), C))
        self.ops = nn.ModuleList(ops)
        self.indices = tuple(index for _, index in edges)
        self.concat = tuple(concat)
        self.multiplier = len(self.concat)

    def forward(self, s0: torch.Tensor, s1: torch.Tensor, drop_prob: float = 0.0) -> torch.Tensor:
        states = [self.preprocess0(s0), self.preprocess1(s1)]  # each (B, C, H, W)
        for node in range(len(self.ops) // 2):
            total = None
            for k in (2 * node, 2 * node + 1):
                op = self.ops[k]
                h = op(states[self.indices[k]])
                # Identity edges are never dropped: dropping them would drop the cell's shortcut.
                if not isinstance(op, Identity):
                    h = drop_path(h, drop_prob, self.training)
                total = h if total is None else total + h
            states.append(total)
        return torch.cat([states[i] for i in self.concat], dim=1)


def _build(what: str, factory, C: int) -> nn.Module:
    """Call ``factory``; turn a channel mismatch into a ConfigError that names the edge."""
    try:
        return factory()
    except ValueError as exc:
        raise ConfigError(f"cannot build cell {what} with C={C} channels: {exc}") from None


class _AuxPool(nn.Module):
    """AvgPool 5×5 (stride s, padding 0) on maps >= 5×5; adaptive average pool to 2×2 below that."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) >= 5:
            return F.avg_pool2d(x, 5, stride=self.stride, padding=0, count_include_pad=False)
        return F.adaptive_avg_pool2d(x, 2)


class AuxiliaryHead(nn.Module):
    """Auxiliary classifier on (B, C, H, W) features -> (B, num_classes) logits.

    ``imagenet=False``: the CIFAR head (pool stride 3, BN after the 768-channel conv).
    ``imagenet=True``: the ImageNet head (pool stride 2, no BN after the 768-channel conv, as DARTS
    trained it).
    """

    def __init__(self, C: int, num_classes: int, imagenet: bool):
        super().__init__()
        late_bn = [] if imagenet else [nn.BatchNorm2d(768)]
        self.features = nn.Sequential(
            nn.ReLU(inplace=False),
            _AuxPool(stride=2 if imagenet else 3),
            nn.Conv2d(C, 128, 1, bias=False),
            nn.BatchNorm2d(128),
            nn.ReLU(inplace=False),
            nn.Conv2d(128, 768, 2, bias=False),
            *late_bn,
            nn.ReLU(inplace=False),
        )
        self.classifier = nn.Linear(768, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 768, 1, 1) at the design input size
        x = F.adaptive_avg_pool2d(x, 1) if x.shape[-1] * x.shape[-2] > 1 else x
        return self.classifier(x.flatten(1))


@dataclass(frozen=True)
class NetworkConfig:
    """Everything needed to rebuild an evaluation network (stored in checkpoints as a dict).

    ``genotype`` is ``Genotype.to_dict()`` (a ``Genotype`` is accepted and converted); the
    defaults are the CIFAR paper network (C=36, 20 cells).
    The ImageNet paper network is ``dataset="imagenet", C=48, layers=14, num_classes=1000``.
    """

    genotype: dict = field(hash=False)
    dataset: str = "cifar"
    C: int = 36
    layers: int = 20
    num_classes: int = 10
    in_channels: int = 3
    auxiliary: bool = True
    drop_path_prob: float = 0.2

    def __post_init__(self) -> None:
        if isinstance(self.genotype, Genotype):  # accept a Genotype, store its plain-dict form
            object.__setattr__(self, "genotype", self.genotype.to_dict())
        from_dict(self.genotype)  # fail early with the GenotypeError that names the problem
        if self.dataset not in DATASETS:
            raise ConfigError(f"network dataset must be one of {DATASETS}, got {self.dataset!r}")
        for name in ("C", "layers", "num_classes", "in_channels"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"network {name} must be a positive integer, "
                                  f"got {getattr(self, name)!r}")
        if not 0.0 <= self.drop_path_prob < 1.0:
            raise ConfigError(f"drop_path_prob must be in [0, 1), got {self.drop_path_prob}")
        if self.dataset == "imagenet" and self.C % 2:
            raise ConfigError(f"the ImageNet stem needs an even C (its first conv has C/2 "
                              f"channels), got C={self.C}")


def _cell_stack(genotype: Genotype, C_stem: int, C: int, layers: int, reduction_prev: bool
                ) -> tuple[nn.ModuleList, int, int]:
    """Cells after a stem of ``C_stem`` channels; returns (cells, C of the aux input, C of the last)."""
    cells = nn.ModuleList()
    C_pp, C_p, C_curr = C_stem, C_stem, C
    C_aux = C_p
    for i in range(layers):
        reduction = i in (layers // 3, 2 * layers // 3)
        if reduction:
            C_curr *= 2
        cell = Cell(genotype, C_pp, C_p, C_curr, reduction, reduction_prev)
        cells.append(cell)
        reduction_prev = reduction
        C_pp, C_p = C_p, cell.multiplier * C_curr
        if i == 2 * layers // 3:
            C_aux = C_p
    return cells, C_aux, C_p


class _Network(nn.Module):
    """Shared forward: stem -> cells (aux head after cell 2L//3 in training) -> pool -> linear."""

    def _init_cells(self, config: NetworkConfig, genotype: Genotype, C_stem: int,
                    reduction_prev: bool, imagenet: bool) -> None:
        self.config = config
        self.drop_path_prob = float(config.drop_path_prob)
        self._aux_index = 2 * config.layers // 3
        self.cells, C_aux, C_last = _cell_stack(genotype, C_stem, config.C, config.layers,
                                                reduction_prev)
        # The attribute name contains "auxiliary" so parameter counts can leave the head out.
        self.auxiliary_head = (AuxiliaryHead(C_aux, config.num_classes, imagenet)
                               if config.auxiliary else None)
        self.global_pooling = nn.AdaptiveAvgPool2d(1)  # = AvgPool 7 on ImageNet's 7×7 map
        self.classifier = nn.Linear(C_last, config.num_classes)

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x (B, in_channels, H, W) -> logits (B, num_classes), aux logits or None."""
        s0, s1 = self.stem_forward(x)
        logits_aux = None
        for i, cell in enumerate(self.cells):
            s0, s1 = s1, cell(s0, s1, self.drop_path_prob)
            if i == self._aux_index and self.auxiliary_head is not None and self.training:
                logits_aux = self.auxiliary_head(s1)
        logits = self.classifier(self.global_pooling(s1).flatten(1))
        return logits, logits_aux


class NetworkCIFAR(_Network):
    """The CIFAR evaluation network (any small square input, e.g. 32×32 or 8×8)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        genotype = from_dict(config.genotype)
        C_stem = 3 * config.C  # stem multiplier 3
        self.stem = nn.Sequential(
            nn.Conv2d(config.in_channels, C_stem, 3, padding=1, bias=False),
            nn.BatchNorm2d(C_stem),
        )
        self._init_cells(config, genotype, C_stem, reduction_prev=False, imagenet=False)

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s = self.stem(x)  # (B, 3C, H, W); both cell inputs of the first cell
        return s, s


class NetworkImageNet(_Network):
    """The ImageNet evaluation network; input sides must survive 5 halvings (e.g. 224, 64, 32)."""

    def __init__(self, config: NetworkConfig):
        super().__init__()
        genotype = from_dict(config.genotype)
        C = config.C
        self.stem0 = nn.Sequential(
            nn.Conv2d(config.in_channels, C // 2, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C // 2),
            nn.ReLU(inplace=False),
            nn.Conv2d(C // 2, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        self.stem1 = nn.Sequential(
            nn.ReLU(inplace=False),
            nn.Conv2d(C, C, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(C),
        )
        # stem0's output is twice the size of stem1's, hence reduction_prev for the first cell.
        self._init_cells(config, genotype, C, reduction_prev=True, imagenet=True)

    def stem_forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        s0 = self.stem0(x)  # (B, C, H/4, W/4)
        return s0, self.stem1(s0)  # s1: (B, C, H/8, W/8)


def build_network(config: NetworkConfig) -> nn.Module:
    """The evaluation network for ``config.dataset`` (raises ConfigError / GenotypeError)."""
    cls = NetworkImageNet if config.dataset == "imagenet" else NetworkCIFAR
    return cls(config)
