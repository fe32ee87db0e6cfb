"""Depthwise convolution with a faster CPU backward, and its adjoint as a forward conv.

oneDNN's depthwise kernels are fast in the forward direction and for the backward of undilated,
unstrided 3x3 kernels only (measured at B=32, C=16, 32x32, channels-last: forward 0.3 ms; input
gradient of a dilated 5x5 3.9 ms; weight gradient of a 5x5 3.9 ms vs 0.2 ms for a 3x3).  With
'same' padding (2p = d(k-1)) every other gradient can be written with those fast kernels:

- a strided conv is the stride-1 conv subsampled, so its output gradient is zero-inserted onto the
  input grid (``zero_insert``) and the stride-1 rules apply;
- the adjoint of a stride-1 'same' correlation is the correlation with the flipped kernel;
- the weight gradient is assembled from undilated 3x3 weight-gradient pieces.

Used by ``rankscope.fastnet`` (the supernet's depthwise convs) and ``rankscope.specnorm_fast``
(the power iteration's adjoint and the gradient of sigma).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _aten_grads(grad, x, w, geom, mask):
    """oneDNN/ATen's depthwise conv backward for the gradients selected by ``mask``."""
    stride, padding, dilation = geom
    return torch.ops.aten.convolution_backward(grad, x, w, None, stride, padding, dilation, False,
                                               (0, 0), w.shape[0], (*mask, False))[:2]


def _window_offsets(taps: list[int], extent: int) -> list[int]:
    """Starts of 3-wide windows covering every tap position (a window must fit in ``extent``)."""
    out, covered = [], set()
    for t in taps:
        if t not in covered:
            start = min(t, extent - 3)
            out.append(start)
            covered.update(range(start, start + 3))
    return out


def _weight_grad_3x3_pieces(grad: torch.Tensor, x: torch.Tensor, w: torch.Tensor,
                            padding: tuple[int, int], dilation: tuple[int, int]) -> torch.Tensor:
    """Weight gradient of a stride-1 depthwise conv assembled from undilated 3x3 pieces.

    oneDNN has a fast depthwise weight-gradient kernel for undilated 3x3 only (measured 0.2 ms vs
    3.9 ms for 5x5 and 1.7 ms for dilated 3x3 at B=32, C=16, 32x32).  Tap (a, b) of the kernel sits
    at (d*a, d*b) of the dense kernel; a 3x3 window of dense taps starting at (r, c) is the 3x3
    weight gradient of the padded input cropped at (r, c).  grad, x (B, C, H, W) -> (C, 1, kh, kw).
    """
    (kh, kw), (h, wd), (dh, dw) = w.shape[-2:], grad.shape[-2:], dilation
    xp = F.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    rows = [dh * a for a in range(kh)]
    cols = [dw * b for b in range(kw)]
    out = w.new_empty(w.shape)
    w3 = w.new_empty(w.shape[0], 1, 3, 3)
    for r in _window_offsets(rows, dh * (kh - 1) + 1):
        for c in _window_offsets(cols, dw * (kw - 1) + 1):
            crop = xp[:, :, r:r + h + 2, c:c + wd + 2].contiguous(memory_format=_format(x))
            piece = _aten_grads(grad, crop, w3, ((1, 1), (0, 0), (1, 1)), (False, True))[1]
            ia = [a for a in range(kh) if r <= dh * a < r + 3]
            ib = [b for b in range(kw) if c <= dw * b < c + 3]
            out[:, :, ia[0]:ia[-1] + 1, ib[0]:ib[-1] + 1] = \
                piece[:, :, ia[0] * dh - r::dh, ib[0] * dw - c::dw][:, :, :len(ia), :len(ib)]
    return out


def zero_insert(grad: torch.Tensor, stride: tuple[int, int], size: torch.Size) -> torch.Tensor:
    """The output gradient of a strided conv spread onto the input grid (zeros in between), so the
    strided conv's gradients are those of the stride-1 conv: (B, C, h, w) -> (B, C, *size)."""
    up = grad.new_zeros(*grad.shape[:2], *size).contiguous(memory_format=_format(grad))
    up[:, :, ::stride[0], ::stride[1]] = grad
    return up


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def is_same(w: torch.Tensor, padding, dilation) -> bool:
    """'same' padding: the stride-1 conv keeps the size and its adjoint is the flipped conv."""
    return all(2 * p == d * (k - 1) for p, d, k in zip(padding, dilation, w.shape[-2:]))


class _DepthwiseConv(torch.autograd.Function):
    """Depthwise conv with a faster backward on CPU (the forward is F.conv2d's).

    With 'same' padding a strided conv is the stride-1 conv subsampled, so its output gradient is
    zero-inserted onto the input grid and the stride-1 rules apply: the input gradient is the
    forward conv with the flipped kernel (oneDNN's backward-data kernel for dilated or strided
    depthwise convs is ~10x slower than its forward), and the weight gradient is assembled from
    undilated 3x3 pieces (``_weight_grad_3x3_pieces``).  Other geometries use ATen's backward.
    """

    @staticmethod
    def forward(ctx, x, w, stride, padding, dilation):  # x (B, C, H, W), w (C, 1, k, k)
        ctx.save_for_backward(x, w)
        ctx.geom = (stride, padding, dilation)
        return F.conv2d(x, w, None, stride, padding, dilation, w.shape[0])

    @staticmethod
    def backward(ctx, grad):
        x, w = ctx.saved_tensors
        stride, padding, dilation = geom = ctx.geom
        need_x, need_w = ctx.needs_input_grad[:2]
        if not (is_same(w, padding, dilation) and x.device.type == "cpu"
                and min(w.shape[-2:]) >= 3):
            gx, gw = _aten_grads(grad, x, w, geom, (need_x, need_w))
            return gx, gw, None, None, None
        if stride != (1, 1):
            grad = zero_insert(grad, stride, x.shape[-2:])
        grad_x = grad_w = None
        if need_x:
            grad_x = F.conv2d(grad, w.flip(-2, -1), None, 1, padding, dilation, w.shape[0])
        if need_w:
            grad_w = (_aten_grads(grad, x, w, ((1, 1), padding, dilation), (False, True))[1]
                      if w.shape[-2:] == (3, 3) and dilation == (1, 1)
                      else _weight_grad_3x3_pieces(grad, x, w, padding, dilation))
        return grad_x, grad_w, None, None, None


def depthwise(x: torch.Tensor, w: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """``conv``'s depthwise conv of x with weight w (already spectrally normalised or raw)."""
    return _DepthwiseConv.apply(x, w, tuple(conv.stride), tuple(conv.padding), tuple(conv.dilation))


def depthwise_geom(x: torch.Tensor, w: torch.Tensor, stride, padding, dilation) -> torch.Tensor:
    """Depthwise conv (w (C, 1, k, k), groups C) with explicit geometry and the fast backward."""
    return _DepthwiseConv.apply(x, w, tuple(stride), tuple(padding), tuple(dilation))


def depthwise_adjoint(u: torch.Tensor, w: torch.Tensor, stride, padding, dilation,
                      size) -> torch.Tensor:
    """Adjoint of a 'same'-padded depthwise conv applied to u: zero-insert, flipped forward conv.

    Equals ``conv_transpose2d`` with the output_padding restoring ``size`` (oneDNN has no fast
    depthwise transposed conv: ~10x slower).  u (B, C, h, w) -> (B, C, *size)."""
    if tuple(stride) != (1, 1):
        u = zero_insert(u, tuple(stride), torch.Size(size))
    return F.conv2d(u, w.flip(-2, -1), None, 1, padding, dilation, w.shape[0])
