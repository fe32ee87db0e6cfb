"""Run a training: genotype -> evaluation network -> the shared engine loop -> records.

Run directory (rank 0 writes, all atomically): ``config.json`` (resolved config plus the
``network`` record that rebuilds the net and the ``effective`` world-dependent values),
``metrics.csv`` (one row per epoch), ``checkpoint.pt`` (every epoch, resumable), ``best.pt``
(lowest test top-1 error) and, at the end, ``summary.json``. See docs/train.md.
"""
from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from rankscope import __version__
from rankscope.complexity import count_multiply_adds, count_parameters
from rankscope.data import derive_seed
from rankscope.engine import (OptimConfig, cross_entropy_loss, device_name, evaluate, lr_at, make_sgd,
                              progress_printer, resolve_device, set_lr, train_epoch)
from rankscope.genotype import from_dict, load_genotype
from rankscope.io import (config_from_dict, load_checkpoint, prepare_run_dir, read_config_file,
                          read_run_config,
                          save_checkpoint, write_csv, write_json)
from rankscope.network import NetworkConfig, build_network
from rankscope.train import distributed as D
from rankscope.train.config import TrainConfig, config_fields
from rankscope.train.data import TrainData, build_data, global_batch

Echo = Callable[[str], None]
_DROP_PATH_STREAM = 2  # keeps the drop-path seeds apart from the loader's streams


class SimulatedKill(RuntimeError):
    """Raised by the test hook ``kill_at`` to emulate a run killed mid-epoch."""


@dataclass
class TrainState:
    """What changes while training runs (what a checkpoint restores)."""

    epoch: int = 0                                               # completed epochs
    metrics: list = dataclasses.field(default_factory=list)      # one row per epoch
    seconds: float = 0.0                                         # wall time of completed epochs
    best_err: float | None = None                                # lowest test top-1 error (%)
    best_epoch: int = 0


@dataclass
class Run:
    """Everything built for one run on one rank."""

    cfg: TrainConfig
    out: Path
    env: D.DistEnv
    device: torch.device
    data: TrainData
    net: torch.nn.Module          # the network (what checkpoints hold)
    model: torch.nn.Module        # the same network, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    amp_dtype: torch.dtype | None
    record: dict                  # config.json contents
    echo: Echo


def optim_config(cfg: TrainConfig, world_size: int) -> OptimConfig:
    """The engine's schedule; lr (and its floor) times the world size when asked (ImageNet)."""
    scale = world_size if cfg.lr_scale_with_world else 1
    return OptimConfig(epochs=cfg.epochs, lr=cfg.lr * scale, lr_min=cfg.lr_min * scale,
                       momentum=cfg.momentum, weight_decay=cfg.weight_decay,
                       grad_clip=cfg.grad_clip, warmup_epochs=cfg.warmup_epochs)


def network_config(cfg: TrainConfig, genotype: dict, data: TrainData) -> NetworkConfig:
    return NetworkConfig(genotype=genotype, dataset=data.network_dataset, C=cfg.channels,
                         layers=cfg.layers, num_classes=data.num_classes,
                         in_channels=data.in_channels, auxiliary=cfg.auxiliary,
                         drop_path_prob=cfg.drop_path_prob)


def drop_path_at(cfg: TrainConfig, epoch: int) -> float:
    """Linear ramp from 0 at the first epoch towards ``drop_path_prob`` (DARTS convention)."""
    return cfg.drop_path_prob * epoch / cfg.epochs


def precision(cfg: TrainConfig, device: torch.device, echo: Echo):
    """(autocast dtype or None, GradScaler or None, channels_last); CUDA-only features noted on CPU."""
    if device.type != "cuda":
        if cfg.amp or cfg.channels_last:
            echo("note: --amp / --channels-last apply to CUDA only; ignored on " + device.type)
        return None, None, False
    if not cfg.amp:
        return None, None, cfg.channels_last
    dtype = torch.bfloat16 if cfg.amp_dtype == "bf16" else torch.float16
    scaler = torch.amp.GradScaler("cuda") if dtype == torch.float16 else None  # bf16 needs no scaling
    return dtype, scaler, cfg.channels_last


def run_train(cfg: TrainConfig | None, out: str | Path, *, resume: bool = False, echo: Echo = print,
              kill_at: tuple[int, int] | None = None) -> dict:
    """Train (or resume) into run directory ``out``; returns the summary dict ({} on ranks other than 0).

    Under torchrun (``WORLD_SIZE`` > 1) this joins the process group, trains with DDP and lets only
    rank 0 write and print. ``kill_at=(epoch, batch)`` (0-based) raises SimulatedKill there: tests
    use it to check that a resumed run ends exactly like an uninterrupted one.
    """
    if resume:  # the run directory's config wins
        out = prepare_run_dir(out, resume=True)
        cfg = config_from_dict(TrainConfig, config_fields(read_run_config(out, "train")))
    if cfg is None:
        raise ValueError("run_train needs a TrainConfig unless resume=True")
    device = resolve_device(cfg.device)
    env = D.setup(device)
    try:
        run = _build(cfg, out, env, D.process_device(device, env), resume, echo)
        state = _resume(run) if resume else _start(run)
        _loop(run, state, kill_at)
        summary = _finish(run, state) if env.is_main else {}
        D.barrier(env)
        return summary
    finally:
        D.teardown(env)


def _build(cfg: TrainConfig, out, env: D.DistEnv, device: torch.device, resume: bool, echo: Echo) -> Run:
    """Run directory, data, network, optimiser on this rank (errors are one line on every rank)."""
    echo = echo if env.is_main else (lambda _msg: None)
    if resume:
        saved = read_config_file(Path(out) / "config.json")
        genotype = saved["network"]["genotype"]  # the genotype trained, wherever the spec now points
    else:
        genotype = D.on_main(lambda: load_genotype(cfg.genotype).to_dict(), env)
    amp_dtype, scaler, channels_last = precision(cfg, device, echo)
    torch.manual_seed(cfg.seed)  # same initial weights on every rank (DDP also broadcasts rank 0's)
    data = build_data(cfg, env, device, channels_last)
    netcfg = network_config(cfg, genotype, data)
    net = build_network(netcfg).to(device)
    if channels_last:
        net = net.to(memory_format=torch.channels_last)
    if cfg.sync_bn and not (env.distributed and device.type == "cuda"):
        echo("note: --sync-bn applies to distributed CUDA runs only; using per-rank BatchNorm")
    model = D.wrap_model(net, env, device, sync_bn=cfg.sync_bn,
                         find_unused=cfg.auxiliary and cfg.auxiliary_weight == 0)
    net = D.unwrap(model)  # SyncBN conversion may have replaced modules
    ocfg = optim_config(cfg, env.world_size)
    optimizer = make_sgd(net.parameters(), ocfg)
    effective = {"world_size": env.world_size, "global_batch": global_batch(cfg, env),
                 "lr": ocfg.lr, "lr_min": ocfg.lr_min, "device": device.type,
                 "amp": str(amp_dtype).replace("torch.", "") if amp_dtype else None,
                 "channels_last": channels_last,
                 "input_shape": [data.in_channels, data.image_size, data.image_size]}
    record = {**dataclasses.asdict(cfg), "network": dataclasses.asdict(netcfg), "effective": effective}
    # Created last, so that a bad genotype, dataset or option leaves no empty run directory behind.
    out = D.on_main(lambda: prepare_run_dir(out, resume=resume), env)
    return Run(cfg, Path(out), env, device, data, net, model, optimizer, scaler, amp_dtype, record, echo)


def _start(run: Run) -> TrainState:
    if run.env.is_main:
        write_json(run.out / "config.json", run.record)
    c, d, e = run.cfg, run.data, run.record["effective"]
    run.echo(f"train {c.layers} cells, C={c.channels} ({c.genotype[:40]}) on {d.name}: "
             f"{d.n_train} train / {d.n_test} test images, {c.epochs} epochs, global batch "
             f"{e['global_batch']}, lr {e['lr']:g}, {e['world_size']} process(es) on {run.device}")
    return TrainState()


def _resume(run: Run) -> TrainState:
    """Restore network, optimiser, scaler and history from ``checkpoint.pt`` (read by rank 0)."""
    ckpt = D.on_main(lambda: load_checkpoint(run.out / "checkpoint.pt", kind="train"), run.env)
    saved, now = config_fields(ckpt["config"]), dataclasses.asdict(run.cfg)
    if saved != now:
        diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
        raise ValueError(f"cannot resume: config differs from the checkpoint's in {', '.join(diff)}")
    run.net.load_state_dict(ckpt["state_dict"])
    run.optimizer.load_state_dict(ckpt["optimizer"])
    if run.scaler is not None and ckpt.get("scaler"):
        run.scaler.load_state_dict(ckpt["scaler"])
    hist = ckpt["history"]
    state = TrainState(epoch=ckpt["epoch"], metrics=list(hist["metrics"]), seconds=float(hist["seconds"]),
                       best_err=hist["best_err"], best_epoch=int(hist["best_epoch"]))
    if ckpt["config"].get("effective", {}).get("world_size") != run.env.world_size:
        run.echo(f"note: resuming with {run.env.world_size} process(es) "
                 f"(the run started with {ckpt['config'].get('effective', {}).get('world_size')})")
    run.echo(f"resuming {run.out} after epoch {state.epoch}/{run.cfg.epochs}")
    return state


def _loop(run: Run, state: TrainState, kill_at: tuple[int, int] | None) -> None:
    cfg = run.cfg
    train_loss = cross_entropy_loss(cfg.label_smoothing, cfg.auxiliary_weight if cfg.auxiliary else 0.0)
    ocfg = optim_config(cfg, run.env.world_size)
    for epoch in range(state.epoch, cfg.epochs):
        start = time.perf_counter()
        lr = lr_at(ocfg, epoch)
        set_lr(run.optimizer, lr)
        run.net.drop_path_prob = drop_path_at(cfg, epoch)
        # Drop-path masks use the global RNG: seeded per (epoch, rank) so that a resumed run
        # draws the same masks and ranks draw independent ones.
        torch.manual_seed(derive_seed(cfg.seed, _DROP_PATH_STREAM, epoch, run.env.rank))
        batches = run.data.train_batches(epoch)
        if kill_at is not None and kill_at[0] == epoch:
            batches = _killing(batches, kill_at[1])
        stats = train_epoch(run.model, batches, run.optimizer, loss_fn=train_loss,
                            grad_clip=cfg.grad_clip, scaler=run.scaler, amp_dtype=run.amp_dtype,
                            progress=progress_printer(f"epoch {epoch + 1}", run.data.steps_per_epoch,
                                                      run.echo))
        stats = D.global_metrics(stats, "train", run.env, run.device)
        if (epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs:
            stats.update(_test(run))
        row = metrics_row(epoch, lr, run.net.drop_path_prob, stats, time.perf_counter() - start)
        _record(run, state, row)


def _test(run: Run) -> dict:
    """Global test metrics of rank 0's model (buffers synchronised, test split sharded by rank)."""
    D.sync_buffers(run.model, run.env)
    # The bare network: evaluation needs no gradient synchronisation.
    stats = evaluate(run.net, run.data.test_batches(), loss_fn=cross_entropy_loss(), prefix="test",
                     amp_dtype=run.amp_dtype)
    return D.global_metrics(stats, "test", run.env, run.device)


def metrics_row(epoch: int, lr: float, drop_prob: float, stats: dict, seconds: float) -> dict:
    """One metrics.csv row; errors in percent, test columns empty on epochs without evaluation."""
    row = {"epoch": epoch + 1, "lr": lr, "drop_path_prob": drop_prob,
           "train_loss": stats["train_loss"], "train_top1_err": 100.0 * (1 - stats["train_acc"]),
           "train_top5_err": 100.0 * (1 - stats["train_top5"]),
           "test_loss": None, "test_top1_err": None, "test_top5_err": None}
    if "test_loss" in stats:
        row.update(test_loss=stats["test_loss"], test_top1_err=100.0 * (1 - stats["test_acc"]),
                   test_top5_err=100.0 * (1 - stats["test_top5"]))
    train_s = stats["train_seconds"]
    row.update(seconds=seconds, train_seconds=train_s, img_per_s=stats["train_n"] / max(train_s, 1e-9))
    return row


def _record(run: Run, state: TrainState, row: dict) -> None:
    """Append the epoch, save best.pt (if improved) and checkpoint.pt; rank 0 only writes."""
    state.epoch, state.seconds = row["epoch"], state.seconds + row["seconds"]
    state.metrics.append(row)
    improved = row["test_top1_err"] is not None and (state.best_err is None
                                                     or row["test_top1_err"] < state.best_err)
    if improved:
        state.best_err, state.best_epoch = row["test_top1_err"], row["epoch"]
    if run.env.is_main:
        write_csv(run.out / "metrics.csv", state.metrics)
        if improved:
            _save(run, state, "best.pt", resumable=False)
        _save(run, state, "checkpoint.pt", resumable=True)
    test = "" if row["test_loss"] is None else (
        f"  test loss {row['test_loss']:.4f} err {row['test_top1_err']:.2f}% / {row['test_top5_err']:.2f}%")
    run.echo(f"epoch {row['epoch']}/{run.cfg.epochs}  lr {row['lr']:.4g}  train loss "
             f"{row['train_loss']:.4f} err {row['train_top1_err']:.2f}%{test}  {row['seconds']:.1f}s "
             f"({row['img_per_s']:.0f} img/s)")


def _save(run: Run, state: TrainState, name: str, resumable: bool) -> None:
    extra = {}
    if resumable:
        extra = {"optimizer": run.optimizer.state_dict(),
                 "scaler": run.scaler.state_dict() if run.scaler is not None else None,
                 "history": {"metrics": state.metrics, "seconds": state.seconds,
                             "best_err": state.best_err, "best_epoch": state.best_epoch}}
    save_checkpoint(run.out / name, kind="train", config=run.record,
                    state_dict=run.net.state_dict(), epoch=state.epoch, metrics=state.metrics[-1],
                    genotype=run.record["network"]["genotype"], **extra)


def _killing(batches, at: int):
    for i, b in enumerate(batches):
        if i == at:
            raise SimulatedKill(f"simulated kill at batch {at}")
        yield b


def _finish(run: Run, state: TrainState) -> dict:
    """summary.json: final and best test error, size, speed, device."""
    last, net, data = state.metrics[-1], run.net, run.data
    train_s = sum(m["train_seconds"] for m in state.metrics)
    summary = {
        "rankscope_version": __version__, "genotype": run.record["network"]["genotype"],
        "genotype_text": from_dict(run.record["network"]["genotype"]).to_darts_text(),
        "dataset": data.name, "epochs": state.epoch,
        "test_top1_err": last["test_top1_err"], "test_top5_err": last["test_top5_err"],
        "test_loss": last["test_loss"],
        "best_test_top1_err": state.best_err, "best_epoch": state.best_epoch,
        "params": count_parameters(net), "params_m": count_parameters(net) / 1e6,
        "multiply_adds": count_multiply_adds(net, data.image_size, data.in_channels),
        "image_size": data.image_size,
        "wall_seconds": state.seconds, "device_hours": state.seconds / 3600.0,
        "img_per_s": data.n_train * len(state.metrics) / max(train_s, 1e-9),
        "device": str(run.device), "device_name": device_name(run.device),
        "world_size": run.env.world_size,
    }
    summary["multiply_adds_m"] = summary["multiply_adds"] / 1e6
    write_json(run.out / "summary.json", summary)
    run.echo(f"test error {summary['test_top1_err']:.2f}% (top-5 {summary['test_top5_err']:.2f}%), "
             f"best {summary['best_test_top1_err']:.2f}% at epoch {state.best_epoch}; "
             f"{summary['params_m']:.3f} M params, {summary['multiply_adds_m']:.1f} M multiply-adds; "
             f"summary in {run.out / 'summary.json'}")
    return summary


__all__ = ["run_train", "SimulatedKill", "TrainState", "optim_config", "network_config",
           "drop_path_at", "metrics_row"]
