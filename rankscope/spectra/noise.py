"""Noise sensitivity ψ_N(c, x) of MSR-DARTS eq. (3) (Arora, Ge, Neyshabur & Zhang, ICML 2018).

ψ(c, x) = E_η[‖c(x + η‖x‖) − c(x)‖² / ‖c(x)‖²],  η ~ N(0, scale²·I).

For a linear map A: c(x + η‖x‖) − c(x) = ‖x‖·Aη and E‖Aη‖² = scale²·‖A‖_F², hence the closed form
    ψ(A, x) = scale²·‖A‖_F²·‖x‖² / ‖Ax‖².
Because ‖Ax‖ ≤ ‖A‖₂‖x‖, ψ(A, x) ≥ scale²·R(A) for every x ≠ 0, with equality iff x is a top right
singular vector. So with standard normal noise (scale = 1) ψ ≥ R(A), the paper's remark; with
unit-norm-on-average noise η ~ N(0, I/d) (scale = 1/√d, d = dim x) the bound is ψ ≥ R(A)/d.
The inequality is about the expectation; a single noise draw may fall below it.
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor


def _per_sample_sq(t: Tensor) -> Tensor:
    return t.flatten(1).square().sum(dim=1)


def _checked_output(op: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    if not isinstance(x, Tensor) or x.dim() < 2:
        raise ValueError("x must be a batch tensor of shape (B, ...)")
    if not bool(torch.isfinite(x).all()):
        raise ValueError("x contains NaN or Inf")
    y = op(x)
    if bool((_per_sample_sq(y) == 0).any()):
        raise ValueError("c(x) is zero for some sample: noise sensitivity is undefined there")
    return y


def noise_sensitivity(op: Callable[[Tensor], Tensor], x: Tensor, n_samples: int = 64,
                      scale: float = 1.0, generator: Optional[torch.Generator] = None) -> Tensor:
    """Monte-Carlo estimate of ψ(c, x) (module docstring) for each sample of the batch x, shape (B,).

    ``op`` maps a batch (B, ...) to a batch; η ~ N(0, scale²·I) is drawn independently per sample
    and per draw, and ‖x‖ is each sample's own norm. Runs without gradients. Standard error of the
    mean shrinks as 1/√n_samples. Reference: MSR-DARTS eq. (3); Arora et al. ICML 2018, Def. 4.
    """
    if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be a positive int, got {n_samples!r}")
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    with torch.no_grad():
        y = _checked_output(op, x)
        x_norm = x.flatten(1).norm(dim=1).view(-1, *([1] * (x.dim() - 1)))  # (B, 1, ..., 1)
        total = torch.zeros(x.shape[0], dtype=y.dtype, device=y.device)
        for _ in range(n_samples):
            eta = torch.randn(x.shape, generator=generator, dtype=x.dtype).to(x.device) * scale
            total += _per_sample_sq(op(x + eta * x_norm) - y)
        return total / n_samples / _per_sample_sq(y)


def linear_noise_sensitivity(op: Callable[[Tensor], Tensor], x: Tensor, frobenius_norm: Tensor | float,
                             scale: float = 1.0) -> Tensor:
    """Closed-form ψ(A, x) = scale²·‖A‖_F²·‖x‖²/‖Ax‖² for a *linear* op A, per sample, shape (B,).

    ``frobenius_norm`` is ‖A‖_F (for a conv: ``conv_frobenius_norm`` with the op's own padding).
    Lower bound: ψ ≥ scale²·stable_rank(A) for every x (module docstring). Reference: Arora et al.
    ICML 2018; MSR-DARTS Section 3.1.
    """
    if not scale > 0:
        raise ValueError(f"scale must be positive, got {scale!r}")
    with torch.no_grad():
        y = _checked_output(op, x)
        fro_sq = torch.as_tensor(frobenius_norm, dtype=y.dtype).square()
        return scale**2 * fro_sq * _per_sample_sq(x).to(y.dtype) / _per_sample_sq(y)
