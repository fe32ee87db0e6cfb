"""Frobenius norms of conv operators in closed form, and the exact spectral norm with zero padding.

Circular padding: every output position sees every tap once, so ‖A‖_F² = (n/s_h)(m/s_w)·‖W‖_F².
Zero padding: tap (a, b) reaches only the output positions whose input index s·i + d·a − p lands
inside the image, so ‖A‖_F² = Σ_{a,b} N_h(a)·N_w(b)·Σ_{o,c} W[o,c,a,b]², N counting those positions
per axis. (The operator's matrix has one entry W[o,c,a,b] per (output position, tap) that lands
inside; see Sedghi et al. 2019 for the matrix view.)
"""
from __future__ import annotations

from typing import Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import ConvSpec, IntOrPair, Pair, PaddingSpec, as_pair, check_circular_size, conv_spec
from ._checks import module_padding, zero_output_size, zero_padding_amount

WeightLike = Union[Tensor, nn.Conv2d]


def resolve_padding(weight: WeightLike, padding: PaddingSpec) -> PaddingSpec:
    """Default padding: the module's own for an ``nn.Conv2d``, circular for a plain tensor."""
    if padding is None:
        return module_padding(weight) if isinstance(weight, nn.Conv2d) else "circular"
    return padding


def tap_counts(n: int, k: int, s: int, d: int, p: int) -> Tensor:
    """N(a) for a = 0..k-1: how many output positions tap a reaches on one axis, shape (k,)."""
    n_out = (n + 2 * p - d * (k - 1) - 1) // s + 1
    pos = s * torch.arange(n_out).unsqueeze(0) + d * torch.arange(k).unsqueeze(1) - p  # (k, n_out)
    return ((pos >= 0) & (pos < n)).sum(dim=1)


def frobenius_sq(spec: ConvSpec, size: Pair, padding: PaddingSpec) -> Tensor:
    """‖A‖_F² of the conv operator, shape (B,), for circular or zero padding (module docstring)."""
    w2 = spec.weight.square()  # (B, co, ci_g, kh, kw)
    if padding == "circular":
        check_circular_size(spec, size)
        cells = (size[0] // spec.stride[0]) * (size[1] // spec.stride[1])
        return cells * w2.sum(dim=(1, 2, 3, 4))
    pad = zero_padding_amount(spec, padding)
    zero_output_size(spec, size, pad)
    counts = [tap_counts(n, k, s, d, p).to(w2) for n, k, s, d, p in
              zip(size, spec.kernel, spec.stride, spec.dilation, pad)]
    per_tap = w2.sum(dim=(1, 2))  # (B, kh, kw)
    return (per_tap * counts[0][:, None] * counts[1][None, :]).sum(dim=(1, 2))


def conv_frobenius_norm(weight: WeightLike, input_size: IntOrPair, *, stride: IntOrPair | None = None,
                        dilation: IntOrPair | None = None, groups: int | None = None,
                        padding: PaddingSpec = None) -> Tensor:
    """Frobenius norm ‖A‖_F of the conv operator on an input of size ``input_size``, in closed form.

    ``padding``: ``"circular"`` → (n/s_h)(m/s_w)·‖W‖_F² (n²·‖W‖_F² at stride 1); ``"zeros"`` (pad
    d·(k-1)//2) or an explicit zero-padding amount → each tap weighted by the number of output
    positions it reaches. Default: circular for tensors, the module's own padding for ``nn.Conv2d``.
    Returns a 0-dim tensor (shape (B,) for a 5-D stack). Reference: Sedghi et al. 2019 (matrix view).
    """
    padding = resolve_padding(weight, padding)
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    value = frobenius_sq(spec, as_pair(input_size, "input_size"), padding).sqrt()
    return value if spec.batched else value[0]


def zero_padded_spectral_norm(weight: WeightLike, input_size: IntOrPair, *,
                              stride: IntOrPair | None = None, dilation: IntOrPair | None = None,
                              groups: int | None = None, padding: PaddingSpec = "zeros",
                              tol: float = 1e-10) -> Tensor:
    """Exact ‖A‖₂ of a zero-padded conv (as F.conv2d computes it), by Lanczos on AᵀA.

    ARPACK (scipy.sparse.linalg.eigsh) finds the top eigenvalue of AᵀA to relative tolerance ``tol``
    using only conv2d / conv_transpose2d products in float64; there is no closed form with zero
    padding. Returns a 0-dim tensor in the weight's dtype. Reference: Lehoucq, Sorensen & Yang,
    ARPACK Users' Guide (1998); the operator view as in Sedghi et al. 2019.
    """
    from scipy.sparse.linalg import LinearOperator, eigsh  # scipy only where this is used

    spec = conv_spec(weight, stride, dilation, groups)
    size = as_pair(input_size, "input_size")
    pad = zero_padding_amount(spec, padding)
    out_size = zero_output_size(spec, size, pad)
    w = spec.weight[0].detach().to(torch.float64)
    geom = dict(stride=spec.stride, padding=pad, dilation=spec.dilation, groups=spec.groups)
    opad = tuple(n - ((o - 1) * s - 2 * p + e) for n, o, s, p, e in
                 zip(size, out_size, spec.stride, pad, spec.extent))
    shape = (1, spec.c_in, *size)

    def gram(v: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(v, dtype=np.float64)).view(shape)
        y = F.conv_transpose2d(F.conv2d(x, w, **geom), w, output_padding=opad, **geom)
        return y.reshape(-1).numpy()

    dim = spec.c_in * size[0] * size[1]
    if not bool(spec.weight.any()):
        return spec.weight.new_zeros(())
    if dim <= 2:  # ARPACK needs dim > k + 1
        dense = np.stack([gram(e) for e in np.eye(dim)])
        top = float(np.linalg.eigvalsh(dense)[-1])
    else:
        op = LinearOperator((dim, dim), matvec=gram, dtype=np.float64)
        v0 = np.random.default_rng(0).standard_normal(dim)
        top = float(eigsh(op, k=1, which="LA", tol=tol, v0=v0, return_eigenvectors=False)[0])
    return torch.tensor(max(top, 0.0) ** 0.5, dtype=spec.weight.dtype)
