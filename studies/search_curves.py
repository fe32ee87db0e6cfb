"""Figure 2 and the search's inside view: validation loss, stable ranks, the chosen cells.

Per seed one MSR search (``search-msr-s<seed>``). Outputs in ``out_dir``, per seed (suffix
``-s<seed>``): ``figure2_val_loss`` (Figure 2: validation loss per epoch, chosen epoch marked),
``stable_ranks_normal`` and ``stable_ranks_reduce`` (mean stable rank per op per epoch, and on
how many edges each op is the minimum), ``search_cells`` (the chosen genotype, Figure 4 style) and
``search_disagreement`` (edges where the min and max stable-rank genotypes differ) as PNG; and
``search_curves.csv``: one row per seed and epoch (losses, accuracy, chosen flag, edges where min and max
differ, edges of the minimum genotype that changed since the previous epoch).
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterable

import pandas as pd

from rankscope.plots import (edges_differ, plot_cells, plot_rule_disagreement, plot_search_curves,
                             plot_stable_rank_evolution)
from studies.common import (Echo, ensure_search, prepare_out, read_jsonl, read_metrics, save,
                            search_config, write_table)

RESULT_COLUMNS = ["seed", "epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc", "chosen",
                  "min_max_differ_normal", "min_max_differ_reduce", "min_changed_normal",
                  "min_changed_reduce"]


def run_search_curves(out_dir: str | Path, *, scale: str = "quick", seeds: Iterable[int] = (0,),
                      search_overrides: dict | None = None, echo: Echo = print) -> pd.DataFrame:
    """One MSR search per seed, then its figures; returns the per-epoch results table."""
    out, seeds = prepare_out(out_dir, seeds)
    frames = []
    for seed in seeds:
        run_dir = out / f"search-msr-s{seed}"
        summary = ensure_search(search_config(scale, "msr", seed, search_overrides), run_dir, echo)
        frames.append(epoch_table(run_dir, seed, summary["chosen_epoch"]))
        _figures(out, run_dir, seed, summary["chosen_epoch"], echo)
    results = pd.concat(frames, ignore_index=True)[RESULT_COLUMNS]
    write_table(results, out / "search_curves.csv", echo)
    return results


def epoch_table(run_dir: Path, seed: int, chosen_epoch: int) -> pd.DataFrame:
    """Per epoch of one search: metrics and how the stable-rank genotypes behave."""
    metrics = read_metrics(run_dir, seed=seed)
    records = read_jsonl(run_dir / "genotypes.jsonl")
    rows = []
    for i, rec in enumerate(records):
        prev = records[i - 1]["genotype_min"] if i else rec["genotype_min"]
        rows.append({"epoch": rec["epoch"],
                     "min_max_differ_normal": edges_differ(rec["genotype_min"], rec["genotype_max"], "normal"),
                     "min_max_differ_reduce": edges_differ(rec["genotype_min"], rec["genotype_max"], "reduce"),
                     "min_changed_normal": edges_differ(rec["genotype_min"], prev, "normal"),
                     "min_changed_reduce": edges_differ(rec["genotype_min"], prev, "reduce")})
    table = metrics.merge(pd.DataFrame(rows), on="epoch", how="left")
    return table.assign(chosen=table["epoch"] == chosen_epoch)


def _figures(out: Path, run_dir: Path, seed: int, chosen: int, echo: Echo) -> None:
    tag = f"s{seed}"
    metrics = pd.read_csv(run_dir / "metrics.csv")
    save(plot_search_curves(metrics, chosen, title=f"Search validation loss (seed {seed})"),
         out / f"figure2_val_loss-{tag}.png", echo)
    ranks = pd.read_csv(run_dir / "stable_ranks.csv")
    for cell_type in ("normal", "reduce"):
        save(plot_stable_rank_evolution(ranks, cell_type), out / f"stable_ranks_{cell_type}-{tag}.png", echo)
    records = read_jsonl(run_dir / "genotypes.jsonl")
    chosen_record = records[chosen - 1]
    save(plot_cells({f"MSR-DARTS, epoch {chosen} (seed {seed})": chosen_record["genotype"]}),
         out / f"search_cells-{tag}.png", echo)
    save(plot_rule_disagreement(records, ("genotype_min", "genotype_max")),
         out / f"search_disagreement-{tag}.png", echo)
