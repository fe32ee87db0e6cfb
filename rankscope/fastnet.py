"""A faster search network with exactly the reference's modules, parameters and state_dict.

``FastSearchNetwork`` subclasses ``rankscope.supernet.SearchNetwork``: construction, buffers,
``state_dict``, ``candidate_convs``/``last_convs`` (stable-rank selection), ``set_rank_weights`` and
``parameter_groups`` are inherited unchanged, so weights load both ways and every consumer of a
``SearchNetwork`` works.  Only ``forward`` is re-implemented, functionally, over the same modules:

- spectral normalisation of all candidate convs in a few batched calls (``rankscope.specnorm_fast``)
  instead of one power iteration per conv, with the same iterates and buffers;
- channels-last activations (oneDNN's depthwise and 1x1 kernels are 2-5x faster in NHWC on CPU);
- one ReLU per cell state, shared by every conv op of every edge leaving that state (the reference
  computes it once per op: 4 x edges times, and keeps each copy alive for the backward);
- a depthwise conv with a faster CPU backward (``_DepthwiseConv``): oneDNN's depthwise backward is
  fast only for undilated, unstrided 3x3 kernels, so every other gradient is rewritten in terms of
  forward convs and 3x3 weight-gradient pieces.

Measured but not used (docs/performance.md): grouping the ops of an edge, or all edges leaving a
node, into grouped depthwise / pointwise convs (grouped 1x1 convs are slower than separate ones in
oneDNN, and the channel permutes they need cost more than they save at the paper size).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rankscope.errors import ConfigError
from rankscope.ops import DilConv, FactorizedReduce, Identity, SepConv, Zero
from rankscope.specnorm_fast import SpecNormGroup, build_groups, normalised_weights
from rankscope.supernet import SearchCell, SearchNetwork, SupernetConfig

IMPLS = ("fast", "reference")
Weights = dict[int, torch.Tensor]


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


def _zero_insert(grad: torch.Tensor, stride: tuple[int, int], size: torch.Size) -> torch.Tensor:
    """The output gradient of a strided conv spread onto the input grid (zeros in between), so the
    strided conv's gradients are those of the stride-1 conv: (B, C, h, w) -> (B, C, *size)."""
    up = grad.new_zeros(*grad.shape[:2], *size).contiguous(memory_format=_format(grad))
    up[:, :, ::stride[0], ::stride[1]] = grad
    return up


def _format(t: torch.Tensor) -> torch.memory_format:
    return torch.channels_last if t.is_contiguous(memory_format=torch.channels_last) \
        and not t.is_contiguous() else torch.contiguous_format


def _is_same(w: torch.Tensor, padding, dilation) -> bool:
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
        if not (_is_same(w, padding, dilation) and x.device.type == "cpu"
                and min(w.shape[-2:]) >= 3):
            gx, gw = _aten_grads(grad, x, w, geom, (need_x, need_w))
            return gx, gw, None, None, None
        if stride != (1, 1):
            grad = _zero_insert(grad, stride, x.shape[-2:])
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


def _weight(conv: nn.Conv2d, weights: Weights) -> torch.Tensor:
    """The normalised weight of a spectrally normalised conv, else the conv's own weight."""
    w = weights.get(id(conv))
    return conv.weight if w is None else w


def dil_block(block: DilConv, rx: torch.Tensor, weights: Weights) -> torch.Tensor:
    """DilConv without its ReLU (``rx`` is already rectified): depthwise, pointwise, BN."""
    dw, pw, bn = block.op[1], block.op[2], block.op[3]
    y = depthwise(rx, _weight(dw, weights), dw)
    return bn(F.conv2d(y, _weight(pw, weights)))


def factorized_reduce(op: FactorizedReduce, rx: torch.Tensor, weights: Weights) -> torch.Tensor:
    """FactorizedReduce on a rectified input (its ReLU is shared per state)."""
    shifted = F.pad(rx[:, :, 1:, 1:], (0, 1, 0, 1))
    a = F.conv2d(rx, _weight(op.conv_1, weights), None, op.conv_1.stride)
    b = F.conv2d(shifted, _weight(op.conv_2, weights), None, op.conv_2.stride)
    return op.bn(torch.cat([a, b], dim=1))


def op_forward(op: nn.Module, x: torch.Tensor, rx: torch.Tensor,
               weights: Weights) -> torch.Tensor | None:
    """One candidate op on state x (rx = relu(x)); None for the ``none`` op (adds nothing)."""
    if isinstance(op, SepConv):
        y = dil_block(op.op[0], rx, weights)
        return dil_block(op.op[1], torch.relu(y), weights)
    if isinstance(op, DilConv):
        return dil_block(op, rx, weights)
    if isinstance(op, FactorizedReduce):
        return factorized_reduce(op, rx, weights)
    if isinstance(op, Zero):
        return None
    if isinstance(op, Identity):
        return x
    return op(x)  # pools (+ their affine-free BN): no conv, no ReLU


def _accumulate(total: torch.Tensor | None, y: torch.Tensor,
                w: torch.Tensor | None) -> torch.Tensor:
    """total + w * y in one kernel (w a 0-d mixing weight or None)."""
    if total is None:
        return y if w is None else w * y
    return total + y if w is None else torch.addcmul(total, w, y)


def cell_forward(cell: SearchCell, s0: torch.Tensor, s1: torch.Tensor,
                 mix: torch.Tensor | None, weights: Weights) -> torch.Tensor:
    """The reference ``SearchCell.forward`` with one ReLU per state; mix (E, K) or None."""
    states = [cell.preprocess0(s0), cell.preprocess1(s1)]
    rectified: list[torch.Tensor | None] = [None] * (cell.nodes + 2)
    e = 0
    for j in range(cell.nodes):
        total = None
        for i in range(j + 2):
            if rectified[i] is None:
                rectified[i] = torch.relu(states[i])
            for k, op in enumerate(cell.edges[e].ops):
                y = op_forward(op, states[i], rectified[i], weights)
                if y is not None:
                    total = _accumulate(total, y, None if mix is None else mix[e, k])
            e += 1
        states.append(total if total is not None else states[0].new_zeros(()))
    return torch.cat(states[2:], dim=1)


class FastSearchNetwork(SearchNetwork):
    """``SearchNetwork`` with a faster forward (module docstring); same state_dict and outputs.

    ``channels_last``: NHWC activations (on by default; a win for oneDNN on CPU and for cuDNN with
    AMP).  ``batched_specnorm``: the batched power iterations of ``rankscope.specnorm_fast`` (on by
    default) or the reference's per-conv parametrizations (same numbers, slower).  The spectral-norm groups are built lazily and rebuilt after ``_apply`` (``.to``).
    """

    def __init__(self, config: SupernetConfig | None = None, channels_last: bool = True,
                 batched_specnorm: bool = True):
        super().__init__(config)
        self.channels_last = channels_last
        self.batched_specnorm = batched_specnorm  # False: each conv's own parametrization runs
        self._sn_groups: list[SpecNormGroup] | None = None  # plain attribute: not in state_dict

    def _apply(self, fn, *args, **kwargs):
        self._sn_groups = None  # parametrization modules survive, but be safe after conversions
        return super()._apply(fn, *args, **kwargs)

    def spectral_norm_groups(self) -> list[SpecNormGroup]:
        """The batched spectral-norm groups (empty when spectral normalisation is off)."""
        if self._sn_groups is None:
            self._sn_groups = build_groups(self)
        return self._sn_groups

    def normalised_weights(self) -> Weights:
        """``id(conv) -> weight`` used by this forward (updates power-iteration state if training);
        empty without batching, so every conv reads ``conv.weight`` (the reference parametrization)."""
        if not self.batched_specnorm:
            return {}
        return normalised_weights(self.spectral_norm_groups(), self.training)

    def forward(self, x: torch.Tensor, weights_normal: torch.Tensor | None = None,
                weights_reduce: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, in_channels, H, W) -> logits (B, num_classes)
        w_n, w_r = self._mixing_weights(weights_normal, weights_reduce)
        weights = self.normalised_weights()
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell_forward(cell, s0, s1, w_r if cell.reduction else w_n, weights)
        return self.classifier(self.global_pooling(s1).flatten(1))


def build_supernet(config: SupernetConfig, impl: str = "fast") -> SearchNetwork:
    """The search network for ``config``: ``"fast"`` (``FastSearchNetwork``) or ``"reference"``."""
    if impl == "fast":
        return FastSearchNetwork(config)
    if impl == "reference":
        return SearchNetwork(config)
    raise ConfigError(f"supernet impl must be one of {', '.join(IMPLS)}, got {impl!r}")


def convert(net: SearchNetwork, impl: str = "fast") -> SearchNetwork:
    """A copy of ``net`` as implementation ``impl`` with the same state (weights, BN, v, sigma)."""
    param = next(net.parameters())
    out = build_supernet(net.config, impl).to(device=param.device, dtype=param.dtype)
    out.load_state_dict(net.state_dict())  # after the move: no precision lost on the way
    return out.train(net.training)


__all__: Sequence[str] = ("FastSearchNetwork", "build_supernet", "convert", "IMPLS", "depthwise")
