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

from ._checks import ConvSpec, IntOrPair, Pair, check_circular_size, conv_spec

WeightLike = Union[Tensor, nn.Conv2d]


def frequency_matrices(spec: ConvSpec, size: Pair) -> tuple[Tensor, Tensor]:
    """Per-frequency matrices of the circular operator over the rfft half-spectrum.

    Returns ``mats`` of shape (B, groups, F, c_out/groups, (c_in/groups)·sh·sw), complex, and
    ``mult`` of shape (F,), the number of times each frequency occurs in the full spectrum
    (F = (n/sh)·(m/sw//2 + 1); Σ mult = (n/sh)·(m/sw)).
    """
    w = spec.weight  # (B, co, ci_g, kh, kw)
    bsz, c_out, ci_g, kh, kw = w.shape
    (n, m), (sh, sw), (dh, dw), g = size, spec.stride, spec.dilation, spec.groups
    # Dilated kernel embedded in the n×m torus; tap (a, b) sits at (dh·a, dw·b).
    grid = w.new_zeros(bsz, c_out, ci_g, n, m)
    grid[..., : dh * (kh - 1) + 1 : dh, : dw * (kw - 1) + 1 : dw] = w
    # Polyphase split: position i = q·s + r -> (q, r); r joins the input channels.
    grid = grid.view(bsz, c_out, ci_g, n // sh, sh, m // sw, sw).permute(0, 1, 2, 4, 6, 3, 5)
    spectrum = torch.fft.rfft2(grid)  # (B, co, ci_g, sh, sw, nq, mq//2+1)
    nq, mh = spectrum.shape[-2:]
    spectrum = spectrum.reshape(bsz, g, c_out // g, ci_g, sh, sw, nq, mh)
    mats = spectrum.permute(0, 1, 6, 7, 2, 3, 4, 5).reshape(bsz, g, nq * mh, c_out // g, ci_g * sh * sw)
    return mats, _rfft_multiplicity(nq, m // sw, w.device)


def _rfft_multiplicity(rows: int, cols: int, device: torch.device) -> Tensor:
    """How often each rfft2 frequency of a rows×cols grid occurs in the full spectrum, shape (F,).

    Column 0 (and column cols/2 for even cols) is closed under ω -> -ω, so those frequencies are
    already all present in the half-spectrum; every other column stands for itself and its mirror.
    """
    per_col = torch.full((cols // 2 + 1,), 2, dtype=torch.long, device=device)
    per_col[0] = 1
    if cols % 2 == 0:
        per_col[-1] = 1
    return per_col.repeat(rows)


def spectrum_from_matrices(mats: Tensor, mult: Tensor) -> Tensor:
    """All singular values, (B, N) sorted descending, from per-frequency matrices (B, G, F, r, c)."""
    sv = torch.linalg.svdvals(mats)  # (B, G, F, min(r, c)), real
    bsz, _, nfreq, _ = sv.shape
    sv = sv.permute(0, 2, 1, 3).reshape(bsz, nfreq, -1).repeat_interleave(mult, dim=1)
    return sv.reshape(bsz, -1).sort(dim=-1, descending=True).values


def largest_from_matrices(mats: Tensor) -> Tensor:
    """Largest singular value over all frequencies and groups, shape (B,).

    Uses the top eigenvalue of the smaller Gram matrix (Hermitian eigvalsh): the largest eigenvalue
    has absolute error ~eps·σ_max², i.e. relative error ~eps on σ_max, at about half the cost of an
    SVD (measured in benchmarks/spectra_bench.py).
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
    """
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    mats, mult = frequency_matrices(spec, check_circular_size(spec, input_size))
    return _finish(spectrum_from_matrices(mats, mult), spec)


def conv_spectral_norm(weight: WeightLike, input_size: IntOrPair, *, stride: IntOrPair | None = None,
                       dilation: IntOrPair | None = None, groups: int | None = None) -> Tensor:
    """Largest singular value ‖A‖₂ of the circularly padded conv operator (see conv_singular_values).

    Computed per frequency from the top eigenvalue of the smaller Gram matrix, without a full SVD
    (Sedghi et al. 2019). Returns a 0-dim tensor, or shape (B,) for a 5-D stack of weights.
    """
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    mats, _ = frequency_matrices(spec, check_circular_size(spec, input_size))
    return _finish(largest_from_matrices(mats), spec)
