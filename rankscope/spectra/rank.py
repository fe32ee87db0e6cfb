"""Stable ranks: of a spectrum, of a conv operator, normalised, and of the reshaped weight matrix.

Stable rank R(A) = ‖A‖_F² / ‖A‖₂² = Σσᵢ²/σ₁² (Arora, Ge, Neyshabur & Zhang, ICML 2018; MSR-DARTS
Section 3.1). It lies in [1, rank(A)] for A ≠ 0; for the zero operator it is defined here as 0.0
(no division, no warning), so a dead layer ranks lowest.

Three different quantities, not interchangeable:
* ``conv_stable_rank``: R of the conv *operator* on an n×m input (what MSR-DARTS uses); it grows
  with the input area.
* ``normalized_stable_rank``: that divided by min(rows, cols) of the operator matrix, i.e. by
  n²·min(c_in, c_out) for a square-input stride-1 conv; in [0, 1].
* ``matrix_stable_rank``: R of the weight reshaped to c_out × (c_in/groups·kh·kw), the matrix
  torch's spectral_norm and WeightWatcher look at; independent of the input size.
"""
from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor, nn

from ._checks import ConvSpec, IntOrPair, Pair, PaddingSpec, as_pair, check_circular_size
from ._checks import check_weight, conv_spec, zero_output_size, zero_padding_amount
from ._fast import largest_singular_value
from .norms import frobenius_sq, resolve_padding, tap_counts, zero_padded_spectral_norm
from .power import power_iteration_fn

WeightLike = Union[Tensor, nn.Conv2d]


def _ratio(frob_sq: Tensor, top_sq: Tensor) -> Tensor:
    """frob_sq / top_sq, with 0/0 := 0 (stable rank of the zero operator)."""
    safe = torch.where(top_sq > 0, top_sq, torch.ones_like(top_sq))
    return torch.where(top_sq > 0, frob_sq / safe, torch.zeros_like(frob_sq))


def stable_rank(singular_values: Tensor) -> Tensor:
    """Stable rank Σσᵢ² / max σᵢ² of a spectrum along its last dim (0.0 when all are zero).

    Reference: Arora et al., "Stronger generalization bounds for deep nets via a compression
    approach", ICML 2018; MSR-DARTS eq. R(c) = ‖c‖_F²/‖c‖₂².
    """
    if not isinstance(singular_values, Tensor) or singular_values.dim() == 0:
        raise ValueError("singular_values must be a tensor with at least one dimension")
    if singular_values.shape[-1] == 0:
        raise ValueError("singular_values is empty")
    if not bool(torch.isfinite(singular_values).all()):
        raise ValueError("singular_values contains NaN or Inf")
    sq = singular_values.square()
    return _ratio(sq.sum(dim=-1), sq.amax(dim=-1))


def matrix_stable_rank(weight: Tensor) -> Tensor:
    """Stable rank of the weight reshaped to c_out × (c_in/groups·kh·kw) — NOT the operator's.

    This is the matrix torch.nn.utils.spectral_norm and WeightWatcher analyse; it ignores the
    input size, padding, stride and the group structure. A 5-D stack gives shape (B,).
    Reference: Arora et al. ICML 2018 (stable rank); Miyato et al. ICLR 2018 (reshaped matrix).
    """
    w5 = check_weight(weight, allow_batch=True)
    mat = w5.flatten(2)  # (B, c_out, c_in/groups·kh·kw)
    top = torch.linalg.matrix_norm(mat, ord=2)
    value = _ratio(mat.square().sum(dim=(1, 2)), top.square())
    return value if weight.dim() == 5 else value[0]


def _one_by_one(spec: ConvSpec, size: Pair, padding: PaddingSpec) -> Tensor:
    """R for a 1×1 kernel: the operator is (position selection) ⊗ W, so each singular value of the
    block-diagonal W repeats once per output position that reads a real pixel: R = N·R(W)."""
    if padding == "circular":
        cells = (size[0] // spec.stride[0]) * (size[1] // spec.stride[1])
    else:
        pad = zero_padding_amount(spec, padding)
        zero_output_size(spec, size, pad)
        cells = int(tap_counts(size[0], 1, spec.stride[0], 1, pad[0])[0]) * \
            int(tap_counts(size[1], 1, spec.stride[1], 1, pad[1])[0])
    w = spec.weight.flatten(2)  # (B, c_out, c_in/groups)
    blocks = w.reshape(w.shape[0], spec.groups, -1, w.shape[-1])  # (B, G, co/G, ci/G)
    top_sq = torch.linalg.matrix_norm(blocks, ord=2).amax(dim=1).square()
    return cells * _ratio(w.square().sum(dim=(1, 2)), top_sq)


def _zero_padded_top(spec: ConvSpec, size: Pair, padding: PaddingSpec, method: str, n_iter: int,
                     generator: Optional[torch.Generator]) -> Tensor:
    """σ₁ of each zero-padded operator in the stack, shape (B,): exact (Lanczos) or power iteration."""
    pad = zero_padding_amount(spec, padding)
    tops = []
    for w in spec.weight:
        if method == "exact":
            geo = dict(stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
            tops.append(zero_padded_spectral_norm(w, size, padding=pad, **geo))
        else:
            tops.append(power_iteration_fn(w, (spec.c_in, *size), stride=spec.stride, padding=pad,
                                           dilation=spec.dilation, groups=spec.groups,
                                           n_iter=n_iter, generator=generator)[0].detach())
    return torch.stack(tops).to(spec.weight)


def conv_stable_rank(weight: WeightLike, input_size: IntOrPair, *, stride: IntOrPair | None = None,
                     dilation: IntOrPair | None = None, groups: int | None = None,
                     padding: PaddingSpec = None, method: str = "exact", n_iter: int = 50,
                     generator: Optional[torch.Generator] = None) -> Tensor:
    """Stable rank ‖A‖_F²/‖A‖₂² of the conv operator A on an input of size ``input_size``.

    ``padding="circular"`` (default for tensors): ‖A‖_F² in closed form, ‖A‖₂ exactly by the DFT
    (Sedghi et al. 2019). ``"zeros"`` or an explicit amount (default for an ``nn.Conv2d`` with zero
    padding): closed-form ‖A‖_F² and ‖A‖₂ by Lanczos (``method="exact"``) or by ``n_iter`` steps
    of power iteration (``method="power"``, an over-estimate of R since σ̃ ≤ σ₁). A 1×1 kernel takes
    a fast path: R = N·R(W) with N the number of output positions (n² at stride 1, circular).
    Accepts a 5-D stack of same-shape weights (result (B,)). Zero operator → 0.0.
    """
    if method not in ("exact", "power"):
        raise ValueError(f"method must be 'exact' or 'power', got {method!r}")
    padding = resolve_padding(weight, padding)
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    size = as_pair(input_size, "input_size")
    with torch.no_grad():
        if spec.kernel == (1, 1):
            value = _one_by_one(spec, size, padding)
        elif padding == "circular":
            top = largest_singular_value(spec, check_circular_size(spec, size))
            value = _ratio(frobenius_sq(spec, size, padding), top.square())
        else:
            top = _zero_padded_top(spec, size, padding, method, n_iter, generator)
            value = _ratio(frobenius_sq(spec, size, padding), top.square())
    return value if spec.batched else value[0]


def operator_shape(weight: WeightLike, input_size: IntOrPair, *, stride: IntOrPair | None = None,
                   dilation: IntOrPair | None = None, groups: int | None = None,
                   padding: PaddingSpec = None) -> tuple[int, int]:
    """(rows, cols) of the operator matrix: (c_out·h_out·w_out, c_in·h·w)."""
    padding = resolve_padding(weight, padding)
    spec = conv_spec(weight, stride, dilation, groups, allow_batch=True)
    size = as_pair(input_size, "input_size")
    if padding == "circular":
        check_circular_size(spec, size)
        out = (size[0] // spec.stride[0], size[1] // spec.stride[1])
    else:
        out = zero_output_size(spec, size, zero_padding_amount(spec, padding))
    return spec.c_out * out[0] * out[1], spec.c_in * size[0] * size[1]


def normalized_stable_rank(weight: WeightLike, input_size: IntOrPair, **kwargs) -> Tensor:
    """Operator stable rank divided by min(rows, cols) of the operator matrix, in [0, 1].

    min(rows, cols) bounds the rank, so this is the stable rank as a fraction of the largest
    possible; for a stride-1 conv on an n×n input it is R / (n²·min(c_in, c_out)). Takes the same
    keyword arguments as ``conv_stable_rank``. Reference: Arora et al. ICML 2018 (stable rank).
    """
    keys = ("stride", "dilation", "groups", "padding")
    rows, cols = operator_shape(weight, input_size, **{k: kwargs[k] for k in keys if k in kwargs})
    return conv_stable_rank(weight, input_size, **kwargs) / min(rows, cols)
