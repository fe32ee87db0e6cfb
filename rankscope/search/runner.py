"""Run a search: data -> supernet -> shared training loop -> per-epoch stable ranks -> genotype.

Run directory layout (all written atomically, rewritten from the checkpoint on resume):
``config.json``, ``split.npz``, ``metrics.csv``, ``stable_ranks.csv``, ``genotypes.jsonl``,
``checkpoint.pt``, and at the end ``genotype.json`` (+ ``genotype_max.json``) and ``summary.json``.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import torch

from rankscope import __version__
from rankscope.data import AugmentConfig, TensorLoader, class_balanced_subset, load_arrays, split_train_val
from rankscope.fastnet import build_supernet
from rankscope.engine import (OptimConfig, cross_entropy_loss, device_name, evaluate, lr_at, make_sgd,
                              progress_printer, resolve_device, rng_state, seed_everything,
                              set_lr, set_rng_state, train_epoch)
from rankscope.genotype import from_dict
from rankscope.io import (atomic_write_text, config_from_dict, load_checkpoint, prepare_run_dir,
                          read_run_config, save_checkpoint, write_csv, write_json)
from rankscope.ops import SEARCH_SPACES
from rankscope.search.config import SearchConfig
from rankscope.search.methods import SearchMethod, make_method
from rankscope.selection import average_table
from rankscope.specnorm import SpecNormConfig
from rankscope.supernet import SearchNetwork, SupernetConfig

Echo = Callable[[str], None]


class SimulatedKill(RuntimeError):
    """Raised by the test hook ``kill_at`` to emulate a run killed mid-epoch."""


@dataclass
class SearchState:
    """Everything that changes while a search runs (what a checkpoint must restore)."""

    epoch: int = 0                       # completed epochs
    metrics: list = dataclasses.field(default_factory=list)     # one dict per epoch
    genotypes: list = dataclasses.field(default_factory=list)   # one dict per epoch
    seconds: float = 0.0                 # accumulated wall time of completed epochs


def supernet_config(cfg: SearchConfig, channels_in: int, num_classes: int, image_size: int) -> SupernetConfig:
    specnorm = SpecNormConfig(enabled=cfg.spectral_norm, C=cfg.sn_c, n_iter=cfg.sn_iters,
                              method=cfg.sn_method)
    return SupernetConfig(in_channels=channels_in, num_classes=num_classes, C=cfg.channels,
                          layers=cfg.layers, primitives=SEARCH_SPACES[cfg.space],
                          mixing=cfg.mixing if cfg.method == "msr" else "alpha",
                          specnorm=specnorm, image_size=image_size)


def optim_config(cfg: SearchConfig) -> OptimConfig:
    return OptimConfig(epochs=cfg.epochs, lr=cfg.lr, lr_min=cfg.lr_min, momentum=cfg.momentum,
                       weight_decay=cfg.weight_decay, grad_clip=cfg.grad_clip)


def build_loaders(cfg: SearchConfig, device: torch.device, out: Path | None = None):
    """Train and validation loaders over a seeded split of the training images."""
    arrays = load_arrays(cfg.data, cfg.data_dir)
    idx = class_balanced_subset(arrays.y_train, cfg.train_limit, cfg.seed) if cfg.train_limit \
        else torch.arange(len(arrays.y_train))
    tr, va = split_train_val(arrays.y_train[idx], cfg.train_fraction, cfg.seed)
    train_idx, val_idx = idx[tr], idx[va]
    if out is not None:  # the split is part of the run's record
        np.savez(out / "split.npz", train=train_idx.numpy(), val=val_idx.numpy())
    augment = AugmentConfig(crop_padding=cfg.crop_padding, flip=cfg.flip)
    common = dict(mean=arrays.mean, std=arrays.std, seed=cfg.seed, device=device)
    train = TensorLoader(arrays.x_train[train_idx], arrays.y_train[train_idx], batch_size=cfg.batch_size,
                         shuffle=True, augment=augment, **common)
    val = TensorLoader(arrays.x_train[val_idx], arrays.y_train[val_idx], batch_size=cfg.batch_size,
                       shuffle=False, augment=None, **common)
    return arrays, train, val


def choose_epoch(cfg: SearchConfig, metrics: list[dict]) -> int:
    """1-based epoch whose genotype is final: minimum validation loss (paper 4.2.2), last, or fixed."""
    if cfg.choose == "last":
        return len(metrics)
    if cfg.choose.isdigit():
        return min(int(cfg.choose), len(metrics))
    losses = [m["val_loss"] for m in metrics]
    return int(np.argmin(losses)) + 1  # first minimum on ties


def _write_records(out: Path, state: SearchState) -> None:
    write_csv(out / "metrics.csv", state.metrics)
    atomic_write_text(out / "genotypes.jsonl", "".join(json.dumps(g) + "\n" for g in state.genotypes))


def _append_stable_ranks(out: Path, table: pd.DataFrame, epoch: int, keep_upto: int) -> None:
    """Add this epoch's rows to stable_ranks.csv, dropping rows past ``keep_upto`` (resume)."""
    path = out / "stable_ranks.csv"
    old = pd.read_csv(path) if path.exists() else None
    if old is not None:
        old = old[old["epoch"] <= keep_upto]
    rows = table.assign(epoch=epoch)
    rows = rows[["epoch"] + [c for c in rows.columns if c != "epoch"]]
    merged = rows if old is None else pd.concat([old, rows], ignore_index=True)
    atomic_write_text(path, merged.to_csv(index=False))


def _save(out: Path, cfg: SearchConfig, net, optimizer, method: SearchMethod, state: SearchState) -> None:
    save_checkpoint(out / "checkpoint.pt", kind="search", config=_config_record(cfg, net),
                    state_dict=net.state_dict(), epoch=state.epoch,
                    metrics=state.metrics[-1] if state.metrics else {},
                    genotype=state.genotypes[-1]["genotype"] if state.genotypes else None,
                    optimizer=optimizer.state_dict(), method_state=method.state_dict(),
                    rng=rng_state(), history={"metrics": state.metrics, "genotypes": state.genotypes,
                                              "seconds": state.seconds})


def _config_record(cfg: SearchConfig, net: SearchNetwork) -> dict:
    return {**dataclasses.asdict(cfg), "supernet": dataclasses.asdict(net.config)}


def _resume(out: Path, cfg: SearchConfig, net, optimizer, method: SearchMethod) -> SearchState:
    ckpt = load_checkpoint(out / "checkpoint.pt", kind="search")
    saved = {k: v for k, v in ckpt["config"].items() if k != "supernet"}
    if saved != dataclasses.asdict(cfg):
        diff = sorted(k for k in saved if saved.get(k) != dataclasses.asdict(cfg).get(k))
        raise ValueError(f"cannot resume: config differs from the checkpoint's in {', '.join(diff)}")
    net.load_state_dict(ckpt["state_dict"])
    optimizer.load_state_dict(ckpt["optimizer"])
    method.load_state_dict(ckpt.get("method_state", {}))
    set_rng_state(ckpt["rng"])
    hist = ckpt["history"]
    return SearchState(epoch=ckpt["epoch"], metrics=list(hist["metrics"]),
                       genotypes=list(hist["genotypes"]), seconds=float(hist["seconds"]))


def run_search(cfg: SearchConfig, out: str | Path, *, resume: bool = False, echo: Echo = print,
               kill_at: tuple[int, int] | None = None) -> dict:
    """Run (or resume) a search into run directory ``out``; returns the summary dict.

    ``kill_at=(epoch, batch)`` (0-based) raises SimulatedKill there: tests use it to check that a
    resumed run ends exactly like an uninterrupted one.
    """
    out = prepare_run_dir(out, resume=resume)
    if resume:  # the run directory's config wins; explicit options must agree with it
        saved = read_run_config(out, "search")
        cfg = config_from_dict(SearchConfig, {k: v for k, v in saved.items() if k != "supernet"})
    device = resolve_device(cfg.device)
    seed_everything(cfg.seed)
    arrays, train, val = build_loaders(cfg, device, None if resume else out)
    net = build_supernet(supernet_config(cfg, arrays.channels, arrays.num_classes, arrays.image_size), cfg.impl).to(device)
    method = make_method(cfg, net, device, train=train, val=val)
    optimizer = make_sgd(net.parameters(), optim_config(cfg))  # weights only; a method owns its own
    method.bind_optimizer(optimizer)  # DARTS's unrolled step reads the momentum buffers
    if resume:
        state = _resume(out, cfg, net, optimizer, method)
        echo(f"resuming {out} after epoch {state.epoch}/{cfg.epochs}")
    else:
        state = SearchState()
        write_json(out / "config.json", _config_record(cfg, net))
        echo(f"search ({cfg.method}) on {arrays.name}: {len(train.labels)} train / {len(val.labels)} "
             f"val images, {cfg.layers} cells, C={cfg.channels}, {cfg.epochs} epochs, device {device}")
    _loop(cfg, out, net, optimizer, method, state, train, val, echo, kill_at)
    return _finish(cfg, out, state, device, echo)


def _loop(cfg, out, net, optimizer, method, state, train, val, echo, kill_at) -> None:
    loss_fn, ocfg = cross_entropy_loss(), optim_config(cfg)
    for epoch in range(state.epoch, cfg.epochs):
        start = time.perf_counter()
        lr = lr_at(ocfg, epoch)
        set_lr(optimizer, lr)
        method.on_epoch_start(epoch, lr)
        batches = train.epoch(epoch)
        if kill_at is not None and kill_at[0] == epoch:
            batches = _killing(batches, kill_at[1])
        stats = train_epoch(method.model, batches, optimizer, loss_fn=loss_fn, grad_clip=cfg.grad_clip,
                            before_step=method.before_step,
                            progress=progress_printer(f"epoch {epoch + 1}", len(train), echo))
        stats.update(evaluate(method.model, val.epoch(0), loss_fn=loss_fn, prefix="val"))
        table = method.stable_rank_table()
        genos = method.genotypes(table)
        seconds = time.perf_counter() - start
        state.epoch, state.seconds = epoch + 1, state.seconds + seconds
        state.metrics.append({"epoch": epoch + 1, "lr": lr, **stats, "seconds": seconds})
        state.genotypes.append({"epoch": epoch + 1, **genos})
        _append_stable_ranks(out, table, epoch + 1, keep_upto=epoch)
        _write_records(out, state)
        _save(out, cfg, net, optimizer, method, state)
        echo(f"epoch {epoch + 1}/{cfg.epochs}  lr {lr:.4f}  train loss {stats['train_loss']:.4f} "
             f"acc {stats['train_acc']:.3f}  val loss {stats['val_loss']:.4f} acc {stats['val_acc']:.3f}"
             f"  {seconds:.1f}s  ({len(train) * cfg.batch_size / max(stats['train_seconds'], 1e-9):.0f} img/s)")


def _killing(batches, at: int):
    for i, b in enumerate(batches):
        if i == at:
            raise SimulatedKill(f"simulated kill at batch {at}")
        yield b


def _finish(cfg: SearchConfig, out: Path, state: SearchState, device: torch.device, echo: Echo) -> dict:
    chosen = choose_epoch(cfg, state.metrics)
    record = state.genotypes[chosen - 1]
    write_json(out / "genotype.json", record["genotype"])
    for rule in ("min", "max"):  # both stable-rank genotypes of the chosen epoch, when recorded
        if f"genotype_{rule}" in record:
            write_json(out / f"genotype_{rule}.json", record[f"genotype_{rule}"])
    summary = {
        "rankscope_version": __version__, "method": cfg.method, "chosen_epoch": chosen,
        "choose": cfg.choose, "genotype": record["genotype"],
        "genotype_text": from_dict(record["genotype"]).to_darts_text(),
        "final_metrics": state.metrics[-1], "search_seconds": state.seconds,
        "device": str(device), "device_name": device_name(device),
        "device_hours": state.seconds / 3600.0, "device_days": state.seconds / 86400.0,
    }
    write_json(out / "summary.json", summary)
    echo(f"chose epoch {chosen} ({cfg.choose}); genotype written to {out / 'genotype.json'}")
    echo(summary["genotype_text"])
    return summary


__all__ = ["run_search", "choose_epoch", "build_loaders", "supernet_config", "SimulatedKill",
           "average_table"]
