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
- a depthwise conv with a faster CPU backward (``rankscope.depthwise``): oneDNN's depthwise backward is
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

from rankscope.depthwise import depthwise
from rankscope.errors import ConfigError
from rankscope.ops import DilConv, FactorizedReduce, Identity, SepConv, Zero
from rankscope.specnorm_fast import SpecNormGroup, build_groups, normalised_weights
from rankscope.supernet import SearchCell, SearchNetwork, SupernetConfig

IMPLS = ("fast", "reference")
Weights = dict[int, torch.Tensor]


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
        total, zero = None, None
        for i in range(j + 2):
            if rectified[i] is None:
                rectified[i] = torch.relu(states[i])
            for k, op in enumerate(cell.edges[e].ops):
                y = op_forward(op, states[i], rectified[i], weights)
                if y is not None:
                    total = _accumulate(total, y, None if mix is None else mix[e, k])
                else:  # a skipped 'none' op: remember it in case no other op contributes
                    zero = (op, states[i])
            e += 1
        states.append(total if total is not None else zero[0](zero[1]))
    return torch.cat(states[2:], dim=1)


class FastSearchNetwork(SearchNetwork):
    """``SearchNetwork`` with a faster forward (module docstring); same state_dict and outputs.

    ``channels_last``: NHWC activations (on by default; a win for oneDNN on CPU and for cuDNN with
    AMP).  ``batched_specnorm``: the batched power iterations of ``rankscope.specnorm_fast`` (on by
    default) or the reference's per-conv parametrizations (same numbers, slower).  The spectral-norm
    groups are built lazily and rebuilt after ``_apply`` (``.to``).
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


__all__: Sequence[str] = ("FastSearchNetwork", "build_supernet", "convert", "IMPLS")
