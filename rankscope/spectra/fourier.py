"""Exact spectra of circularly padded convolutions by the 2-D DFT (Sedghi, Gupta & Long, 2019).

A conv on an n×m torus is block-diagonalised by the 2-D DFT: at each frequency ω it acts as a
c_out×c_in matrix Â(ω) = Σ_taps W[:, :, a, b]·exp(-2πi ω·(d·tap)), and the operator's singular values
are the union over ω of those of Â(ω). With stride s (s dividing n, m) the input splits into s²
polyphase components of size (n/s)×(m/s); the operator is then a stride-1 conv with s²·c_in input
channels and each frequency of the (n/s)×(m/s) grid carries a c_out×(s²·c_in) matrix (Senderovich,
Bulatova, Eremeev & Rashkovsky, 2022). Groups make every Â(ω) block-diagonal: one block per group.

The kernel is real, so Â(-ω) = conj(Â(ω)) has the same singular values; only the rfft half of the
spectrum is decomposed and each frequency whose mirror is not itself in that half counts twice.
"""
from __future__ import annotations

from typing import Union

import torch
from torch import Tensor, nn

from . import _fast
from ._checks import ConvSpec, IntOrPair, Pair, check_circular_size, conv_spec
from ._taps import build_matrices, layout, rfft_multiplicity

WeightLike = Union[Tensor, nn.Conv2d]


def frequency_matrices(spec: ConvSpec, size: Pair) -> tuple[Tensor, Tensor]:
    """Per-frequency matrices of the circular operator over the rfft half-spectrum.

    Returns ``mats`` of shape (B, groups, F, c_out/groups, (c_in/groups)·sh·sw), complex, and
    ``mult`` of shape (F,), the number of times each frequency occurs in the full spectrum
    (F = (n/sh)·(m/sw//2 + 1); Σ mult = (n/sh)·(m/sw)). Built from the taps by one
    (F × taps) @ (taps × entries) product (``_taps.build_matrices``); equal to the rfft2 of the
    zero-padded polyphase kernel, without padding it to n×m. Differentiable in the weight.
    """
    lay = layout(spec, size)
    mats = build_matrices(spec, lay)
    mats = mats.view(spec.weight.shape[0], spec.groups, *mats.shape[1:])
    return mats, rfft_multiplicity(lay.nq, lay.mq).to(spec.weight.device)


def spectrum_from_matrices(mats: Tensor, mult: Tensor) -> Tensor:
    """All singular values, (B, N) sorted descending, from per-frequency matrices (B, G, F, r, c).

    The straightforward route (one batched ``svdvals``); differentiable. ``conv_singular_values``
    uses it when gradients are needed, otherwise the faster ``_fast.all_singular_values``.
    """
    sv = torch.linalg.svdvals(mats)  # (B, G, F, min(r, c)), real
    bsz, _, nfreq, _ = sv.shape
    sv = sv.permute(0, 2, 1, 3).reshape(bsz, nfreq, -1).repeat_interleave(mult, dim=1)
    return sv.reshape(bsz, -1).sort(dim=-1, descending=True).values


def largest_from_matrices(mats: Tensor) -> Tensor:
    """Largest singular value over all frequencies and groups, shape (B,).

    Uses the top eigenvalue of the smaller Gram matrix (Hermitian eigvalsh): the largest eigenvalue
    has absolute error ~eps·σ_max², i.e. relative error ~eps on σ_max, at about half the cost of an
    SVD. The straightforward route; ``conv_spectral_norm`` uses the certified, faster
    ``_fast.largest_singular_value``.
    """
    rows, cols = mats.shape[-2:]
    gram = mats @ mats.mH if rows <= cols else mats.mH @ mats
    top = torch.linalg.eigvalsh(gram)[..., -1]  # (B, G, F)
    return top.flatten(1).amax(dim=1).clamp_min(0).sqrt()


def _finish(values: Tensor, spec: ConvSpec) -> Tensor:
    return values if spec.batched else values[0]


def conv_singular_values(weight: WeightLike, input_size: IntOrPair, *, stride: IntOrPair | None = None,
                         dilation: IntOrPair | None = None, groups: int | None = None) -> Tensor:
    """All singular values of a circularly padded conv operator, sorted descending.

    Definition: the conv maps x ∈ R^{c_in×n×m} to y[o, i, j] = Σ_{c,a,b} W[o, c, a, b]·
    x[c, (s·i + d·a) mod n, (s·j + d·b) mod m] (per group), a (c_out·(n/s)·(m/s)) × (c_in·n·m) matrix;
    returns its min(rows, cols) singular values. Any circular padding offset is a unitary shift of
    the input and does not change them. Method: Sedghi, Gupta & Long, "The singular values of
    convolutional layers", ICLR 2019; strides by polyphase decomposition (Senderovich et al. 2022).

    ``weight``: (c_out, c_in/groups, kh, kw) tensor, a 5-D stack (B, ...) of same-shape weights
    (result (B, N)), or an ``nn.Conv2d`` whose stride/dilation/groups are used.
    ``input_size``: n or (n, m); the stride must divide it and the dilated kernel must fit in it.
    Computed from the eigenvalues of the smaller Gram matrix per frequency, in float64, with
    ``svdvals`` wherever squaring could cost more than 1e-7 relative accuracy (``_fast``); with
    autograd on, by ``svdvals`` of every frequency matrix (differentiable).
    """
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    size = check_circular_size(spec, input_size)
    if torch.is_grad_enabled() and spec.weight.requires_grad:
        mats, mult = frequency_matrices(spec, size)
        return _finish(spectrum_from_matrices(mats, mult), spec)
    return _finish(_fast.all_singular_values(spec, size), spec)


def conv_spectral_norm(weight: WeightLike, input_size: IntOrPair, *, stride: IntOrPair | None = None,
                       dilation: IntOrPair | None = None, groups: int | None = None) -> Tensor:
    """Largest singular value ‖A‖₂ of the circularly padded conv operator (see conv_singular_values).

    Computed from the top eigenvalues of the per-frequency Gram matrices (Sedghi et al. 2019), only
    where a Cholesky certificate cannot rule a frequency out (``_fast.largest_singular_value``;
    exact to ~1e-10 relative in float64). Differentiable: with autograd on, the value is recomputed
    at the maximising frequency. Returns a 0-dim tensor, or shape (B,) for a 5-D stack of weights.
    """
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    return _finish(_fast.largest_singular_value(spec, check_circular_size(spec, input_size)), spec)
