"""Minimal private conv-spectrum helpers, used only where ``rankscope.spectra`` lacks a function.

The audit prefers the shared engine (issue 2); these exist so that audit works (and is tested)
independently of it.  Definitions:

* circular-padding singular values by the FFT method of Sedghi, Gupta & Long (2019), with strides by
  polyphase decomposition (one c_out x (s_h s_w c_in) matrix per frequency of the (n/s)-grid) and
  groups as a block-diagonal operator;
* operator Frobenius norms in closed form (circular and zero padding);
* power iteration on the layer as it computes (Behrmann et al. 2019): conv2d, then conv_transpose2d
  with the same padding/stride/dilation/groups and the output_padding restoring the input size.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

Pair = tuple[int, int]


def _pair(v: int | Pair) -> Pair:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


def polyphase_symbol(weight: torch.Tensor, input_size: int | Pair, *, stride: int | Pair = 1,
                     dilation: int | Pair = 1, groups: int = 1) -> torch.Tensor:
    """Per-frequency matrices of the circular operator, shape (F1, F2r, g, c_out/g, s_h s_w c_in/g).

    Only the rfft half of the second frequency axis is returned (the rest are complex conjugates).
    """
    n, s, d = _pair(input_size), _pair(stride), _pair(dilation)
    c_out, cig, kh, kw = weight.shape
    ext = (d[0] * (kh - 1) + 1, d[1] * (kw - 1) + 1)
    if ext[0] > n[0] or ext[1] > n[1] or n[0] % s[0] or n[1] % s[1]:
        raise ValueError(f"input {n} must be >= the dilated kernel {ext} and divisible by stride {s}")
    q = (math.ceil(ext[0] / s[0]), math.ceil(ext[1] / s[1]))
    w = weight.new_zeros(c_out, cig, q[0] * s[0], q[1] * s[1])
    w[:, :, : ext[0]: d[0], : ext[1]: d[1]] = weight
    w = w.reshape(c_out, cig, q[0], s[0], q[1], s[1]).permute(0, 1, 3, 5, 2, 4)
    w = w.reshape(groups, c_out // groups, cig * s[0] * s[1], q[0], q[1])
    grid = (n[0] // s[0], n[1] // s[1])
    sym = torch.fft.rfft2(w, s=grid)  # (g, co_g, ci_g s², F1, F2r)
    return sym.permute(3, 4, 0, 1, 2)


def _rfft_multiplicity(n2: int, f2r: int, device: torch.device) -> torch.Tensor:
    """How often each rfft column occurs in the full 2-D spectrum (1 or 2)."""
    mult = torch.full((f2r,), 2, device=device)
    mult[0] = 1
    if n2 % 2 == 0:
        mult[-1] = 1
    return mult


def conv_singular_values(weight: torch.Tensor, input_size: int | Pair, *, stride: int | Pair = 1,
                         dilation: int | Pair = 1, groups: int = 1) -> torch.Tensor:
    """All singular values of the circular-padded conv operator, sorted descending."""
    sym = polyphase_symbol(weight, input_size, stride=stride, dilation=dilation, groups=groups)
    sv = torch.linalg.svdvals(sym)  # (F1, F2r, g, r)
    grid2 = _pair(input_size)[1] // _pair(stride)[1]
    mult = _rfft_multiplicity(grid2, sym.shape[1], sv.device)
    sv = torch.cat([sv[:, mult == 1].reshape(-1), sv[:, mult == 2].reshape(-1).repeat(2)])
    return torch.sort(sv, descending=True).values


def conv_spectral_norm(weight: torch.Tensor, input_size: int | Pair, *, stride: int | Pair = 1,
                       dilation: int | Pair = 1, groups: int = 1) -> float:
    """Largest singular value of the circular-padded conv operator."""
    sym = polyphase_symbol(weight, input_size, stride=stride, dilation=dilation, groups=groups)
    return float(torch.linalg.matrix_norm(sym, ord=2).max())


def frobenius_circular(weight: torch.Tensor, input_size: int | Pair, *, stride: int | Pair = 1
                       ) -> float:
    """||op||_F of the circular operator: sqrt(#output positions) * ||W||_F."""
    n, s = _pair(input_size), _pair(stride)
    return math.sqrt((n[0] // s[0]) * (n[1] // s[1])) * float(weight.double().norm())


def frobenius_zero(weight: torch.Tensor, input_size: int | Pair, *, stride: int | Pair = 1,
                   padding: int | Pair = 0, dilation: int | Pair = 1) -> float:
    """||op||_F with zero padding: each tap weighted by how many outputs read a real input pixel."""
    n, s, p, d = _pair(input_size), _pair(stride), _pair(padding), _pair(dilation)
    kh, kw = weight.shape[-2:]
    counts = [_tap_counts(n[i], s[i], p[i], d[i], (kh, kw)[i]) for i in range(2)]
    per_tap = weight.double().pow(2).sum(dim=(0, 1))  # (kh, kw)
    reach = torch.outer(counts[0], counts[1]).to(per_tap)
    return math.sqrt(float((per_tap * reach).sum()))


def _tap_counts(n: int, s: int, p: int, d: int, k: int) -> torch.Tensor:
    out = (n + 2 * p - d * (k - 1) - 1) // s + 1
    pos = torch.arange(out).unsqueeze(1) * s + torch.arange(k).unsqueeze(0) * d - p  # (out, k)
    return ((pos >= 0) & (pos < n)).sum(0).double()


def power_iteration(conv: nn.Conv2d, input_shape: tuple[int, int, int], n_iter: int = 5,
                    v0: torch.Tensor | None = None) -> tuple[float, torch.Tensor]:
    """Power iteration on A^T A for the zero-padded layer; returns (||A v||, v) with ||v|| = 1."""
    w = conv.weight.detach()
    size = tuple(input_shape[1:])
    out = [(size[i] + 2 * conv.padding[i] - conv.dilation[i] * (conv.kernel_size[i] - 1) - 1)
           // conv.stride[i] + 1 for i in range(2)]
    opad = [size[i] - ((out[i] - 1) * conv.stride[i] - 2 * conv.padding[i]
                       + conv.dilation[i] * (conv.kernel_size[i] - 1) + 1) for i in range(2)]
    v = v0.reshape(1, *input_shape).to(w) if v0 is not None else torch.randn(1, *input_shape).to(w)
    v = v / v.norm().clamp_min(1e-30)

    def op(x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, w, None, conv.stride, conv.padding, conv.dilation, conv.groups)

    with torch.no_grad():
        for _ in range(n_iter):
            v = F.conv_transpose2d(op(v), w, None, conv.stride, conv.padding, opad, conv.groups,
                                   conv.dilation)
            v = v / v.norm().clamp_min(1e-30)
        return float(op(v).norm()), v[0]
