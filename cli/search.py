"""``rankscope search``: MSR-DARTS (or the DARTS baseline) into a run directory."""
from __future__ import annotations

import time

import click

from cli.options import config_options, overrides, run_options
from rankscope.search.config import PRESETS, SearchConfig


@click.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="quick", show_default=True,
              help="Base settings: quick (CPU, minutes, embedded digits), paper (MSR-DARTS on CIFAR-10, "
                   "a GPU job), darts-quick, darts-paper (the DARTS baseline); see docs/search.md.")
@run_options("search")
@config_options(SearchConfig)
def search(preset: str, config_file: str | None, out: str | None, resume_dir: str | None, **kwargs) -> None:
    """Search a cell architecture; writes config.json, metrics.csv, stable_ranks.csv,
    genotypes.jsonl, checkpoint.pt, genotype.json and summary.json to the run directory."""
    from rankscope.search.config import resolve_config
    from rankscope.search.runner import run_search

    if resume_dir:
        run_search(None, resume_dir, resume=True, echo=click.echo)
        return
    cfg = resolve_config(preset, config_file, overrides(SearchConfig, kwargs))
    out = out or f"runs/search-{time.strftime('%Y%m%d-%H%M%S')}"
    run_search(cfg, out, echo=click.echo)
