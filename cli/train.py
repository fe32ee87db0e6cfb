"""``rankscope train``: an evaluation network from a genotype, on one device or under torchrun."""
from __future__ import annotations

import time

import click

from cli.options import config_options, overrides, run_options
from rankscope.train.config import PRESETS, TrainConfig


@click.command()
@click.option("--preset", type=click.Choice(sorted(PRESETS)), default="quick", show_default=True,
              help="Base settings: quick (CPU, minutes, digits), cifar-paper, cifar-toy (8 cells), "
                   "imagenet-paper (see docs/train.md).")
@run_options("train")
@config_options(TrainConfig)
def train(preset: str, config_file: str | None, out: str | None, resume_dir: str | None, **kwargs) -> None:
    """Train a cell architecture from scratch; writes config.json, metrics.csv, checkpoint.pt,
    best.pt and summary.json to the run directory. Run it under `torchrun --nproc_per_node N`
    for DDP on N devices (docs/train.md)."""
    from rankscope.train.config import resolve_config
    from rankscope.train.runner import run_train

    if resume_dir:
        run_train(None, resume_dir, resume=True, echo=click.echo)
        return
    cfg = resolve_config(preset, config_file, overrides(TrainConfig, kwargs))
    # Under torchrun every rank must agree on the directory: a default stamped per process could
    # differ by a second between ranks, so distributed runs must name it.
    out = out or _default_out()
    run_train(cfg, out, echo=click.echo)


def _default_out() -> str:
    import os

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise click.UsageError("distributed runs need an explicit --out (the same on every node)")
    return f"runs/train-{time.strftime('%Y%m%d-%H%M%S')}"
