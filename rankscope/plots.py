"""Figures of the paper from run-directory tables: each function returns a matplotlib Figure.

Figures are built on matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
they work headless and in threads. Save one with ``save_figure(fig, path)``.

* ``plot_search_curves``         Figure 2: validation loss during the search, chosen epoch marked.
* ``plot_stable_rank_evolution`` average stable rank of each candidate op over the search epochs.
* ``plot_cell`` / ``plot_cells`` Figure 4: cell diagrams (matplotlib only, no graphviz).
* ``plot_test_curves``           Figures 3 and 5: test error and test loss during training.
* ``plot_rule_disagreement``     per epoch, edges on which two genotype rules disagree.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Mapping, Sequence

import numpy as np
import pandas as pd

from rankscope.genotype import Genotype, from_dict

if TYPE_CHECKING:  # matplotlib is imported only when a figure is drawn
    from matplotlib.figure import Figure

# The paper's colours: MSR-DARTS orange solid, DARTS green dotted, maximum stable rank purple dotted.
STYLES: dict[str, dict] = {
    "MSR-DARTS": dict(color="tab:orange", linestyle="-"),
    "DARTS": dict(color="tab:green", linestyle=":"),
    "max stable rank": dict(color="tab:purple", linestyle=":"),
}
_CYCLE = ("tab:blue", "tab:red", "tab:brown", "tab:pink", "tab:gray", "tab:olive", "tab:cyan")
OP_COLORS: dict[str, str] = {
    "sep_conv_3x3": "tab:blue", "sep_conv_5x5": "tab:orange", "dil_conv_3x3": "tab:green",
    "dil_conv_5x5": "tab:red", "max_pool_3x3": "tab:purple", "avg_pool_3x3": "tab:brown",
    "skip_connect": "tab:gray", "none": "tab:olive",
}


def new_figure(width: float, height: float, ncols: int = 1, nrows: int = 1):
    """A Figure on an Agg canvas and its axes (a flat list)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False)
    return fig, [ax for row in axes for ax in row]


def save_figure(fig, path: str | Path, dpi: int = 150) -> Path:
    """Write ``fig`` as PNG (or the format the suffix names); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi)
    return path


def style_for(label: str, index: int) -> dict:
    """Line style of a series: the paper's for its known labels, else a colour cycle."""
    return dict(STYLES.get(label, dict(color=_CYCLE[index % len(_CYCLE)], linestyle="-")))


# ---------------------------------------------------------------------------------------- search


def plot_search_curves(metrics_df: pd.DataFrame, chosen_epoch: int | None = None,
                       title: str = "Search: validation loss") -> "Figure":
    """Figure 2: validation (and training) loss per search epoch; the chosen epoch is marked.

    ``chosen_epoch`` defaults to the first epoch of minimum validation loss (the paper's rule).
    """
    df = metrics_df.sort_values("epoch")
    if chosen_epoch is None:
        chosen_epoch = int(df.loc[df["val_loss"].idxmin(), "epoch"])
    fig, (ax,) = new_figure(6.0, 3.8)
    ax.plot(df["epoch"], df["val_loss"], "o-", color="tab:orange", ms=3, label="validation loss")
    if "train_loss" in df:
        ax.plot(df["epoch"], df["train_loss"], "--", color="tab:gray", lw=1, label="training loss")
    chosen = df[df["epoch"] == chosen_epoch]
    ax.axvline(chosen_epoch, color="tab:red", lw=0.8, ls=":")
    ax.plot(chosen["epoch"], chosen["val_loss"], "*", color="tab:red", ms=12,
            label=f"chosen epoch {chosen_epoch}")
    ax.set(xlabel="epoch", ylabel="cross-entropy loss", title=title)
    ax.grid(alpha=0.3)
    integer_epochs(ax)
    ax.legend(frameon=False)
    return fig


def average_op_ranks(stable_ranks_df: pd.DataFrame, cell_type: str) -> pd.DataFrame:
    """Mean stable rank of each op per epoch over all edges of all cells of ``cell_type``.

    Returns a frame indexed by epoch with one column per op.
    """
    df = stable_ranks_df[stable_ranks_df["cell_type"] == cell_type]
    if df.empty:
        raise ValueError(f"no stable ranks of cell type {cell_type!r}")
    return df.groupby(["epoch", "op"])["stable_rank"].mean().unstack("op").sort_index()


def plot_stable_rank_evolution(stable_ranks_df: pd.DataFrame, cell_type: str) -> "Figure":
    """Average stable rank of each candidate op over the search epochs (one cell type).

    Left: the mean over all edges and cells of the type. Right: on how many of the 14 edges each op
    has the lowest cell-averaged stable rank (the op the minimum rule keeps, eq. 7).
    """
    means = average_op_ranks(stable_ranks_df, cell_type)
    wins = min_rank_wins(stable_ranks_df, cell_type).reindex(columns=means.columns, fill_value=0)
    fig, (ax, ax2) = new_figure(10.0, 3.8, ncols=2)
    colors = [OP_COLORS.get(op) for op in means.columns]
    for op, color in zip(means.columns, colors):
        ax.plot(means.index, means[op], "o-", ms=3, color=color, label=op)
    ax2.stackplot(wins.index, wins.T.to_numpy(), colors=colors, labels=list(wins.columns), alpha=0.8)
    ax.set(xlabel="epoch", ylabel="mean stable rank", title=f"{cell_type} cells: stable rank per op")
    ax2.set(xlabel="epoch", ylabel="edges (stacked)",
            title=f"{cell_type} cells: edges where the op ranks lowest")
    ax2.set_ylim(0, wins.sum(axis=1).max())
    for a in (ax, ax2):
        a.grid(alpha=0.3)
        integer_epochs(a)
    ax.legend(frameon=False, fontsize=8)
    return fig


def integer_epochs(ax) -> None:
    """Whole-number ticks on the epoch axis."""
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def min_rank_wins(stable_ranks_df: pd.DataFrame, cell_type: str) -> pd.DataFrame:
    """Per epoch, on how many edges each op has the lowest stable rank averaged over the cells."""
    df = stable_ranks_df[stable_ranks_df["cell_type"] == cell_type]
    avg = df.groupby(["epoch", "edge", "op"])["stable_rank"].mean().reset_index()
    best = avg.loc[avg.groupby(["epoch", "edge"])["stable_rank"].idxmin()]
    return best.groupby(["epoch", "op"]).size().unstack("op", fill_value=0).sort_index()


# ---------------------------------------------------------------------------------------- cells

INPUT_NAMES = ("c_{k-2}", "c_{k-1}")


def _cell_edges(genotype: Genotype, cell_type: str) -> list[tuple[str, int, int]]:
    """(op, source node, target node) with node ids: 0, 1 = inputs, 2..5 = intermediate nodes."""
    if cell_type not in ("normal", "reduce"):
        raise ValueError(f"cell_type must be normal or reduce, got {cell_type!r}")
    cell = genotype.normal if cell_type == "normal" else genotype.reduce
    return [(op, src, 2 + i // 2) for i, (op, src) in enumerate(cell)]


def _depths(edges: list[tuple[str, int, int]]) -> dict[int, int]:
    """Longest path (in edges) from the cell inputs to each node; inputs have depth 0."""
    depth = {0: 0, 1: 0}
    for node in sorted({dst for _, _, dst in edges}):
        depth[node] = 1 + max(depth.get(src, 0) for _, src, dst in edges if dst == node)
    return depth


def _node_positions(edges: list[tuple[str, int, int]]) -> dict[int, tuple[float, float]]:
    """Layered layout: one column per depth (inputs left, the output c_k right); nodes within a
    column ordered by the mean height of their inputs to limit crossings."""
    depth = _depths(edges)
    pos = {0: (0.0, 1.5), 1: (0.0, -1.5)}
    n_cols = max(depth.values())
    for col in range(1, n_cols + 1):
        nodes = [n for n, d in depth.items() if d == col]
        bary = {n: np.mean([pos[s][1] for _, s, d in edges if d == n]) for n in nodes}
        nodes.sort(key=lambda n: (-bary[n], n))
        for k, n in enumerate(nodes):
            pos[n] = (COL_DX * col, 1.9 * ((len(nodes) - 1) / 2 - k))
    pos[-1] = (COL_DX * (n_cols + 1), 0.0)
    return pos


COL_DX = 3.0  # horizontal distance between the columns of the cell diagram


def _node_label(node: int) -> str:
    if node in (0, 1):
        return f"${INPUT_NAMES[node]}$"
    return "$c_{k}$" if node == -1 else str(node - 2)


def _draw_node(ax, xy: tuple[float, float], label: str, color: str) -> None:
    ax.text(*xy, label, ha="center", va="center", fontsize=11, zorder=4,
            bbox=dict(boxstyle="round,pad=0.35", fc=color, ec="black", lw=0.8))


def _arrow(ax, a, b, rad: float, color: str, lw: float) -> None:
    from matplotlib.patches import FancyArrowPatch

    ax.add_patch(FancyArrowPatch(a, b, connectionstyle=f"arc3,rad={rad}", arrowstyle="-|>",
                                 mutation_scale=12, color=color, lw=lw, shrinkA=15, shrinkB=15,
                                 zorder=2))


def _bezier(a, b, rad: float, t: float) -> np.ndarray:
    """Point ``t`` of matplotlib's arc3 quadratic Bezier from a to b (axes of equal aspect)."""
    a, b = np.asarray(a, float), np.asarray(b, float)
    d = b - a
    ctrl = (a + b) / 2 + rad * np.array([d[1], -d[0]])
    return (1 - t) ** 2 * a + 2 * t * (1 - t) * ctrl + t ** 2 * b


def _clearance(points: np.ndarray, obstacles: list) -> float:
    if not obstacles:
        return math.inf
    obs = np.asarray(obstacles, float)
    return float(np.min(np.linalg.norm(points[:, None, :] - obs[None, :, :], axis=-1)))


def _edge_rad(a, b, others: list, taken: set) -> float:
    """The least bend that keeps the edge clear of other nodes and of edges already drawn."""
    ts = np.linspace(0.1, 0.9, 17)
    for rad in (0.0, 0.2, -0.2, 0.35, -0.35, 0.5, -0.5):
        pts = np.stack([_bezier(a, b, rad, t) for t in ts])
        if round(rad, 2) not in taken and _clearance(pts, others) > 0.55:
            return rad
    return 0.3 + 0.1 * len(taken)


def _label_spot(a, b, rad: float, placed: list, nodes: list) -> np.ndarray:
    """A point on the edge for its label, away from labels already placed and from nodes."""
    best, best_gap = _bezier(a, b, rad, 0.7), -1.0
    for t in (0.7, 0.6, 0.78, 0.5, 0.4):
        p = _bezier(a, b, rad, t)
        gap = min(_clearance(p[None], placed) / 1.1, _clearance(p[None], nodes) / 1.35)
        if gap >= 1.0:
            return p
        if gap > best_gap:
            best, best_gap = p, gap
    return best


def _label_angle(a, b) -> float:
    """Text angle along the chord a->b (the Bezier's tangent at t=0.5), kept readable."""
    ang = math.degrees(math.atan2(b[1] - a[1], b[0] - a[0]))
    return ang - 180 if ang > 90 else ang + 180 if ang < -90 else ang


def draw_cell(ax, genotype: Genotype, cell_type: str, title: str | None = None) -> None:
    """Draw one cell of ``genotype`` into ``ax``: nodes, op-labelled edges, concat to c_k."""
    edges = _cell_edges(genotype, cell_type)
    concat = genotype.normal_concat if cell_type == "normal" else genotype.reduce_concat
    pos = _node_positions(edges)
    rads: dict[tuple[int, int], set] = {}
    placed: list = []
    for op, src, dst in edges:
        a, b = pos[src], pos[dst]
        others = [xy for n, xy in pos.items() if n not in (src, dst)]
        rad = _edge_rad(a, b, others, rads.setdefault((src, dst), set()))
        rads[(src, dst)].add(round(rad, 2))
        color = OP_COLORS.get(op, "black")
        _arrow(ax, a, b, rad, color, 1.6)
        spot = _label_spot(a, b, rad, placed, list(pos.values()))
        placed.append(spot)
        ax.text(*spot, op, ha="center", va="center", fontsize=7.5, color=color, zorder=3,
                rotation=_label_angle(a, b), rotation_mode="anchor",
                bbox=dict(boxstyle="round,pad=0.12", fc="white", ec="none", alpha=0.9))
    for node in concat:  # the output c_k concatenates these nodes
        others = [xy for n, xy in pos.items() if n not in (node, -1)]
        _arrow(ax, pos[node], pos[-1], _edge_rad(pos[node], pos[-1], others, set()), "0.6", 0.9)
    for node, xy in pos.items():
        color = "lightseagreen" if node in (0, 1) else ("khaki" if node == -1 else "lightblue")
        _draw_node(ax, xy, _node_label(node), color)
    ax.set_xlim(-0.8, pos[-1][0] + 0.8)
    ax.set_ylim(-3.2, 3.2)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title(title or f"{cell_type} cell", fontsize=11)


def plot_cell(genotype: Genotype | dict, cell_type: str, title: str | None = None) -> "Figure":
    """Figure 4 style diagram of the ``normal`` or ``reduce`` cell of ``genotype``."""
    g = from_dict(genotype) if isinstance(genotype, dict) else genotype
    fig, (ax,) = new_figure(8.0, 3.6)
    draw_cell(ax, g, cell_type, title)
    return fig


def plot_cells(genotypes: Mapping[str, Genotype | dict]) -> "Figure":
    """A grid like Figure 4: one row per named genotype, normal cell left, reduction cell right."""
    if not genotypes:
        raise ValueError("plot_cells needs at least one genotype")
    fig, axes = new_figure(15.0, 3.4 * len(genotypes), ncols=2, nrows=len(genotypes))
    for row, (name, g) in enumerate(genotypes.items()):
        g = from_dict(g) if isinstance(g, dict) else g
        for col, cell_type in enumerate(("normal", "reduce")):
            draw_cell(axes[2 * row + col], g, cell_type, f"{name}: {cell_type} cell")
    return fig


# ---------------------------------------------------------------------------------------- training


def _series(df: pd.DataFrame, column: str) -> pd.DataFrame:
    """Per epoch mean, min and max of ``column`` over seeds (rows without a test pass dropped)."""
    df = df.dropna(subset=[column])
    return df.groupby("epoch")[column].agg(["mean", "min", "max"]).sort_index()


def plot_test_curves(runs: Mapping[str, pd.DataFrame], start_epoch: int = 1) -> "Figure":
    """Figures 3 and 5: test top-1 error (left) and test loss (right) per training epoch.

    ``runs`` maps a label to a train ``metrics.csv`` frame; a frame with several seeds (a ``seed``
    column, or repeated epochs) is drawn as the mean with a min-max band. Epochs before
    ``start_epoch`` are left out (the paper plots from epoch 300 of 600).
    """
    if not runs:
        raise ValueError("plot_test_curves needs at least one run")
    fig, (ax_err, ax_loss) = new_figure(10.0, 3.8, ncols=2)
    for i, (label, df) in enumerate(runs.items()):
        df = df[df["epoch"] >= start_epoch]
        style = style_for(label, i)
        for ax, column in ((ax_err, "test_top1_err"), (ax_loss, "test_loss")):
            s = _series(df, column)
            ax.plot(s.index, s["mean"], lw=1.6, label=label, **style)
            if (s["max"] > s["min"]).any():
                ax.fill_between(s.index, s["min"], s["max"], color=style["color"], alpha=0.15, lw=0)
    ax_err.set(xlabel="epoch", ylabel="test error (%)", title="Test error")
    ax_loss.set(xlabel="epoch", ylabel="test loss", title="Test loss")
    for ax in (ax_err, ax_loss):
        ax.grid(alpha=0.3)
        integer_epochs(ax)
    ax_err.legend(frameon=False)
    return fig


# ---------------------------------------------------------------------------------------- rules


def edges_differ(a: Genotype | dict, b: Genotype | dict, cell_type: str) -> int:
    """How many of the 8 edges of ``a``'s cell (op, input, node) are not in ``b``'s cell."""
    ga = from_dict(a) if isinstance(a, dict) else a
    gb = from_dict(b) if isinstance(b, dict) else b
    ea, eb = set(_cell_edges(ga, cell_type)), set(_cell_edges(gb, cell_type))
    return len(ea - eb)


def default_rules(record: dict) -> tuple[str, str]:
    """α vs minimum stable rank for a DARTS record, else minimum vs maximum stable rank."""
    if "genotype_rank_min" in record:
        return "genotype", "genotype_rank_min"
    return "genotype_min", "genotype_max"


def rule_disagreement(records: Sequence[dict], rules: tuple[str, str] | None = None) -> pd.DataFrame:
    """Per epoch of ``genotypes.jsonl`` records: edges that differ between two rules, per cell type."""
    if not records:
        raise ValueError("no genotype records")
    rules = rules or default_rules(records[0])
    rows = []
    for i, rec in enumerate(records):
        a, b = rec[rules[0]], rec[rules[1]]
        rows.append({"epoch": rec.get("epoch", i + 1),
                     "normal": edges_differ(a, b, "normal"), "reduce": edges_differ(a, b, "reduce")})
    return pd.DataFrame(rows)


def plot_rule_disagreement(genotypes_records: Sequence[dict],
                           rules: tuple[str, str] | None = None) -> "Figure":
    """Per search epoch, how many of the 8 edges of each cell differ between two genotype rules
    (default: min vs max stable rank; for DARTS records, α vs min stable rank)."""
    rules = rules or default_rules(genotypes_records[0])
    table = rule_disagreement(genotypes_records, rules)
    fig, (ax,) = new_figure(6.0, 3.6)
    ax.plot(table["epoch"], table["normal"], "o-", color="tab:blue", ms=4, label="normal cell")
    ax.plot(table["epoch"], table["reduce"], "s--", color="tab:red", ms=4, label="reduction cell")
    ax.set_ylim(-0.3, 8.3)
    ax.set_yticks(range(0, 9, 2))
    integer_epochs(ax)
    names = " vs ".join(r.removeprefix("genotype_").replace("genotype", "alpha") for r in rules)
    ax.set(xlabel="epoch", ylabel="edges that differ (of 8)", title=f"Genotype rules: {names}")
    ax.grid(alpha=0.3)
    ax.legend(frameon=False)
    return fig

