"""Table 1 and Figure 3: MSR-DARTS against DARTS under the same conditions (the toy experiment).

Per seed: an MSR search and a DARTS search on the same data with the same supernet (cells,
channels, the O_MSR op space as in Table 1) and the same number of epochs; each method keeps its
own recipe otherwise (split 4:1 vs 1:1, batch, spectral normalisation; see studies/common.py).
Both genotypes are trained with the same training config and seed. Outputs in ``out_dir``:
``msr_vs_darts.csv`` (one row per seed and method), ``table1.csv`` (mean/std over seeds: test
error, search cost in device-days, params), ``figure3_test_curves.png`` (Figure 3),
``msr_vs_darts_cells.png`` (the first seed's cells) and ``darts_alpha_vs_rank.png`` (edges where DARTS's α genotype and the minimum stable-rank
genotype of the same supernet differ, per epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from rankscope.errors import ConfigError
from rankscope.genotype import load_genotype
from rankscope.plots import plot_cells, plot_rule_disagreement, plot_test_curves
from studies.common import (Echo, ensure_search, ensure_train, prepare_out, read_jsonl, read_metrics,
                            save, search_config, summary_row, test_start_epoch, train_config,
                            write_table)

METHODS = {"msr": "MSR-DARTS", "darts": "DARTS"}
RESULT_COLUMNS = ["seed", "method", "label", "test_top1_err", "test_top5_err", "test_loss",
                  "best_test_top1_err", "params_m", "multiply_adds_m", "device_hours",
                  "search_device_hours", "search_device_days", "search_device", "chosen_epoch",
                  "genotype_text", "run_dir"]


def darts_available() -> bool:
    """Whether this installation has the DARTS search method."""
    import importlib.util

    return importlib.util.find_spec("rankscope.search.darts") is not None


def run_msr_vs_darts(out_dir: str | Path, *, scale: str = "quick", seeds: Iterable[int] = (0,),
                     search_overrides: dict | None = None, darts_overrides: dict | None = None,
                     train_overrides: dict | None = None, echo: Echo = print) -> pd.DataFrame:
    """Both searches and both trainings per seed, the table and the figures; returns results.

    ``search_overrides`` apply to both searches, ``darts_overrides`` to the DARTS search only
    (e.g. ``{"space": "darts"}`` for the full eight-op space, ``{"order": "first"}``).
    """
    if not darts_available():
        raise ConfigError("the DARTS search method (rankscope/search/darts.py) is not installed")
    out, seeds = prepare_out(out_dir, seeds)
    rows, curves = [], {label: [] for label in METHODS.values()}
    for seed in seeds:
        for method, label in METHODS.items():
            extra = {**(search_overrides or {}), **((darts_overrides or {}) if method == "darts" else {})}
            search_dir = out / f"search-{method}-s{seed}"
            found = ensure_search(search_config(scale, method, seed, extra), search_dir, echo)
            run_dir = out / f"train-{method}-s{seed}"
            cfg = train_config(scale, str(search_dir / "genotype.json"), seed, train_overrides)
            trained = ensure_train(cfg, run_dir, echo)
            rows.append({"seed": seed, "method": method, "label": label, **summary_row(trained),
                         "search_device_hours": found["device_hours"],
                         "search_device_days": found["device_days"],
                         "search_device": found.get("device_name") or found.get("device"),
                         "chosen_epoch": found["chosen_epoch"],
                         "genotype_text": found["genotype_text"], "run_dir": run_dir.name})
            curves[label].append(read_metrics(run_dir, seed=seed))
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    write_table(results, out / "msr_vs_darts.csv", echo)
    write_table(table1(results), out / "table1.csv", echo)
    _figures(out, seeds[0], curves, echo)
    return results


def table1(results: pd.DataFrame) -> pd.DataFrame:
    """Table 1: test error (%), search cost (device-days) and parameters (M) per method."""
    g = results.groupby(["method", "label"], sort=False)
    table = g.agg(seeds=("seed", "count"), test_err=("test_top1_err", "mean"),
                  test_err_std=("test_top1_err", "std"), search_cost_days=("search_device_days", "mean"),
                  search_cost_hours=("search_device_hours", "mean"), params_m=("params_m", "mean"))
    return table.reset_index()


def _figures(out: Path, seed: int, curves: dict, echo: Echo) -> None:
    runs = {label: pd.concat(frames, ignore_index=True) for label, frames in curves.items()}
    epochs = int(max(df["epoch"].max() for df in runs.values()))
    save(plot_test_curves(runs, start_epoch=test_start_epoch(epochs)),
         out / "figure3_test_curves.png", echo)
    genos = {f"{label} (seed {seed})": load_genotype(str(out / f"search-{m}-s{seed}"))
             for m, label in METHODS.items()}
    save(plot_cells(genos), out / "msr_vs_darts_cells.png", echo)
    records = read_jsonl(out / f"search-darts-s{seed}" / "genotypes.jsonl")
    if records and "genotype_rank_min" in records[0]:
        save(plot_rule_disagreement(records, ("genotype", "genotype_rank_min")),
             out / "darts_alpha_vs_rank.png", echo)
