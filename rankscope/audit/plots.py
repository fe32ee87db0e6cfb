"""Figures of an audit (matplotlib's object API, no pyplot state, no display needed).

* :func:`plot_layers`: per-layer operator stable rank and σ_max bars (exact circular and power);
* :func:`plot_spectra`: singular-value spectra σ_i/σ_1 of selected layers;
* :func:`plot_comparison`: per-layer ratios B/A of stable rank and σ_max between two checkpoints.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

_DPI = 120


def _width(n: int) -> float:
    return min(40.0, max(6.0, 0.18 * n + 2))


def _label_layers(ax, names: list[str]) -> None:
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels(names, rotation=90, fontsize=6 if len(names) > 40 else 8)
    ax.set_xlim(-0.6, len(names) - 0.4)


def plot_layers(table: pd.DataFrame, path: str | Path, title: str = "") -> Path:
    """Two panels over the layers: operator stable rank (log scale) and σ_max."""
    names = table["name"].astype(str).tolist()
    x = np.arange(len(names))
    fig = Figure(figsize=(_width(len(names)), 7), dpi=_DPI)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    sr = pd.to_numeric(table["stable_rank"], errors="coerce").to_numpy()
    ax1.bar(x, np.where(np.isfinite(sr) & (sr > 0), sr, np.nan), color="tab:blue")
    ax1.set_yscale("log")
    ax1.set_ylabel("stable rank (operator)")
    exact = pd.to_numeric(table["sigma_max_exact"], errors="coerce").to_numpy()
    power = pd.to_numeric(table["sigma_max_power"], errors="coerce").to_numpy()
    ax2.bar(x - 0.2, exact, width=0.4, label="exact, circular padding", color="tab:orange")
    ax2.bar(x + 0.2, power, width=0.4, label="power iteration, zero padding", color="tab:green")
    ax2.set_ylabel("σ_max")
    ax2.legend(fontsize=8)
    _mark_flagged(ax1, table)
    _label_layers(ax2, names)
    ax1.set_title(title or "per-layer stable rank and σ_max")
    fig.tight_layout()
    return _save(fig, path)


def _mark_flagged(ax, table: pd.DataFrame) -> None:
    for i, flag in enumerate(table["flag"].astype(str)):
        if flag != "ok":
            ax.axvspan(i - 0.5, i + 0.5, color="red", alpha=0.15)
            ax.text(i, 1.0, flag, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=6, color="red")


def plot_spectra(spectra: dict[str, np.ndarray], path: str | Path, title: str = "") -> Path:
    """σ_i / σ_1 against i / N (log y) for each layer given; flat curves mean high stable rank."""
    fig = Figure(figsize=(7, 5), dpi=_DPI)
    ax = fig.subplots()
    for name, values in spectra.items():
        values = np.asarray(values, dtype=float)
        if values.size == 0 or not np.isfinite(values).all() or values[0] <= 0:
            continue
        frac = (np.arange(values.size) + 0.5) / values.size
        ax.plot(frac, values / values[0], label=f"{name} (N={values.size})", linewidth=1.2)
    ax.set_yscale("log")
    ax.set_xlabel("i / N (singular value index, descending)")
    ax.set_ylabel("σ_i / σ_1")
    ax.set_title(title or "singular-value spectra (circular operator)")
    if ax.lines:
        ax.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def plot_comparison(cmp: pd.DataFrame, path: str | Path, labels: tuple[str, str] = ("A", "B")) -> Path:
    """Per-layer ratio B/A of the operator stable rank and of σ_max (1 = unchanged)."""
    names = cmp["name"].astype(str).tolist()
    x = np.arange(len(names))
    fig = Figure(figsize=(_width(len(names)), 7), dpi=_DPI)
    ax1, ax2 = fig.subplots(2, 1, sharex=True)
    for ax, key, color in ((ax1, "stable_rank", "tab:blue"), (ax2, "sigma_max_exact", "tab:orange")):
        ratio = pd.to_numeric(cmp[f"{key}_ratio"], errors="coerce").to_numpy()
        ax.bar(x, ratio - 1.0, bottom=1.0, color=color)
        ax.axhline(1.0, color="black", linewidth=0.8)
        ax.set_ylabel(f"{key} {labels[1]}/{labels[0]}")
    _label_layers(ax2, names)
    ax1.set_title(f"per-layer change from {labels[0]} to {labels[1]}")
    fig.tight_layout()
    return _save(fig, path)


def _save(fig: Figure, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    return path
