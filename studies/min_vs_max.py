"""Appendix B: the minimum stable-rank cell (MSR-DARTS) against the maximum stable-rank cell.

Per seed: one MSR search records both genotypes of the chosen epoch (``genotype_min.json`` and
``genotype_max.json``); both are trained with the same training config and seed. Outputs in
``out_dir``: ``min_vs_max.csv`` (one row per seed and rule), ``min_vs_max_summary.csv`` (mean/std
over seeds), ``figure5_test_curves.png`` (Figure 5), ``min_vs_max_cells.png`` (both cells of the first
seed's search) and ``min_vs_max_disagreement.png`` (edges where min and max differ, per search
epoch). Output names are unique among the studies, so several studies can share one directory and
its sub-runs.
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from rankscope.genotype import load_genotype
from rankscope.plots import (edges_differ, plot_cells, plot_rule_disagreement, plot_test_curves)
from studies.common import (Echo, ensure_search, ensure_train, prepare_out, read_jsonl, read_metrics,
                            save, search_config, summary_row, test_start_epoch, train_config,
                            write_table)

RULES = {"min": "MSR-DARTS", "max": "max stable rank"}
RESULT_COLUMNS = ["seed", "rule", "label", "test_top1_err", "test_top5_err", "test_loss",
                  "best_test_top1_err", "params_m", "multiply_adds_m", "device_hours",
                  "chosen_epoch", "edges_differ_normal", "edges_differ_reduce", "genotype_text",
                  "run_dir"]


def run_min_vs_max(out_dir: str | Path, *, scale: str = "quick", seeds: Iterable[int] = (0,),
                   search_overrides: dict | None = None, train_overrides: dict | None = None,
                   echo: Echo = print) -> pd.DataFrame:
    """Search, train both rules' genotypes per seed, write the table and figures; returns results."""
    out, seeds = prepare_out(out_dir, seeds)
    rows, curves = [], {label: [] for label in RULES.values()}
    for seed in seeds:
        search_dir = out / f"search-msr-s{seed}"
        summary = ensure_search(search_config(scale, "msr", seed, search_overrides), search_dir, echo)
        genos = {rule: load_genotype(str(search_dir / f"genotype_{rule}.json")) for rule in RULES}
        for rule, label in RULES.items():
            run_dir = out / f"train-{rule}-s{seed}"
            cfg = train_config(scale, str(search_dir / f"genotype_{rule}.json"), seed, train_overrides)
            trained = ensure_train(cfg, run_dir, echo)
            rows.append({"seed": seed, "rule": rule, "label": label, **summary_row(trained),
                         "chosen_epoch": summary["chosen_epoch"],
                         "edges_differ_normal": edges_differ(genos["min"], genos["max"], "normal"),
                         "edges_differ_reduce": edges_differ(genos["min"], genos["max"], "reduce"),
                         "genotype_text": genos[rule].to_darts_text(), "run_dir": run_dir.name})
            curves[label].append(read_metrics(run_dir, seed=seed))
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    write_table(results, out / "min_vs_max.csv", echo)
    write_table(summarize(results), out / "min_vs_max_summary.csv", echo)
    _figures(out, seeds[0], curves, echo)
    return results


def summarize(results: pd.DataFrame) -> pd.DataFrame:
    """Mean and standard deviation over seeds of the test error per rule, with the parameters."""
    g = results.groupby(["rule", "label"], sort=False)
    table = g.agg(seeds=("seed", "count"), test_top1_err_mean=("test_top1_err", "mean"),
                  test_top1_err_std=("test_top1_err", "std"), test_loss_mean=("test_loss", "mean"),
                  params_m=("params_m", "mean"))
    return table.reset_index()


def _figures(out: Path, seed: int, curves: dict, echo: Echo) -> None:
    runs = {label: pd.concat(frames, ignore_index=True) for label, frames in curves.items()}
    epochs = int(max(df["epoch"].max() for df in runs.values()))
    save(plot_test_curves(runs, start_epoch=test_start_epoch(epochs)),
         out / "figure5_test_curves.png", echo)
    search_dir = out / f"search-msr-s{seed}"
    genos = {f"{label} (seed {seed})": load_genotype(str(search_dir / f"genotype_{rule}.json"))
             for rule, label in RULES.items()}
    save(plot_cells(genos), out / "min_vs_max_cells.png", echo)
    records = read_jsonl(search_dir / "genotypes.jsonl")
    save(plot_rule_disagreement(records, ("genotype_min", "genotype_max")),
         out / "min_vs_max_disagreement.png", echo)
