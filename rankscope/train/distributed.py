"""DDP plumbing for ``rankscope train``: environment detection, process group, wrapping, reductions.

The same command runs single-process or under ``torchrun`` (one or many nodes): torchrun sets
``WORLD_SIZE``, ``RANK`` and ``LOCAL_RANK``; with ``WORLD_SIZE`` > 1 a process group is initialised
(gloo on CPU, nccl on CUDA, rendezvous through torchrun's ``MASTER_ADDR``/``MASTER_PORT``). Only
rank 0 writes files and prints. Nothing here runs at import time.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, TypeVar

import torch
import torch.distributed as dist
from torch import nn

from rankscope.errors import ConfigError, RankscopeError

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job; ``world_size == 1`` means no process group."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1
    owns_group: bool = False  # this module initialised the process group (and tears it down)

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def env_from_environ(environ: dict | None = None) -> DistEnv:
    """Rank and world size from torchrun's variables (absent = single process)."""
    environ = os.environ if environ is None else environ
    try:
        world = int(environ.get("WORLD_SIZE", "1"))
        rank = int(environ.get("RANK", "0"))
        local = int(environ.get("LOCAL_RANK", str(rank)))
    except ValueError as exc:
        raise ConfigError(f"bad torchrun environment (WORLD_SIZE/RANK/LOCAL_RANK): {exc}") from None
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"RANK {rank} is not in 0..WORLD_SIZE-1 (WORLD_SIZE {world})")
    return DistEnv(rank=rank, local_rank=local, world_size=world)


def process_device(device: torch.device, env: DistEnv) -> torch.device:
    """One GPU per process: ``cuda`` becomes ``cuda:LOCAL_RANK`` under a multi-process launch."""
    if device.type == "cuda" and env.distributed and device.index is None:
        device = torch.device("cuda", env.local_rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    return device


def setup(device: torch.device, environ: dict | None = None) -> DistEnv:
    """Detect the launch and, when distributed, initialise the process group for ``device``."""
    env = env_from_environ(environ)
    if not env.distributed:
        return env
    if dist.is_available() and dist.is_initialized():  # e.g. a caller that set it up already
        return env
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        dist.init_process_group(backend, device_id=device)
    else:
        dist.init_process_group(backend)
    return DistEnv(env.rank, env.local_rank, env.world_size, owns_group=True)


def teardown(env: DistEnv) -> None:
    """Destroy the process group if ``setup`` created it."""
    if env.owns_group and dist.is_initialized():
        dist.destroy_process_group()


def barrier(env: DistEnv) -> None:
    if env.distributed:
        dist.barrier()


def wrap_model(model: nn.Module, env: DistEnv, device: torch.device, *, sync_bn: bool,
               find_unused: bool) -> nn.Module:
    """DDP around ``model`` when distributed (parameters broadcast from rank 0); else ``model``.

    BN is per rank (each rank normalises with its own slice's statistics) unless ``sync_bn``
    on CUDA, where SyncBatchNorm uses the statistics of the whole global batch.
    """
    if not env.distributed:
        return model
    if sync_bn and device.type == "cuda":
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids,
                                               find_unused_parameters=find_unused)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (what checkpoints store)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def sync_buffers(model: nn.Module, env: DistEnv) -> None:
    """Broadcast rank 0's buffers (BN running statistics) so every rank evaluates the same model.

    Under DDP each rank's last BN update came from its own slice; after this, all ranks hold the
    model that rank 0 saves in the checkpoint.
    """
    if not env.distributed:
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf.data, src=0)


def all_reduce_sums(values: list[float], env: DistEnv, device: torch.device) -> list[float]:
    """Element-wise sum of ``values`` over ranks (float64; on ``device`` for nccl)."""
    if not env.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t.tolist()


def global_metrics(stats: dict, prefix: str, env: DistEnv, device: torch.device) -> dict:
    """Turn one rank's mean metrics (``{prefix}_loss/_acc/_top5/_n``) into global means.

    The engine's meters hold per-rank means over n samples; sums (mean x n) are exact to float64
    rounding, so the global numbers equal those of one process seeing all ranks' samples.
    """
    keys = ("loss", "acc", "top5")
    n = stats[f"{prefix}_n"]
    sums = all_reduce_sums([stats[f"{prefix}_{k}"] * n for k in keys] + [float(n)], env, device)
    total = max(sums[-1], 1.0)
    out = dict(stats)
    out.update({f"{prefix}_{k}": s / total for k, s in zip(keys, sums)})
    out[f"{prefix}_n"] = int(round(sums[-1]))
    return out


def on_main(fn: Callable[[], T], env: DistEnv) -> T:
    """Run ``fn`` on rank 0 and give every rank its result (or rank 0's error, re-raised).

    Used for reading files that may exist on rank 0's node only (genotype, config, checkpoint), so
    a multi-node job does not need a shared file system to start or resume.
    """
    if not env.distributed:
        return fn()
    box: list = [None]
    if env.is_main:
        try:
            box[0] = ("ok", fn())
        except RankscopeError as exc:
            box[0] = ("error", type(exc), str(exc))
        except (ValueError, OSError) as exc:
            box[0] = ("error", ValueError, str(exc))
    dist.broadcast_object_list(box, src=0)
    if box[0][0] == "error":
        raise box[0][1](box[0][2])
    return box[0][1]
