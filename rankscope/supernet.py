"""The search network (supernet) of MSR-DARTS and DARTS, separate from the discrete network.

Every edge of a search cell is a ``MixedOp`` holding one op per primitive.  Mixing modes:

- ``"sum"``: plain sum of the edge's ops (paper eq. 2, MSR-DARTS as published; the default);
- ``"rank_softmax"``: weights softmax(-R) per edge, R an (edges x ops) stable-rank tensor per cell type
  set by ``net.set_rank_weights`` (the authors' code; uniform until set);
- ``"alpha"``: DARTS eq. 1, the caller passes (edges x ops) mixing weights, e.g. softmax(alpha), to
  ``forward`` so that alpha can live outside the module.

Edge order: for intermediate node j (0-based) the edges come from inputs 0..j+1 in order, input 0 is
cell k-2, input 1 cell k-1, input i >= 2 intermediate node i-2 (the genotype convention).  Tensors are
NCHW; spatial sizes are tracked analytically (``cell_resolutions``, ``candidate_convs``,
``last_convs``) so that spectral normalisation and stable ranks use each conv's true input size.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterator, NamedTuple, Sequence

import numpy as np
import torch
from torch import nn

from rankscope.errors import ConfigError
from rankscope.ops import OPS, PRIMITIVES_MSR, FactorizedReduce, ReLUConvBN, last_conv, make_op
from rankscope.specnorm import SpecNormConfig, apply_spectral_norm, conv_output_size

MIXING_MODES = ("sum", "rank_softmax", "alpha")
CELL_TYPES = ("normal", "reduce")
Size2 = tuple[int, int]


@dataclass(frozen=True)
class SupernetConfig:
    """Shape of the search network and how its edges mix their ops."""

    in_channels: int = 3
    num_classes: int = 10
    C: int = 16
    layers: int = 8
    nodes: int = 4
    stem_multiplier: int = 3
    primitives: tuple[str, ...] = PRIMITIVES_MSR
    mixing: str = "sum"
    specnorm: SpecNormConfig = field(default_factory=SpecNormConfig)
    image_size: int = 32

    def __post_init__(self) -> None:
        object.__setattr__(self, "primitives", tuple(self.primitives))
        unknown = [p for p in self.primitives if p not in OPS]
        if unknown or not self.primitives or len(set(self.primitives)) != len(self.primitives):
            raise ConfigError(f"primitives must be distinct known ops ({', '.join(OPS)}), "
                              f"got {list(self.primitives)}")
        if self.mixing not in MIXING_MODES:
            raise ConfigError(f"mixing must be one of {', '.join(MIXING_MODES)}, got {self.mixing!r}")
        for name in ("in_channels", "num_classes", "C", "layers", "nodes", "stem_multiplier",
                     "image_size"):
            if int(getattr(self, name)) < 1:
                raise ConfigError(f"supernet {name} must be >= 1, got {getattr(self, name)}")
        if self.C % 2:
            raise ConfigError(f"supernet C must be even (FactorizedReduce halves it), got {self.C}")

    @property
    def num_edges(self) -> int:
        return len(edge_list(self.nodes))


class LastConv(NamedTuple):
    """One conv-type op's final pointwise conv, located in the network."""

    cell: int
    cell_type: str  # 'normal' | 'reduce'
    edge: int
    input: int  # genotype input index: 0, 1 = cell inputs, i >= 2 = intermediate node i-2
    node: int  # 0-based intermediate node the edge feeds
    op: str
    conv: nn.Conv2d
    resolution: Size2  # (h, w) of the conv's input


def edge_list(nodes: int) -> list[tuple[int, int]]:
    """``(node_index, input_index)`` for every edge, in the order the cells store them."""
    return [(j, i) for j in range(nodes) for i in range(j + 2)]


def reduction_indices(layers: int) -> tuple[int, ...]:
    """Cells that reduce (and double channels): L//3 and 2L//3 (one cell when they coincide)."""
    return tuple(sorted({layers // 3, 2 * layers // 3}))


def _halve(size: Size2) -> Size2:
    """Spatial size after any stride-2 op of the space (all give ceil(n/2))."""
    return ((size[0] + 1) // 2, (size[1] + 1) // 2)


def cell_resolutions(config: SupernetConfig) -> list[Size2]:
    """Input resolution of every cell (both preprocessed inputs have it)."""
    size, out = (config.image_size, config.image_size), []
    for k in range(config.layers):
        out.append(size)
        if k in reduction_indices(config.layers):
            size = _halve(size)
    return out


def search_op(name: str, C: int, stride: int) -> nn.Module:
    """A candidate op of the search network: affine-free BNs, pools followed by an affine-free BN."""
    op = make_op(name, C, stride, affine=False)
    if "pool" in name:
        op = nn.Sequential(op, nn.BatchNorm2d(C, affine=False))
    return op


def op_conv_inputs(op: nn.Module, size: Size2) -> list[tuple[str, nn.Conv2d, Size2]]:
    """``(name, conv, input_size)`` for every conv inside a candidate op applied at ``size``."""
    if isinstance(op, FactorizedReduce):
        # Both convs see a full-size input (the second on the shifted, re-padded view).
        return [(n, m, size) for n, m in op.named_modules() if isinstance(m, nn.Conv2d)]
    out = []
    for name, module in op.named_modules():  # registration order = application order here
        if isinstance(module, nn.Conv2d):
            out.append((name, module, size))
            size = conv_output_size(module, size)
    return out


class MixedOp(nn.Module):
    """One edge: every primitive op on C channels; the output is their (weighted) sum."""

    def __init__(self, C: int, stride: int, primitives: Sequence[str]):
        super().__init__()
        self.primitives = tuple(primitives)
        self.stride = stride
        self.ops = nn.ModuleList(search_op(p, C, stride) for p in self.primitives)

    def forward(self, x: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, C, H, W); weights: (K,) or None for the plain sum of eq. 2.
        if weights is None:
            return sum(op(x) for op in self.ops)
        return sum(w * op(x) for w, op in zip(weights, self.ops))


class SearchCell(nn.Module):
    """Preprocess the two inputs, ``nodes`` intermediate nodes over mixed edges, concat them."""

    def __init__(self, nodes: int, C_pp: int, C_p: int, C: int, reduction: bool,
                 reduction_prev: bool, primitives: Sequence[str]):
        super().__init__()
        self.nodes, self.reduction = nodes, reduction
        self.preprocess0 = (FactorizedReduce(C_pp, C, affine=False) if reduction_prev
                            else ReLUConvBN(C_pp, C, 1, 1, 0, affine=False))
        self.preprocess1 = ReLUConvBN(C_p, C, 1, 1, 0, affine=False)
        self.edges = nn.ModuleList(
            MixedOp(C, 2 if reduction and i < 2 else 1, primitives) for _, i in edge_list(nodes))

    def forward(self, s0: torch.Tensor, s1: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        # s0: (B, C_pp, 2H or H, ...), s1: (B, C_p, H, W) -> (B, nodes*C, H', W'); weights (E, K).
        states = [self.preprocess0(s0), self.preprocess1(s1)]
        e = 0
        for j in range(self.nodes):
            total = 0
            for i in range(j + 2):
                total = total + self.edges[e](states[i], None if weights is None else weights[e])
                e += 1
            states.append(total)
        return torch.cat(states[2:], dim=1)


class SearchNetwork(nn.Module):
    """Stem, ``layers`` search cells (reductions at L//3, 2L//3), global pool, linear classifier.

    Spectral normalisation (``config.specnorm``) is registered on every conv inside the candidate
    ops at construction.  In ``"rank_softmax"`` mode the buffers ``rank_normal``/``rank_reduce``
    (E, K) hold the stable ranks (zeros = uniform weights until set); they are checkpointed.
    """

    def __init__(self, config: SupernetConfig | None = None):
        super().__init__()
        self.config = config = SupernetConfig() if config is None else config
        c, m = config.C, config.stem_multiplier
        self.stem = nn.Sequential(nn.Conv2d(config.in_channels, m * c, 3, padding=1, bias=False),
                                  nn.BatchNorm2d(m * c))
        reductions = reduction_indices(config.layers)
        c_pp, c_p, c_cur, red_prev = m * c, m * c, c, False
        self.cells = nn.ModuleList()
        for k in range(config.layers):
            red = k in reductions
            c_cur = 2 * c_cur if red else c_cur
            self.cells.append(SearchCell(config.nodes, c_pp, c_p, c_cur, red, red_prev,
                                         config.primitives))
            c_pp, c_p, red_prev = c_p, config.nodes * c_cur, red
        self.global_pooling = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(c_p, config.num_classes)
        self.cell_types = tuple("reduce" if k in reductions else "normal" for k in range(config.layers))
        self.cell_resolutions = cell_resolutions(config)
        if config.mixing == "rank_softmax":
            shape = (config.num_edges, len(config.primitives))
            self.register_buffer("rank_normal", torch.zeros(shape))
            self.register_buffer("rank_reduce", torch.zeros(shape))
        apply_spectral_norm(self, config.specnorm)

    def set_rank_weights(self, normal, reduce) -> None:
        """Set the (E, K) stable ranks R per cell type; edges then mix with softmax(-R)."""
        if self.config.mixing != "rank_softmax":
            raise ValueError(f"set_rank_weights needs mixing='rank_softmax', not {self.config.mixing!r}")
        for buf, value in ((self.rank_normal, normal), (self.rank_reduce, reduce)):
            if not isinstance(value, torch.Tensor):
                value = torch.tensor(np.asarray(value, dtype=np.float64))  # copies read-only arrays
            value = value.to(dtype=buf.dtype, device=buf.device)
            if value.shape != buf.shape:
                raise ValueError(f"rank weights must have shape {tuple(buf.shape)} (edges x ops), "
                                 f"got {tuple(value.shape)}")
            buf.copy_(value)

    def _mixing_weights(self, weights_normal, weights_reduce):
        """(E, K) weights per cell type, or (None, None) for the plain sum."""
        mode, shape = self.config.mixing, (self.config.num_edges, len(self.config.primitives))
        given = weights_normal is not None or weights_reduce is not None
        if mode == "sum" or mode == "rank_softmax":
            if given:
                raise ValueError(f"mixing={mode!r} takes no mixing weights; use mixing='alpha'")
            if mode == "sum":
                return None, None
            return torch.softmax(-self.rank_normal, -1), torch.softmax(-self.rank_reduce, -1)
        for w in (weights_normal, weights_reduce):
            if w is None or tuple(w.shape) != shape:
                raise ValueError(f"mixing='alpha' needs weights_normal and weights_reduce of shape "
                                 f"{shape} (edges x ops), got "
                                 f"{None if w is None else tuple(w.shape)}")
        return weights_normal, weights_reduce

    def forward(self, x: torch.Tensor, weights_normal: torch.Tensor | None = None,
                weights_reduce: torch.Tensor | None = None) -> torch.Tensor:
        # x: (B, in_channels, H, W) -> logits (B, num_classes)
        w_n, w_r = self._mixing_weights(weights_normal, weights_reduce)
        s0 = s1 = self.stem(x)
        for cell in self.cells:
            s0, s1 = s1, cell(s0, s1, w_r if cell.reduction else w_n)
        return self.classifier(self.global_pooling(s1).flatten(1))

    def _edge_ops(self) -> Iterator[tuple[int, int, int, int, str, nn.Module, Size2]]:
        """(cell, edge, input, node, op name, op module, op input size) for every op."""
        for k, cell in enumerate(self.cells):
            size = self.cell_resolutions[k]
            for e, (j, i) in enumerate(edge_list(self.config.nodes)):
                # Intermediate nodes of a reduction cell are already at half resolution.
                in_size = _halve(size) if cell.reduction and i >= 2 else size
                for name, op in zip(self.config.primitives, cell.edges[e].ops):
                    yield k, e, i, j, name, op, in_size

    def candidate_convs(self) -> Iterator[tuple[str, nn.Conv2d, Size2]]:
        """``(qualified name, conv, input_size)`` for every conv inside a candidate op."""
        for k, e, _, _, name, op, in_size in self._edge_ops():
            for sub, conv, size in op_conv_inputs(op, in_size):
                yield f"cells.{k}.edges.{e}.ops.{self.config.primitives.index(name)}.{sub}", conv, size

    def last_convs(self) -> Iterator[LastConv]:
        """A ``LastConv`` record for every conv-type op (one with a final pointwise conv)."""
        for k, e, i, j, name, op, in_size in self._edge_ops():
            if not hasattr(op, "last_conv"):
                continue
            conv = last_conv(op)
            size = next(s for _, c, s in op_conv_inputs(op, in_size) if c is conv)
            yield LastConv(k, self.cell_types[k], e, i, j, name, conv, size)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Disjoint groups covering ``parameters()``: stem, preprocess, ops, classifier."""
        groups: dict[str, list[nn.Parameter]] = {"stem": list(self.stem.parameters()),
                                                 "preprocess": [], "ops": [],
                                                 "classifier": list(self.classifier.parameters())}
        for cell in self.cells:
            groups["preprocess"] += list(cell.preprocess0.parameters())
            groups["preprocess"] += list(cell.preprocess1.parameters())
            groups["ops"] += list(cell.edges.parameters())
        return groups
