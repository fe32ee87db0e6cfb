"""Search methods plug into the shared loop through a small protocol.

A method decides what happens around the weight steps (DARTS updates alpha before each one) and
which genotypes an epoch yields. MSR-DARTS trains weights only and selects by stable rank.
"""
from __future__ import annotations

from typing import Protocol

import pandas as pd
import torch

from rankscope.errors import ConfigError
from rankscope.search.config import SearchConfig
from rankscope.selection import average_table, select_genotype, stable_rank_table
from rankscope.supernet import SearchNetwork


class SearchMethod(Protocol):
    """What the loop needs from a method. ``model`` is the module trained and evaluated: the
    supernet itself for MSR-DARTS, a wrapper that mixes with softmax(alpha) for DARTS."""

    model: torch.nn.Module

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None: ...
    def on_epoch_start(self, epoch: int, lr: float) -> None: ...
    def before_step(self, index: int, batch) -> None: ...
    def stable_rank_table(self) -> pd.DataFrame: ...
    def genotypes(self, table: pd.DataFrame) -> dict: ...
    def state_dict(self) -> dict: ...
    def load_state_dict(self, state: dict) -> None: ...


def rank_genotypes(net: SearchNetwork, table: pd.DataFrame, select: str) -> dict:
    """Both stable-rank genotypes of an epoch (min: the paper's rule; max: Appendix B)."""
    avg = average_table(table)
    prims = net.config.primitives
    out = {rule: select_genotype(avg, rule=rule, primitives=prims).to_dict() for rule in ("min", "max")}
    return {"genotype": out[select], "genotype_min": out["min"], "genotype_max": out["max"]}


class MSRMethod:
    """MSR-DARTS: weights only; per-epoch stable-rank tables; optional rank-softmax mixing."""

    def __init__(self, cfg: SearchConfig, net: SearchNetwork):
        self.cfg, self.net, self.model = cfg, net, net

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        return None  # only DARTS's unrolled step reads the weight optimizer (its momentum)

    def on_epoch_start(self, epoch: int, lr: float) -> None:
        if self.cfg.mixing == "rank_softmax":
            # The authors' code: mixing weights softmax(-R) from the current stable ranks, once per epoch.
            avg = average_table(self.stable_rank_table())
            self.net.set_rank_weights(**_rank_tensors(avg, self.net))

    def before_step(self, index: int, batch) -> None:
        return None

    def stable_rank_table(self) -> pd.DataFrame:
        return stable_rank_table(self.net, measure=self.cfg.measure, reduction_bug=self.cfg.reduction_bug)

    def genotypes(self, table: pd.DataFrame) -> dict:
        return rank_genotypes(self.net, table, self.cfg.select)

    def state_dict(self) -> dict:
        return {}

    def load_state_dict(self, state: dict) -> None:
        return None


def _rank_tensors(avg: pd.DataFrame, net: SearchNetwork) -> dict:
    """(edges, ops) tensors of average stable ranks per cell type, in the supernet's op order."""
    prims = list(net.config.primitives)
    result = {}
    for cell_type in ("normal", "reduce"):
        sub = avg[avg["cell_type"] == cell_type]
        pivot = sub.pivot(index="edge", columns="op", values="stable_rank")[prims]
        result[cell_type] = torch.tensor(pivot.sort_index().to_numpy(), dtype=torch.float32)
    return result


def make_method(cfg: SearchConfig, net: SearchNetwork, device: torch.device, *, train, val) -> SearchMethod:
    """The method object for ``cfg.method``; ``train``/``val`` are the run's TensorLoaders."""
    if cfg.method == "msr":
        return MSRMethod(cfg, net)
    if cfg.method == "darts":
        try:
            from rankscope.search.darts import DartsMethod
        except ImportError:
            raise ConfigError("method darts is not available in this build") from None
        return DartsMethod(cfg, net, device, train=train, val=val)
    raise ConfigError(f"unknown search method {cfg.method!r}")
