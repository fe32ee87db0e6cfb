"""The audit result: a per-layer DataFrame, a one-line summary, comparisons and text formats."""
from __future__ import annotations

import dataclasses
import json
import math
from typing import Any

import numpy as np
import pandas as pd

from rankscope.audit.metrics import COLUMNS

# Columns of the human-readable table (all columns go to csv/json).
TABLE_COLUMNS = ("name", "kind", "shape", "input_size", "stride", "groups", "sigma_max_exact",
                 "sigma_max_power", "sigma_gap_rel", "stable_rank", "stable_rank_normalized",
                 "stable_rank_matrix", "flag", "assumed")
COMPARE_KEYS = ("sigma_max_exact", "sigma_max_power", "frobenius", "stable_rank",
                "stable_rank_normalized", "stable_rank_matrix")


@dataclasses.dataclass
class AuditResult:
    """Everything one audit produced.

    ``table``: one row per conv/linear layer (columns in :data:`rankscope.audit.metrics.COLUMNS`);
    ``spectra``: layer name -> all singular values (descending), for layers computed in full;
    ``source``: what was audited; ``notes``: how it was loaded / what was assumed;
    ``full_estimate_s``: estimated seconds for ``full=True`` (None when the run was full).
    """

    table: pd.DataFrame
    spectra: dict[str, np.ndarray]
    source: str
    notes: list[str] = dataclasses.field(default_factory=list)
    backend: str = ""
    seconds: float = 0.0
    full_estimate_s: float | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """Layer count, mean/median operator stable rank, max σ, flagged count."""
        return summarize(self.table)

    def summary_line(self) -> str:
        """One line per network, e.g. for the CLI and logs."""
        return summary_line(self.source, self.summary, self.seconds, self.full_estimate_s)


def make_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """DataFrame with the fixed column order (empty tables keep the columns)."""
    return pd.DataFrame(rows, columns=list(COLUMNS))


def summarize(table: pd.DataFrame) -> dict[str, Any]:
    """Aggregate numbers over the layers whose operator stable rank is finite."""
    sr = pd.to_numeric(table["stable_rank"], errors="coerce").dropna()
    sig = pd.to_numeric(table["sigma_max_exact"], errors="coerce").dropna()
    flagged = int((table["flag"] != "ok").sum())
    assumed = int((table["assumed"].astype(str) != "").sum())
    return {
        "layers": int(len(table)),
        "conv_layers": int((table["kind"] == "conv2d").sum()),
        "linear_layers": int((table["kind"] == "linear").sum()),
        "mean_stable_rank": float(sr.mean()) if len(sr) else math.nan,
        "median_stable_rank": float(sr.median()) if len(sr) else math.nan,
        "max_sigma": float(sig.max()) if len(sig) else math.nan,
        "max_sigma_layer": str(table.loc[sig.idxmax(), "name"]) if len(sig) else "",
        "flagged": flagged,
        "layers_with_assumptions": assumed,
    }


def summary_line(source: str, s: dict[str, Any], seconds: float, estimate: float | None) -> str:
    text = (f"{source}: {s['layers']} layers ({s['conv_layers']} conv, {s['linear_layers']} linear), "
            f"stable rank mean {s['mean_stable_rank']:.4g} median {s['median_stable_rank']:.4g}, "
            f"max sigma {s['max_sigma']:.4g} ({s['max_sigma_layer'] or '-'}), "
            f"{s['flagged']} flagged")
    if s["layers_with_assumptions"]:
        text += f", {s['layers_with_assumptions']} with assumed hyper-parameters"
    text += f"; {seconds:.1f} s"
    if estimate is not None:
        text += f" (full spectra: about {_duration(estimate)} with --full)"
    return text


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def compare(a: AuditResult, b: AuditResult) -> pd.DataFrame:
    """Per-layer changes from ``a`` to ``b``, matched by layer name (outer join).

    For each key quantity q: ``q_a``, ``q_b``, ``q_delta`` (b - a) and ``q_ratio`` (b / a).
    Layers present in one checkpoint only have NaN on the other side; ``shape_changed`` marks
    layers whose weight shape differs.
    """
    keep = ["name", "kind", "shape", *COMPARE_KEYS]
    merged = a.table[keep].merge(b.table[keep], on="name", how="outer", suffixes=("_a", "_b"),
                                 sort=False)
    out = pd.DataFrame({"name": merged["name"],
                        "kind": merged["kind_a"].fillna(merged["kind_b"]),
                        "shape_changed": merged["shape_a"] != merged["shape_b"]})
    for key in COMPARE_KEYS:
        va = pd.to_numeric(merged[f"{key}_a"], errors="coerce")
        vb = pd.to_numeric(merged[f"{key}_b"], errors="coerce")
        out[f"{key}_a"], out[f"{key}_b"], out[f"{key}_delta"] = va, vb, vb - va
        out[f"{key}_ratio"] = vb / va.where(va != 0)
    return out


# --------------------------------------------------------------------------- text formats

def format_table(df: pd.DataFrame, fmt: str, *, columns: tuple[str, ...] | None = None,
                 extra: dict[str, Any] | None = None) -> str:
    """Render ``df`` as ``table`` (aligned text), ``csv``, ``json`` or ``markdown``."""
    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        records = json.loads(df.to_json(orient="records", double_precision=10))
        return json.dumps({**(extra or {}), "layers": records}, indent=2) + "\n"
    view = df[[c for c in (columns or df.columns) if c in df.columns]]
    cells = [[_cell(v) for v in row] for row in view.itertuples(index=False)]
    if fmt == "markdown":
        return _markdown(list(view.columns), cells)
    if fmt == "table":
        return _aligned(list(view.columns), cells)
    raise ValueError(f"unknown format {fmt!r}; choose table, csv, json or markdown")


def _cell(v: Any) -> str:
    if isinstance(v, (bool, np.bool_)):
        return "yes" if v else ""
    if isinstance(v, (float, np.floating)):
        return "" if math.isnan(v) else f"{v:.4g}"
    return str(v)


def _aligned(header: list[str], rows: list[list[str]]) -> str:
    widths = [max([len(h)] + [len(r[i]) for r in rows]) for i, h in enumerate(header)]
    numeric = [all(_is_num(r[i]) for r in rows) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.rjust(w) if num else c.ljust(w)
                         for c, w, num in zip(cells, widths, numeric)).rstrip()

    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows]) + "\n"


def _is_num(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return text == ""
    return True


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    esc = [[c.replace("|", "\\|") for c in r] for r in rows]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in esc]
    return "\n".join(lines) + "\n"
