"""Batched spectral normalisation: one power iteration per group of same-shaped convs.

The reference (``rankscope.specnorm.ConvSpectralNorm``) runs Z power iterations per conv, ~1,300
convs per paper-size step, so its cost is kernel-launch overhead, not arithmetic.  Here the convs
of a network are grouped by everything that fixes their operator's shape (weight shape, stride,
padding, dilation, groups, input size) and each group iterates in ONE call:

- matrix path (1x1, stride 1, ungrouped): the operator is W (x) I, ``v`` is (C_in,); the group's
  weights stack to (N, C_out, C_in) and an iteration is two ``bmm``;
- operator path (depthwise k x k, strided 1x1): the N convs become one conv with ``groups * N``
  groups on a (1, N * C_in, H, W) vector (for a depthwise conv the operator is block-diagonal per
  channel, so this is simply a wider depthwise conv), adjoint by ``conv_transpose2d``.

The iterates, buffers (``v``, ``sigma`` of each conv's ``ConvSpectralNorm``) and the gradient path
(sigma = ||A v|| recomputed with grad through W) are the reference's, so both implementations give
the same normalised weights for the same state.  ``method="exact"`` batches the spectra module's
circular FFT norm per group (1x1 convs: the batched matrix 2-norm, identical and cheaper).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable

import torch
import torch.nn.functional as F
from torch import nn

from rankscope.depthwise import depthwise_adjoint, depthwise_geom, is_same
from rankscope.specnorm import ConvSpectralNorm, circular_size, spectral_norm_modules

_EPS = 1e-12  # the reference's clamp of sigma and of vector norms


@dataclass
class SpecNormGroup:
    """Convs whose operators have the same shape; ``members`` keeps (conv, parametrization)."""

    members: list[tuple[nn.Conv2d, ConvSpectralNorm]]

    @property
    def head(self) -> ConvSpectralNorm:
        return self.members[0][1]


def group_key(conv: nn.Conv2d, sn: ConvSpectralNorm) -> tuple:
    """Everything that fixes the operator's shape and the iteration's geometry."""
    w = sn_original(conv)
    return (tuple(w.shape), sn.matrix, sn.stride, sn.padding, sn.dilation, sn.groups,
            sn.input_size, sn.output_padding, id(sn.config))


def sn_original(conv: nn.Conv2d) -> torch.Tensor:
    """The raw (un-normalised) weight of a parametrized conv."""
    return conv.parametrizations.weight.original


def build_groups(net: nn.Module) -> list[SpecNormGroup]:
    """Group every spectrally normalised conv of ``net`` (order: first appearance)."""
    groups: dict[tuple, SpecNormGroup] = {}
    for _, conv, sn in spectral_norm_modules(net):
        groups.setdefault(group_key(conv, sn), SpecNormGroup([])).members.append((conv, sn))
    return list(groups.values())


# -- batched operator and adjoint ------------------------------------------------------------------
def _fast_depthwise(g: ConvSpectralNorm, w: torch.Tensor) -> bool:
    """Depthwise with 'same' padding: the batched operator is one wider depthwise conv whose
    adjoint is a flipped forward conv (``rankscope.depthwise``)."""
    return w.shape[2] == 1 and g.groups == w.shape[1] and is_same(w[0], g.padding, g.dilation)


def _op(g: ConvSpectralNorm, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A v for every member. Matrix: v (N, C_in) -> (N, C_out); operator: (1, N*C_in, H, W) -> ..."""
    if g.matrix:
        return torch.bmm(w.flatten(2), v.unsqueeze(-1)).squeeze(-1)
    if _fast_depthwise(g, w):
        return depthwise_geom(v, w.flatten(0, 1), g.stride, g.padding, g.dilation)
    n = w.shape[0]
    return F.conv2d(v, w.flatten(0, 1), None, g.stride, g.padding, g.dilation, g.groups * n)


def _op_t(g: ConvSpectralNorm, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """A^T u for every member (conv_transpose2d weight layout equals conv2d's: (in, out/g, k, k))."""
    if g.matrix:
        return torch.bmm(w.flatten(2).transpose(1, 2), u.unsqueeze(-1)).squeeze(-1)
    if _fast_depthwise(g, w):
        return depthwise_adjoint(u, w.flatten(0, 1), g.stride, g.padding, g.dilation, g.input_size)
    n = w.shape[0]
    return F.conv_transpose2d(u, w.flatten(0, 1), None, g.stride, g.padding, g.output_padding,
                              g.groups * n, g.dilation)


def _norms(t: torch.Tensor, n: int) -> torch.Tensor:
    """Per-member Euclidean norms, shape (N,)."""
    return t.reshape(n, -1).norm(dim=1)


def _unit(t: torch.Tensor, n: int) -> torch.Tensor:
    """Each member's block of ``t`` scaled to unit norm (the reference's ``_unit`` per conv)."""
    flat = t.reshape(n, -1)
    return (flat / flat.norm(dim=1, keepdim=True).clamp_min(_EPS)).reshape(t.shape)


def _stack_v(g: SpecNormGroup) -> torch.Tensor:
    """The members' vectors as the group's iterate: (N, C_in) or (1, N*C_in, H, W)."""
    vs = [sn.v for _, sn in g.members]  # each (C_in,) or (1, C_in, H, W)
    if g.head.matrix:
        return torch.stack(vs)
    # Channels-last: oneDNN's depthwise kernels are several times faster in NHWC.
    return torch.cat(vs, dim=1).contiguous(memory_format=torch.channels_last)


def power_sigma(g: SpecNormGroup, w: torch.Tensor, n_iter: int, warm: bool) -> torch.Tensor:
    """Z batched iterations (no grad, written back to each member's ``v``), then sigma (N,) with grad."""
    n = w.shape[0]
    with torch.no_grad():
        v = _stack_v(g)
        if not warm:
            v = _unit(torch.randn_like(v), n)
        for _ in range(n_iter):
            v = _unit(_op_t(g.head, _op(g.head, v, w), w), n)
        parts = v.reshape(n, *g.head.v.shape).unbind(0)
        _copy_all([sn.v for _, sn in g.members], parts)
    return _norms(_op(g.head, v, w), n)


def exact_sigma(g: SpecNormGroup, w: torch.Tensor) -> torch.Tensor:
    """Exact circular-padding norms (N,), differentiable: the spectra module's FFT norm, batched."""
    sn = g.head
    if sn.matrix:  # W (x) I: the norm of the C_out x C_in matrix, no FFT needed
        return torch.linalg.matrix_norm(w.flatten(2), ord=2)
    from rankscope.spectra import conv_spectral_norm  # lazy: only method="exact" needs it
    size = circular_size(w.shape[-2:], sn.input_size, sn.stride, sn.dilation)
    return conv_spectral_norm(w, size, stride=sn.stride, dilation=sn.dilation, groups=sn.groups)


def _copy_all(dst: list[torch.Tensor], src: Iterable[torch.Tensor]) -> None:
    """In-place copies of many small buffers in one call where torch has it."""
    src = list(src)
    if hasattr(torch, "_foreach_copy_"):
        torch._foreach_copy_(dst, src)
    else:  # pragma: no cover - older torch
        for d, s in zip(dst, src):
            d.copy_(s)


def group_weights(g: SpecNormGroup, training: bool) -> torch.Tensor:
    """Normalised weights of the group, stacked (N, *w.shape); updates ``v``/``sigma`` if training."""
    cfg = g.head.config
    w = torch.stack([sn_original(conv) for conv, _ in g.members])
    if not training:  # the reference's eval path: last estimate, no iteration
        sigma = torch.stack([sn.sigma for _, sn in g.members])
    else:
        sigma = exact_sigma(g, w) if cfg.method == "exact" else \
            power_sigma(g, w, cfg.n_iter, cfg.warm_start)
        with torch.no_grad():
            _copy_all([sn.sigma for _, sn in g.members], sigma.detach().unbind(0))
    scale = cfg.C / sigma.clamp_min(_EPS)
    return w * scale.view(-1, *([1] * (w.dim() - 1)))


def normalised_weights(groups: list[SpecNormGroup], training: bool) -> dict[int, torch.Tensor]:
    """``id(conv) -> normalised weight`` for every conv of ``groups`` (batched per group)."""
    out: dict[int, torch.Tensor] = {}
    for g in groups:
        for (conv, _), w in zip(g.members, group_weights(g, training).unbind(0)):
            out[id(conv)] = w
    return out
