"""The one training loop shared by search and training: epochs, steps, evaluation, schedules, RNG.

Search (MSR-DARTS, DARTS) and final training differ only in what they pass in: the model, a loss
on the model's output, optional per-step hooks (the DARTS architecture step), and what they do
after each epoch. Everything here is device-agnostic: tensors follow the model's device.
"""
from __future__ import annotations

import math
import random
import time
from dataclasses import dataclass
from typing import Callable, Iterable

import torch
from torch import nn

Batch = tuple[torch.Tensor, torch.Tensor]  # x (B, C, H, W) float32, y (B,) int64
LossFn = Callable[[object, torch.Tensor], torch.Tensor]  # (model output, labels) -> scalar


@dataclass(frozen=True)
class OptimConfig:
    """SGD with a per-epoch cosine schedule and optional linear warm-up (DARTS conventions)."""

    epochs: int = 50
    lr: float = 0.025          # initial learning rate
    lr_min: float = 0.001      # cosine floor reached at the last epoch
    momentum: float = 0.9
    weight_decay: float = 3e-4
    grad_clip: float = 5.0     # max global grad norm; 0 disables clipping
    warmup_epochs: int = 0     # linear warm-up epochs before the cosine (ImageNet: 10)


def lr_at(cfg: OptimConfig, epoch: int) -> float:
    """Learning rate for 0-based ``epoch``: linear warm-up, then cosine from lr to lr_min.

    Epoch e of the cosine part uses lr_min + (lr - lr_min)(1 + cos(pi e / E)) / 2 with E the
    number of cosine epochs, as torch's CosineAnnealingLR stepped once per epoch.
    """
    if epoch < cfg.warmup_epochs:
        return cfg.lr * (epoch + 1) / cfg.warmup_epochs
    span = max(1, cfg.epochs - cfg.warmup_epochs)
    t = (epoch - cfg.warmup_epochs) / span
    return cfg.lr_min + 0.5 * (cfg.lr - cfg.lr_min) * (1.0 + math.cos(math.pi * t))


def make_sgd(params: Iterable[nn.Parameter], cfg: OptimConfig) -> torch.optim.SGD:
    return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def logits_of(output) -> torch.Tensor:
    """Models may return (logits, aux_logits); metrics use the main logits."""
    return output[0] if isinstance(output, tuple) else output


def cross_entropy_loss(label_smoothing: float = 0.0, aux_weight: float = 0.0) -> LossFn:
    """Cross-entropy on the main logits plus ``aux_weight`` times that of the auxiliary logits."""
    ce = nn.CrossEntropyLoss(label_smoothing=label_smoothing)

    def loss(output, y: torch.Tensor) -> torch.Tensor:
        if isinstance(output, tuple):
            logits, aux = output
            total = ce(logits, y)
            if aux is not None and aux_weight > 0:
                total = total + aux_weight * ce(aux, y)
            return total
        return ce(output, y)

    return loss


class Meter:
    """Running sums (float64) of loss and top-k hits over samples; deterministic."""

    def __init__(self) -> None:
        self.n = 0
        self.loss = 0.0
        self.top1 = 0
        self.top5 = 0

    def update(self, loss: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> None:
        b = y.shape[0]
        k = min(5, logits.shape[1])
        top = logits.topk(k, dim=1).indices  # (B, k)
        hits = top.eq(y[:, None])
        self.n += b
        self.loss += float(loss.detach()) * b
        self.top1 += int(hits[:, 0].sum())
        self.top5 += int(hits.any(dim=1).sum())

    def result(self, prefix: str) -> dict:
        n = max(self.n, 1)
        return {f"{prefix}_loss": self.loss / n, f"{prefix}_acc": self.top1 / n,
                f"{prefix}_top5": self.top5 / n, f"{prefix}_n": self.n}


StepHook = Callable[[int, Batch], None]


def train_epoch(model: nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer, *,
                loss_fn: LossFn, grad_clip: float = 0.0, before_step: StepHook | None = None,
                progress: Callable[[int, dict], None] | None = None,
                scaler: torch.amp.GradScaler | None = None, amp_dtype: torch.dtype | None = None,
                ) -> dict:
    """One pass over ``batches``: forward, loss, backward, clip, SGD step; returns mean metrics.

    ``before_step(i, batch)`` runs before each weight step (the DARTS architecture update).
    ``progress(i, running_metrics)`` is called every batch for progress output.
    """
    model.train()
    meter, start = Meter(), time.perf_counter()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    for i, (x, y) in enumerate(batches):
        if before_step is not None:
            before_step(i, (x, y))
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
            loss = loss_fn(out, y)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
        else:
            loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(params, grad_clip)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        meter.update(loss, logits_of(out).float(), y)
        if progress is not None:
            progress(i, meter.result("train"))
    stats = meter.result("train")
    stats["train_seconds"] = time.perf_counter() - start
    return stats


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[Batch], *, loss_fn: LossFn, prefix: str = "val",
             amp_dtype: torch.dtype | None = None) -> dict:
    """Mean loss and top-1/top-5 accuracy of ``model`` in eval mode over ``batches``."""
    model.eval()
    meter = Meter()
    for x, y in batches:
        with torch.autocast(x.device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
            out = model(x)
            loss = loss_fn(out, y)
        meter.update(loss, logits_of(out).float(), y)
    return meter.result(prefix)


def rng_state() -> dict:
    """Global RNG states (torch CPU, CUDA if present, Python) as tensors/primitives for a checkpoint."""
    state = {"torch": torch.get_rng_state(),
             "python": torch.tensor(list(random.getstate()[1]), dtype=torch.int64)}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"].cpu())
    if "python" in state:
        internal = tuple(int(v) for v in state["python"].tolist())
        random.setstate((3, internal, None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(list(state["cuda"]))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(name: str) -> torch.device:
    """``auto`` picks CUDA when available; asking for CUDA without it is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA GPU is available; use --device cpu")
    if name not in ("cpu",) and not name.startswith("cuda"):
        raise ValueError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    """A human-readable name of the device a run used (for summaries and search-cost records)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform
    return platform.processor() or platform.machine()


def progress_printer(label: str, total: int, echo: Callable[[str], None],
                     every_seconds: float = 10.0) -> Callable[[int, dict], None]:
    """A progress callback that prints at most every ``every_seconds`` (long epochs stay visible)."""
    last = [time.perf_counter()]

    def show(i: int, metrics: dict) -> None:
        now = time.perf_counter()
        if now - last[0] >= every_seconds and i + 1 < total:
            last[0] = now
            echo(f"  {label} batch {i + 1}/{total}  loss {metrics['train_loss']:.4f}  "
                 f"acc {metrics['train_acc']:.3f}")

    return show

