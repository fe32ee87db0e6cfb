"""Exact spectrum of the separable op pointwise ∘ depthwise with circular padding.

At each frequency ω the depthwise conv is diagonal over channels, d(ω) (with stride s: one
1×s² row per channel after the polyphase split), and the 1×1 pointwise conv is the constant
matrix P, so the composite acts as P·diag(d(ω)), a c_out × (s²·c_in) matrix (Sedghi et al. 2019,
applied to a composition of two convs that share the DFT basis).
"""
from __future__ import annotations

from torch import Tensor

from ._checks import IntOrPair, check_circular_size, check_weight, conv_spec
from .fourier import frequency_matrices, largest_from_matrices, spectrum_from_matrices


def _composite_matrices(depthwise: Tensor, pointwise: Tensor, input_size: IntOrPair,
                        stride: IntOrPair, dilation: IntOrPair) -> tuple[Tensor, Tensor]:
    """Per-frequency composite matrices (1, 1, F, c_out, c_in·sh·sw) and multiplicities (F,)."""
    check_weight(depthwise)
    check_weight(pointwise)
    c_mid = depthwise.shape[0]
    if depthwise.shape[1] != 1:
        raise ValueError(f"depthwise weight must have shape (c_mid, 1, kh, kw), got {tuple(depthwise.shape)}")
    if pointwise.shape[1] != c_mid or pointwise.shape[2:] != (1, 1):
        raise ValueError(f"pointwise weight must have shape (c_out, {c_mid}, 1, 1), got "
                         f"{tuple(pointwise.shape)}")
    if depthwise.dtype != pointwise.dtype:
        raise ValueError(f"depthwise and pointwise dtypes differ: {depthwise.dtype} vs {pointwise.dtype}")
    spec = conv_spec(depthwise, stride, dilation, c_mid)
    dmats, mult = frequency_matrices(spec, check_circular_size(spec, input_size))
    # dmats: (1, c_mid, F, 1, s²) — one row per mid channel (channel multiplier 1 per group).
    comp = pointwise[None, :, None, :, 0, 0].to(dmats.dtype) * dmats[0, :, :, 0, :].permute(1, 2, 0)[:, None]
    # comp: (F, c_out, s², c_mid): column (r, c) = P[:, c]·d_c(ω, r); any column order works.
    nfreq, c_out = comp.shape[:2]
    return comp.reshape(1, 1, nfreq, c_out, -1), mult


def separable_singular_values(depthwise: Tensor, pointwise: Tensor, input_size: IntOrPair, *,
                              stride: IntOrPair = 1, dilation: IntOrPair = 1) -> Tensor:
    """All singular values (descending) of x ↦ pointwise(depthwise(x)), circular padding.

    ``depthwise``: (c_mid, 1, kh, kw), groups = c_mid, with the given stride and dilation;
    ``pointwise``: (c_out, c_mid, 1, 1). The operator is c_out·(n/s)(m/s) × c_mid·n·m; at each
    frequency it is P·diag(d(ω)). Reference: Sedghi et al. ICLR 2019 (DFT block-diagonalisation).
    """
    mats, mult = _composite_matrices(depthwise, pointwise, input_size, stride, dilation)
    return spectrum_from_matrices(mats, mult)[0]


def separable_spectral_norm(depthwise: Tensor, pointwise: Tensor, input_size: IntOrPair, *,
                            stride: IntOrPair = 1, dilation: IntOrPair = 1) -> Tensor:
    """Largest singular value of pointwise ∘ depthwise (see ``separable_singular_values``)."""
    mats, _ = _composite_matrices(depthwise, pointwise, input_size, stride, dilation)
    return largest_from_matrices(mats)[0]
