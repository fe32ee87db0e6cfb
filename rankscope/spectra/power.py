"""Power iteration for the spectral norm of a conv layer as it really computes (zero padding etc.).

Paper (MSR-DARTS) Appendix A, Algorithm 1, after Behrmann, Grathwohl, Chen, Duvenaud & Jacobsen,
"Invertible Residual Networks", ICML 2019: alternate b ← c(a)/‖c(a)‖ and a ← cᵀ(b)/‖cᵀ(b)‖, Z times,
then σ̃ = ‖c(a)‖. Since ‖a‖ = 1, σ̃ ≤ ‖c‖₂ always: it is an under-estimate that converges to
‖c‖₂ at rate (σ₂/σ₁)^{2Z} (measured gaps at Z=5 and Z=50 in docs/spectra.md).
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import IntOrPair, check_weight, conv_spec, zero_output_size, zero_padding_amount

_TINY = 1e-30  # a zero vector stays zero instead of becoming NaN


def _unit(t: Tensor) -> Tensor:
    return t / t.norm().clamp_min(_TINY)


def _input_shape(input_shape: Sequence[int], c_in: int) -> tuple[int, int, int, int]:
    """(c_in, h, w) or (1, c_in, h, w) → (1, c_in, h, w), checked against the weight."""
    shape = tuple(int(v) for v in input_shape)
    if len(shape) == 4 and shape[0] == 1:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (c_in, h, w), got {tuple(input_shape)}")
    if shape[0] != c_in:
        raise ValueError(f"input_shape has {shape[0]} channels but the conv expects c_in={c_in}")
    return (1, *shape)  # type: ignore[return-value]


def _start(shape: tuple[int, ...], v0: Optional[Tensor], like: Tensor,
           generator: Optional[torch.Generator]) -> Tensor:
    """Unit start vector: v0 (warm start) when given and nonzero, else standard normal."""
    if v0 is not None:
        if v0.numel() != like.new_empty(shape).numel():
            raise ValueError(f"v0 has {v0.numel()} entries, expected shape {shape}")
        v = v0.detach().reshape(shape).to(like)
        if bool(v.any()):
            return _unit(v)
    return _unit(torch.randn(shape, generator=generator, dtype=like.dtype).to(like.device))


def _iterate(fwd: Callable[[Tensor], Tensor], adj: Callable[[Tensor], Tensor], a: Tensor,
             n_iter: int) -> Tensor:
    """Algorithm 1's loop, without gradients: returns the unit right-vector estimate a_Z."""
    if isinstance(n_iter, bool) or not isinstance(n_iter, int) or n_iter < 0:
        raise ValueError(f"n_iter must be a non-negative int, got {n_iter!r}")
    with torch.no_grad():
        for _ in range(n_iter):
            a = _unit(adj(_unit(fwd(a))))
    return a


def power_iteration_fn(weight: Tensor, input_shape: Sequence[int], *, stride: IntOrPair = 1,
                       padding: IntOrPair = 0, dilation: IntOrPair = 1, groups: int = 1,
                       n_iter: int = 5, v0: Optional[Tensor] = None,
                       generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Functional power iteration on x ↦ F.conv2d(x, weight, stride, padding, dilation, groups).

    The adjoint is F.conv_transpose2d with the same geometry and the output_padding that restores
    the input size (needed for strided convs). The vector iteration runs under no_grad; the final
    σ̃ = ‖conv(a_Z)‖ is computed with autograd, so gradients flow from σ̃ into ``weight`` (the
    training-time spectral normaliser of MSR-DARTS Section 3.3 divides the weight by it).
    Returns (σ̃ as a 0-dim tensor, a_Z of shape (1, c_in, h, w)); pass a_Z back as ``v0`` to warm
    start. Reference: MSR-DARTS Appendix A Algorithm 1; Behrmann et al., ICML 2019.
    """
    check_weight(weight)
    spec = conv_spec(weight.detach(), stride, dilation, groups)
    shape = _input_shape(input_shape, spec.c_in)
    pad = zero_padding_amount(spec, padding)
    out = zero_output_size(spec, shape[2:], pad)
    opad = tuple(n - ((o - 1) * s - 2 * p + e) for n, o, s, p, e in
                 zip(shape[2:], out, spec.stride, pad, spec.extent))
    geom = dict(stride=spec.stride, padding=pad, dilation=spec.dilation, groups=spec.groups)
    fwd = lambda x: F.conv2d(x, weight, **geom)  # noqa: E731
    adj = lambda y: F.conv_transpose2d(y, weight, output_padding=opad, **geom)  # noqa: E731
    a = _iterate(fwd, adj, _start(shape, v0, weight, generator), n_iter)
    return fwd(a).norm(), a


def power_iteration(conv: nn.Conv2d, input_shape: Sequence[int], n_iter: int = 5,
                    v0: Optional[Tensor] = None,
                    generator: Optional[torch.Generator] = None) -> tuple[Tensor, Tensor]:
    """Power-iteration estimate of ‖conv‖₂ for an ``nn.Conv2d`` with its own padding (bias ignored).

    Zero padding uses F.conv2d / F.conv_transpose2d (see ``power_iteration_fn``); other padding
    modes (e.g. circular) use the exact adjoint of the layer's own forward via torch.func.vjp.
    ``input_shape`` is (c_in, h, w). Returns (σ̃, a_Z) with σ̃ ≤ ‖conv‖₂; gradients flow from σ̃ to
    ``conv.weight``. Reference: MSR-DARTS Appendix A Algorithm 1; Behrmann et al., ICML 2019.
    """
    if not isinstance(conv, nn.Conv2d):
        raise ValueError(f"power_iteration needs an nn.Conv2d, got {type(conv).__name__}")
    if conv.padding_mode == "zeros" and not isinstance(conv.padding, str):
        return power_iteration_fn(conv.weight, input_shape, stride=conv.stride, padding=conv.padding,
                                  dilation=conv.dilation, groups=conv.groups, n_iter=n_iter, v0=v0,
                                  generator=generator)
    spec = conv_spec(conv, None, None, None)
    shape = _input_shape(input_shape, spec.c_in)
    weight = conv.weight
    fwd = lambda x: conv._conv_forward(x, weight, None)  # noqa: E731  (the layer's own padding)

    def adj(y: Tensor) -> Tensor:
        x0 = torch.zeros(shape, dtype=weight.dtype, device=weight.device)
        return torch.func.vjp(lambda x: conv._conv_forward(x, weight.detach(), None), x0)[1](y)[0]

    check_weight(weight)
    a = _iterate(fwd, adj, _start(shape, v0, weight, generator), n_iter)
    return fwd(a).norm(), a
