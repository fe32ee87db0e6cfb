"""Figure 4 and Section 4.5: diagrams, depth and width of the cells of any genotypes.

Depth and width follow Shu et al. (the paper's [31]): the depth of a cell is the number of
connections on the longest path from an input node to the output node; the width is the sum over
intermediate nodes of the share of their incoming edges that come from the cell's input nodes. The
paper reports DARTS V2's normal cell at depth 3, width 3.5 and MSR-DARTS's at depth 4, width 2.5.

Outputs in ``out_dir``: ``cells-<name>.png`` per genotype (normal and reduction cell),
``figure4.png`` (all genotypes, one row each) and ``cells.csv`` (one row per genotype and cell
type: depth, width, inputs used, op counts, DARTS text).
"""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path
from typing import Iterable

import pandas as pd

from rankscope.genotype import Genotype, load_genotype
from rankscope.plots import plot_cells
from studies.common import Echo, save, write_table

DEFAULT_GENOTYPES = ("msr-darts", "darts-v2")
LABELS = {"msr-darts": "MSR-DARTS", "darts-v2": "DARTS (V2)", "darts-v1": "DARTS (V1)"}
RESULT_COLUMNS = ["genotype", "label", "cell_type", "depth", "width", "input_edges", "ops",
                  "genotype_text"]


def cell_depth(genotype: Genotype, cell_type: str) -> int:
    """Connections on the longest path from an input node to the output node (concat counts one)."""
    cell = _cell(genotype, cell_type)
    depth = {0: 0, 1: 0}
    for node in range(len(cell) // 2):
        depth[node + 2] = 1 + max(depth[src] for _, src in cell[2 * node:2 * node + 2])
    concat = genotype.normal_concat if cell_type == "normal" else genotype.reduce_concat
    return 1 + max(depth[n] for n in concat)


def cell_width(genotype: Genotype, cell_type: str) -> float:
    """Sum over intermediate nodes of the share of their incoming edges from the input nodes."""
    cell = _cell(genotype, cell_type)
    return sum(src in (0, 1) for _, src in cell) / 2.0


def _cell(genotype: Genotype, cell_type: str):
    if cell_type not in ("normal", "reduce"):
        raise ValueError(f"cell_type must be normal or reduce, got {cell_type!r}")
    return genotype.normal if cell_type == "normal" else genotype.reduce


def cell_rows(name: str, genotype: Genotype, label: str | None = None) -> list[dict]:
    """The results rows of one genotype (one per cell type)."""
    rows = []
    for cell_type in ("normal", "reduce"):
        cell = _cell(genotype, cell_type)
        ops = Counter(op for op, _ in cell)
        rows.append({"genotype": name, "label": label or LABELS.get(name, name),
                     "cell_type": cell_type, "depth": cell_depth(genotype, cell_type),
                     "width": cell_width(genotype, cell_type),
                     "input_edges": sum(src in (0, 1) for _, src in cell),
                     "ops": ", ".join(f"{op}×{n}" for op, n in sorted(ops.items())),
                     "genotype_text": genotype.to_darts_text()})
    return rows


def slug(name: str) -> str:
    """A file-name-safe version of a genotype spec (a path keeps its last two parts)."""
    if "/" in name or "\\" in name:
        name = "-".join(Path(name).parts[-2:])
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_.") or "genotype"


def run_cells(out_dir: str | Path, *, genotypes: Iterable[str] = DEFAULT_GENOTYPES,
              labels: dict[str, str] | None = None, echo: Echo = print) -> pd.DataFrame:
    """Diagrams and depth/width of each genotype (a published name, a genotype file or a search
    run directory); returns the results table."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    names = list(genotypes)
    if not names:
        raise ValueError("at least one genotype is needed")
    loaded = {name: load_genotype(name) for name in names}
    label_of = {n: (labels or {}).get(n) or LABELS.get(n, slug(n)) for n in names}
    rows = []
    for name, g in loaded.items():
        rows.extend(cell_rows(name, g, label_of[name]))
        save(plot_cells({label_of[name]: g}), out / f"cells-{slug(name)}.png", echo)
    save(plot_cells({label_of[n]: g for n, g in loaded.items()}), out / "figure4.png", echo)
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    write_table(results, out / "cells.csv", echo)
    return results
