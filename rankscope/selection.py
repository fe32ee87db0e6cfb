"""Deriving a discrete cell from a trained supernet (paper 3.4, eqs. 6-9), as pure functions.

MSR-DARTS: ``stable_rank_table`` scores the last pointwise conv of every conv-type op on every edge
of every cell, ``average_table`` averages over the cells of each type, ``select_genotype`` keeps on
each edge the op with the lowest average (eq. 7; ``rule="max"`` is Appendix B's variant) and for each
intermediate node the two incoming edges whose best op is best (eqs. 8-9).  DARTS:
``genotype_from_alpha`` (eq. 6).

Tie-breaking (deterministic): on an edge, the op earlier in ``primitives`` wins; between edges of
a node, the lower input index wins.  Within a node the two kept edges are listed strongest first
(DARTS order).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import torch

from rankscope.genotype import Genotype
from rankscope.specnorm import raw_weight

MEASURES = ("operator", "matrix")
RULES = ("min", "max")
CELL_TYPES = ("normal", "reduce")
TABLE_COLUMNS = ["cell", "cell_type", "edge", "input", "node", "op", "resolution", "stable_rank"]
AVG_COLUMNS = ["cell_type", "edge", "input", "node", "op", "stable_rank"]


def _scores(weights: list[torch.Tensor], sizes: list[tuple[int, int]], measure: str) -> list[float]:
    """Stable ranks of 1x1 conv weights (C_out, C_in, 1, 1): of the operator on a ``sizes[k]``
    input, or of the C_out x C_in matrix.  One spectra call per (shape, size) group, as a 5-D stack."""
    from rankscope import spectra  # lazy: keeps this module importable on its own
    groups: dict[tuple, list[int]] = {}
    for k, (w, size) in enumerate(zip(weights, sizes)):
        groups.setdefault((tuple(w.shape), size if measure == "operator" else None), []).append(k)
    out = [0.0] * len(weights)
    with torch.no_grad():
        for (_, size), idx in groups.items():
            stack = torch.stack([weights[k].detach() for k in idx])  # (B, C_out, C_in, 1, 1)
            if measure == "matrix":
                values = spectra.matrix_stable_rank(stack)
            else:
                values = spectra.conv_stable_rank(stack, size, stride=1, dilation=1, groups=1)
            for k, value in zip(idx, values.tolist()):
                out[k] = float(value)
    return out


def stable_rank_table(net, measure: str = "operator", reduction_bug: bool = False) -> pd.DataFrame:
    """One row per (cell, edge, conv op) of a ``SearchNetwork``; columns ``TABLE_COLUMNS``.

    ``resolution`` is the side length of the square input the last conv is scored at; with
    ``reduction_bug`` (the authors' code) edges leaving intermediate nodes of reduction cells are
    scored at the cell's input resolution instead of half of it (4x the operator stable rank).
    Reads the raw weights: no power-iteration state is touched (stable rank is scale-invariant).
    """
    if measure not in MEASURES:
        raise ValueError(f"measure must be one of {', '.join(MEASURES)}, got {measure!r}")
    records, sizes = list(net.last_convs()), []
    for rec in records:
        size = tuple(rec.resolution)
        if reduction_bug and rec.cell_type == "reduce" and rec.input >= 2:
            size = tuple(net.cell_resolutions[rec.cell])
        sizes.append(size)
    ranks = _scores([raw_weight(r.conv) for r in records], sizes, measure)
    rows = [(r.cell, r.cell_type, r.edge, r.input, r.node, r.op, int(size[0]), rank)
            for r, size, rank in zip(records, sizes, ranks)]
    return pd.DataFrame(rows, columns=TABLE_COLUMNS)


def average_table(table: pd.DataFrame) -> pd.DataFrame:
    """Mean stable rank over the cells of each type: one row per (cell_type, edge, op)."""
    keys = ["cell_type", "edge", "input", "node", "op"]
    # sort=False keeps the table's order (cells' edge order, primitives order within an edge).
    return table.groupby(keys, sort=False)["stable_rank"].mean().reset_index()[AVG_COLUMNS]


def _num_nodes(num_edges: int) -> int:
    """Intermediate nodes n of a cell with n(n+3)/2 edges."""
    n = 0
    while n * (n + 3) // 2 < num_edges:
        n += 1
    if n * (n + 3) // 2 != num_edges:
        raise ValueError(f"{num_edges} edges do not form a cell (n intermediate nodes have n(n+3)/2)")
    return n


def rank_matrix(avg: pd.DataFrame, cell_type: str, ops: Sequence[str]) -> np.ndarray:
    """(E, K) average stable ranks of one cell type, columns in ``ops`` order; error on gaps."""
    sub = avg[avg["cell_type"] == cell_type]
    if sub.empty:
        raise ValueError(f"the stable-rank table has no {cell_type!r} cells")
    pivot = sub.pivot_table(index="edge", columns="op", values="stable_rank", aggfunc="mean")
    num_edges = int(sub["edge"].max()) + 1
    pivot = pivot.reindex(index=range(num_edges), columns=list(ops))
    if pivot.isna().to_numpy().any():
        raise ValueError(f"the stable-rank table misses some (edge, op) pairs of {cell_type!r} cells")
    return pivot.to_numpy(dtype=float)


def _derive_cell(strength: np.ndarray, ops: Sequence[str]) -> list[tuple[str, int]]:
    """Eqs. 7-9 / 6 on an (E, K) strength matrix (higher = better): best op per edge, two best
    edges per node.  np.argmax returns the first maximum: the earlier op wins ties."""
    nodes = _num_nodes(strength.shape[0])
    best_op = strength.argmax(axis=1)  # (E,)
    best = strength.max(axis=1)  # (E,) edge strength S_ij
    cell, e = [], 0
    for j in range(nodes):
        inputs = range(j + 2)
        # Strongest first; equal strength -> lower input index first (sorted is stable).
        keep = sorted(inputs, key=lambda i: -best[e + i])[:2]
        cell += [(ops[best_op[e + i]], i) for i in keep]
        e += j + 2
    return cell


def _genotype(cells: dict[str, list[tuple[str, int]]]) -> Genotype:
    nodes = len(cells["normal"]) // 2
    concat = range(2, 2 + nodes)
    return Genotype(normal=cells["normal"], normal_concat=concat, reduce=cells["reduce"],
                    reduce_concat=concat)


def select_genotype(avg_table: pd.DataFrame, rule: str = "min",
                    primitives: Sequence[str] | None = None) -> Genotype:
    """Genotype from averaged stable ranks: per edge the op with the lowest (``rule="min"``, eq. 7)
    or highest (``"max"``, Appendix B) average; per node the two edges whose best op is best.

    ``primitives`` fixes the op order for tie-breaking (default: order of appearance in the table);
    primitives with no stable rank (pools, skip, none) are not candidates.
    """
    if rule not in RULES:
        raise ValueError(f"rule must be one of {', '.join(RULES)}, got {rule!r}")
    present = list(dict.fromkeys(avg_table["op"]))
    order = list(primitives) if primitives is not None else present
    stray = [op for op in present if op not in order]
    if stray:
        raise ValueError(f"stable-rank table has ops {stray} that are not in primitives {order}")
    ops = [op for op in order if op in present]
    sign = -1.0 if rule == "min" else 1.0
    return _genotype({t: _derive_cell(sign * rank_matrix(avg_table, t, ops), ops) for t in CELL_TYPES})


def _softmax(alpha) -> np.ndarray:
    a = alpha.detach().cpu().double().numpy() if isinstance(alpha, torch.Tensor) \
        else np.asarray(alpha, dtype=float)
    e = np.exp(a - a.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def genotype_from_alpha(alpha_normal, alpha_reduce, primitives: Sequence[str]) -> Genotype:
    """DARTS derivation (eq. 6): softmax(alpha) per edge; strongest op excluding ``none``; two
    strongest edges per node by that weight.  ``alpha_*`` are (E, K) tensors or arrays."""
    primitives = list(primitives)
    keep = [k for k, p in enumerate(primitives) if p != "none"]
    if not keep:
        raise ValueError("primitives hold only 'none': nothing to derive")
    cells = {}
    for cell_type, alpha in (("normal", alpha_normal), ("reduce", alpha_reduce)):
        w = _softmax(alpha)
        if w.ndim != 2 or w.shape[1] != len(primitives):
            raise ValueError(f"alpha_{cell_type} must be (edges, {len(primitives)}), got {w.shape}")
        cells[cell_type] = _derive_cell(w[:, keep], [primitives[k] for k in keep])
    return _genotype(cells)
