"""Dense matrix of a conv operator, built by applying the conv to every basis image.

Only for small sizes (the matrix is (c_out·h_out·w_out) × (c_in·h·w)); it is the independent oracle
the FFT engine is tested against, and an exact route for small zero-padded operators.
"""
from __future__ import annotations

from typing import Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._checks import IntOrPair, PaddingSpec, as_pair, check_circular_size, conv_spec, module_padding
from ._checks import zero_output_size, zero_padding_amount

MAX_DENSE_COLUMNS = 20_000  # beyond this the matrix no longer fits comfortably in memory


def dense_conv_operator(weight: Union[Tensor, nn.Conv2d], input_size: IntOrPair, *,
                        stride: IntOrPair | None = None, dilation: IntOrPair | None = None,
                        groups: int | None = None, padding: PaddingSpec = None) -> Tensor:
    """The conv as an explicit float64 matrix A with A @ x.flatten() == conv(x).flatten().

    Column k is the conv applied to the k-th basis image of R^{c_in×h×w}. ``padding`` is
    ``"circular"`` (default for tensors; y[o,i,j] uses x at ((s·i + d·a) mod h, (s·j + d·b) mod w)),
    ``"zeros"`` (zero padding d·(k-1)//2), or an explicit zero-padding amount as in ``nn.Conv2d``.
    For an ``nn.Conv2d`` the default is its own padding. Reference: the "convolution as a matrix"
    view of Sedghi et al. 2019, Section 2.
    """
    if padding is None:
        padding = module_padding(weight) if isinstance(weight, nn.Conv2d) else "circular"
    spec = conv_spec(weight, stride, dilation, groups)
    w = spec.weight[0].to(torch.float64)
    size = as_pair(input_size, "input_size")
    cols = spec.c_in * size[0] * size[1]
    if cols > MAX_DENSE_COLUMNS:
        raise ValueError(f"dense operator would have {cols} columns (limit {MAX_DENSE_COLUMNS})")
    basis = torch.eye(cols, dtype=torch.float64, device=w.device).view(cols, spec.c_in, *size)
    kwargs = dict(stride=spec.stride, dilation=spec.dilation, groups=spec.groups)
    if padding == "circular":
        check_circular_size(spec, size)
        eh, ew = (e - 1 for e in spec.extent)
        out = F.conv2d(F.pad(basis, (0, ew, 0, eh), mode="circular"), w, **kwargs)
    else:
        pad = zero_padding_amount(spec, padding)
        zero_output_size(spec, size, pad)
        out = F.conv2d(basis, w, padding=pad, **kwargs)
    return out.reshape(cols, -1).T
