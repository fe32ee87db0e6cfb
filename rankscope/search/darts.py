"""The DARTS baseline (Liu et al. 2019) as a search method of the shared loop.

Architecture parameters alpha, one (edges x ops) tensor per cell type, mix every edge with
softmax(alpha) (paper eq. 1).  Before each weight step the ``Architect`` takes one Adam step on alpha
using a validation batch drawn from a persistent iterator; the gradient is either first order,
``grad_alpha L_val(w, alpha)``, or second order (DARTS eqs. 7-8, the unrolled step)::

    w'  = w - xi * (mu * m + grad_w L_train(w, alpha) + lambda * w)      # one SGD step, as SGD takes it
    v   = grad_w' L_val(w', alpha)
    eps = 0.01 / ||v||,  w+- = w +- eps * v
    g   = grad_alpha L_val(w', alpha) - xi * (grad_alpha L_train(w+, alpha) - grad_alpha L_train(w-, alpha)) / (2 eps)

(pt.darts divides by ``2.*eps``, i.e. multiplies by eps/2; here the denominator is ``2 * eps``.)
The central difference is exact to O(eps^2) for smooth losses; with ReLU supernets a step of norm
0.01 can cross activation kinks, where grad_alpha L jumps, so the estimate can differ from the
(almost-everywhere) exact Hessian-vector product -- that is DARTS's approximation, kept as published.

Invariants: alpha is never a parameter of the supernet (the weight SGD cannot see it); the module the
loop trains mixes with *detached* softmax(alpha), so alpha's gradients come only from the
architecture step; the architecture step leaves every weight and buffer of the supernet (BN running
statistics, spectral-norm iteration vectors) bit-for-bit as it found them.
"""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import pandas as pd
import torch
from torch import nn

from rankscope.data.loader import TensorLoader, cycle_batches, derive_seed
from rankscope.engine import cross_entropy_loss
from rankscope.errors import ConfigError
from rankscope.search.config import SearchConfig
from rankscope.search.methods import rank_genotypes
from rankscope.selection import genotype_from_alpha, stable_rank_table
from rankscope.supernet import SearchNetwork

Batch = tuple[torch.Tensor, torch.Tensor]        # x (B, C, H, W), y (B,)
Forward = Callable[[torch.Tensor], torch.Tensor]  # x -> logits, differentiable in weights and alpha
LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]

# Extra keys of derive_seed, so alpha's init and the validation order are independent of the streams
# the loaders use (0, 1) for the same seed.
ALPHA_STREAM, VAL_ORDER_STREAM = 101, 102
ALPHA_INIT_SCALE = 1e-3  # alpha = 1e-3 * N(0, 1), as DARTS
FD_SCALE = 0.01          # eps = 0.01 / ||v|| in the finite-difference Hessian-vector product


@dataclass(frozen=True)
class ArchSettings:
    """Hyper-parameters of the architecture step, and the weight SGD's (for the unrolled step)."""

    lr: float = 3e-4
    betas: tuple[float, float] = (0.5, 0.999)
    weight_decay: float = 1e-3
    order: str = "first"           # first | second
    w_momentum: float = 0.9        # the weight optimizer's momentum mu
    w_weight_decay: float = 3e-4   # the weight optimizer's L2 decay lambda
    fd_scale: float = FD_SCALE     # eps = fd_scale / ||v|| (DARTS: 0.01)


def arch_settings(cfg: SearchConfig) -> ArchSettings:
    return ArchSettings(lr=cfg.arch_lr, betas=(cfg.arch_beta1, cfg.arch_beta2),
                        weight_decay=cfg.arch_weight_decay, order=cfg.order,
                        w_momentum=cfg.momentum, w_weight_decay=cfg.weight_decay)


def init_alphas(shape: tuple[int, int], seed: int, device: torch.device | str = "cpu") -> list[torch.Tensor]:
    """[alpha_normal, alpha_reduce], each ``shape`` = (edges, ops), 1e-3 * N(0, 1) from ``seed``.

    Drawn on the CPU from a private generator (same values on every device), leaf tensors with
    requires_grad."""
    gen = torch.Generator().manual_seed(derive_seed(seed, ALPHA_STREAM))
    return [(ALPHA_INIT_SCALE * torch.randn(shape, generator=gen, dtype=torch.float32))
            .to(device).requires_grad_() for _ in ("normal", "reduce")]


def mixed_forward(net: nn.Module, alphas: Sequence[torch.Tensor], x: torch.Tensor, *,
                  detach: bool = False) -> torch.Tensor:
    """The supernet on ``x`` mixing with softmax(alpha) per edge (eq. 1); ``detach`` cuts alpha out."""
    weights = [torch.softmax(a, dim=-1) for a in alphas]  # (E, K) each, rows sum to 1
    if detach:
        weights = [w.detach() for w in weights]
    return net(x, weights_normal=weights[0], weights_reduce=weights[1])


class AlphaModel(nn.Module):
    """The module the shared loop trains and evaluates: supernet + detached softmax(alpha) mixing.

    alpha is held as a plain attribute, not a registered parameter, so ``parameters()`` equals the
    supernet's; the detach keeps the weight step's backward from ever reaching alpha."""

    def __init__(self, net: nn.Module, alphas: Sequence[torch.Tensor]):
        super().__init__()
        self.net = net
        self._alphas = list(alphas)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mixed_forward(self.net, self._alphas, x, detach=True)


# --- pure pieces of the architecture gradient -------------------------------------------------

@contextmanager
def preserved_buffers(module: nn.Module) -> Iterator[None]:
    """Restore every buffer of ``module`` (BN statistics, spectral-norm vectors) on exit."""
    saved = [(b, b.detach().clone()) for b in module.buffers()]
    try:
        yield
    finally:
        with torch.no_grad():
            for buf, value in saved:
                buf.copy_(value)


def assign(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    """Copy ``values`` into ``params`` in place (bit-exact; autograd does not see it)."""
    with torch.no_grad():
        for p, v in zip(params, values):
            p.copy_(v)


def grads_or_zeros(loss: torch.Tensor, tensors: Sequence[torch.Tensor]) -> list[torch.Tensor]:
    """d loss / d tensors, zeros for tensors the loss does not depend on."""
    grads = torch.autograd.grad(loss, list(tensors), allow_unused=True)
    return [torch.zeros_like(t) if g is None else g for t, g in zip(tensors, grads)]


def momentum_buffers(optimizer: torch.optim.Optimizer | None,
                     params: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
    """The SGD momentum buffer m of each param (None before the first step or without optimizer)."""
    if optimizer is None:
        return [None] * len(params)
    return [optimizer.state.get(p, {}).get("momentum_buffer") for p in params]


def unrolled_weights(w: Sequence[torch.Tensor], grad: Sequence[torch.Tensor],
                     momentum: Sequence[torch.Tensor | None], xi: float, mu: float,
                     weight_decay: float) -> list[torch.Tensor]:
    """w' = w - xi (mu m + grad + lambda w): the step torch's SGD (dampening 0) would take, unclipped."""
    out = []
    for wi, gi, mi in zip(w, grad, momentum):
        step = gi + weight_decay * wi
        if mi is not None:
            step = step + mu * mi
        out.append(wi - xi * step)
    return out


def finite_difference_hvp(train_loss: Callable[[], torch.Tensor], weights: Sequence[torch.Tensor],
                          alphas: Sequence[torch.Tensor], center: Sequence[torch.Tensor],
                          direction: Sequence[torch.Tensor], scale: float = FD_SCALE) -> list[torch.Tensor]:
    """(grad_alpha L(w+) - grad_alpha L(w-)) / (2 eps), w+- = center +- eps d, eps = scale / ||d||.

    A central difference for the mixed second derivative (d^2 L / d alpha d w) . d.  ``train_loss()``
    evaluates the loss at the current in-place values of ``weights``; on return ``weights`` hold
    ``center`` exactly."""
    norm = torch.sqrt(sum((d.double() ** 2).sum() for d in direction)).to(direction[0].dtype)
    eps = scale / norm.clamp_min(1e-30)  # 0-dim tensor: no device sync
    assign(weights, [c + eps * d for c, d in zip(center, direction)])
    plus = grads_or_zeros(train_loss(), alphas)
    assign(weights, [c - eps * d for c, d in zip(center, direction)])
    minus = grads_or_zeros(train_loss(), alphas)
    assign(weights, center)
    return [(p - m) / (2 * eps) for p, m in zip(plus, minus)]


# --- the architect ------------------------------------------------------------------------------

class Architect:
    """One Adam step on alpha per weight step, first or second order.

    ``forward(x)`` must compute logits from the current in-place ``weights`` and the attached
    ``alphas``; ``state_module`` owns the buffers restored after each step (None: nothing to restore).
    """

    def __init__(self, forward: Forward, weights: Sequence[torch.Tensor], alphas: Sequence[torch.Tensor],
                 settings: ArchSettings, *, loss_fn: LossFn | None = None,
                 state_module: nn.Module | None = None):
        if settings.order not in ("first", "second"):
            raise ConfigError(f"order must be first or second, got {settings.order!r}")
        self.forward, self.settings = forward, settings
        self.weights, self.alphas = list(weights), list(alphas)
        self.loss_fn = loss_fn or cross_entropy_loss()
        self.state_module = state_module
        self.optimizer = torch.optim.Adam(self.alphas, lr=settings.lr, betas=settings.betas,
                                          weight_decay=settings.weight_decay)

    def loss(self, batch: Batch) -> torch.Tensor:
        x, y = batch
        return self.loss_fn(self.forward(x), y)

    def first_order_grads(self, val_batch: Batch) -> list[torch.Tensor]:
        """grad_alpha L_val(w, alpha)."""
        return grads_or_zeros(self.loss(val_batch), self.alphas)

    def second_order_grads(self, train_batch: Batch, val_batch: Batch, xi: float,
                           momentum: Sequence[torch.Tensor | None]) -> list[torch.Tensor]:
        """The unrolled gradient (DARTS eqs. 7-8); weights are restored exactly afterwards."""
        s = self.settings
        w0 = [p.detach().clone() for p in self.weights]
        g_train = grads_or_zeros(self.loss(train_batch), self.weights)
        w_prime = unrolled_weights(w0, g_train, momentum, xi, s.w_momentum, s.w_weight_decay)
        try:
            assign(self.weights, w_prime)
            grads = grads_or_zeros(self.loss(val_batch), self.alphas + self.weights)
            d_alpha, v = grads[:len(self.alphas)], grads[len(self.alphas):]
            hvp = finite_difference_hvp(lambda: self.loss(train_batch), self.weights, self.alphas,
                                        w0, v, s.fd_scale)
        finally:
            assign(self.weights, w0)
        return [da - xi * h for da, h in zip(d_alpha, hvp)]

    def grads(self, train_batch: Batch, val_batch: Batch, xi: float,
              weight_optimizer: torch.optim.Optimizer | None = None) -> list[torch.Tensor]:
        """The architecture gradient of the configured order, buffers left untouched."""
        with self._preserved():
            if self.settings.order == "first":
                return self.first_order_grads(val_batch)
            return self.second_order_grads(train_batch, val_batch, xi,
                                           momentum_buffers(weight_optimizer, self.weights))

    def step(self, train_batch: Batch, val_batch: Batch, xi: float,
             weight_optimizer: torch.optim.Optimizer | None = None) -> None:
        """Set alpha.grad to the architecture gradient (replacing, not accumulating) and step Adam."""
        grads = self.grads(train_batch, val_batch, xi, weight_optimizer)
        for a, g in zip(self.alphas, grads):
            a.grad = g.detach()
        self.optimizer.step()

    @contextmanager
    def _preserved(self) -> Iterator[None]:
        if self.state_module is None:
            yield
        else:
            with preserved_buffers(self.state_module):
                yield


# --- the search method ---------------------------------------------------------------------------

def shuffled_val_loader(val: TensorLoader, train: TensorLoader) -> TensorLoader:
    """The validation half as DARTS draws it for alpha: reshuffled every pass, with the training
    augmentation (DARTS takes both halves from one dataset object).  Shares ``val``'s device tensors."""
    return TensorLoader(val.images, val.labels, batch_size=val.batch_size, shuffle=True,
                        augment=train.augment, mean=val.mean, std=val.std,
                        seed=derive_seed(val.seed, VAL_ORDER_STREAM), device=val.device)


def alpha_record(alphas: Sequence[torch.Tensor]) -> dict:
    """softmax(alpha) per cell type as nested lists (E x K), for genotypes.jsonl."""
    return {name: torch.softmax(a.detach().double(), dim=-1).cpu().tolist()
            for name, a in zip(("normal", "reduce"), alphas)}


class DartsMethod:
    """DARTS: alpha mixing, alternating alpha / weight steps, genotype from alpha (eq. 6).

    Per epoch it also records the stable-rank genotypes of the same supernet (min and max rule) and
    softmax(alpha), so a study can follow how the two derivation rules disagree over training."""

    def __init__(self, cfg: SearchConfig, net: SearchNetwork, device: torch.device, *,
                 train: TensorLoader, val: TensorLoader):
        if net.config.mixing != "alpha":
            raise ConfigError(f"DARTS needs a supernet with mixing='alpha', got {net.config.mixing!r}")
        self.cfg, self.net = cfg, net
        shape = (net.config.num_edges, len(net.config.primitives))
        self.alphas = init_alphas(shape, cfg.seed, device)
        self.model = AlphaModel(net, self.alphas)
        self.val_loader = shuffled_val_loader(val, train)
        self.val_batches = cycle_batches(self.val_loader)
        self.architect = Architect(lambda x: mixed_forward(net, self.alphas, x), list(net.parameters()),
                                   self.alphas, arch_settings(cfg), state_module=net)
        self.lr = cfg.lr                   # xi: the weight lr of the current epoch
        self.weight_optimizer: torch.optim.Optimizer | None = None

    def bind_optimizer(self, optimizer: torch.optim.Optimizer) -> None:
        """The weight SGD, whose momentum buffers the unrolled step reads."""
        self.weight_optimizer = optimizer

    def on_epoch_start(self, epoch: int, lr: float) -> None:
        self.lr = lr

    def before_step(self, index: int, batch: Batch) -> None:
        self.architect.step(batch, next(self.val_batches), self.lr, self.weight_optimizer)

    def stable_rank_table(self) -> pd.DataFrame:
        return stable_rank_table(self.net, measure=self.cfg.measure, reduction_bug=self.cfg.reduction_bug)

    def genotypes(self, table: pd.DataFrame) -> dict:
        prims = self.net.config.primitives
        ranks = rank_genotypes(self.net, table, "min")
        return {"genotype": genotype_from_alpha(self.alphas[0], self.alphas[1], prims).to_dict(),
                "genotype_rank_min": ranks["genotype_min"], "genotype_rank_max": ranks["genotype_max"],
                "alpha": alpha_record(self.alphas)}

    def state_dict(self) -> dict:
        """alpha, the Adam state and the validation iterator's next (epoch, batch)."""
        return {"alpha_normal": self.alphas[0].detach().clone(),
                "alpha_reduce": self.alphas[1].detach().clone(),
                "arch_optimizer": self.architect.optimizer.state_dict(),
                "val_position": list(self.val_batches.position)}

    def load_state_dict(self, state: dict) -> None:
        missing = [k for k in ("alpha_normal", "alpha_reduce", "arch_optimizer", "val_position")
                   if k not in state]
        if missing:
            raise ValueError(f"checkpoint has no DARTS state ({', '.join(missing)} missing)")
        assign(self.alphas, [state["alpha_normal"], state["alpha_reduce"]])
        self.architect.optimizer.load_state_dict(state["arch_optimizer"])
        epoch, batch = (int(v) for v in state["val_position"])
        self.val_batches = cycle_batches(self.val_loader, epoch, batch)
