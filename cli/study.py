"""``rankscope study``: the paper's comparisons and figures (runners in the ``studies`` package).

    rankscope study min-vs-max --scale quick --seeds 0,1 --out runs/study-minmax
    rankscope study msr-vs-darts --scale quick --out runs/study-darts
    rankscope study search-curves --scale quick --out runs/study-curves
    rankscope study cells --genotype msr-darts --genotype darts-v2 --out figs/
"""
from __future__ import annotations

import json
from typing import Callable

import click

SCALE_HELP = ("tiny: seconds, for tests; quick: minutes on a CPU, embedded digits; paper: the "
              "paper's toy experiment on CIFAR-10 (a GPU job)")


def parse_seeds(text: str) -> list[int]:
    """``0,1,2`` or a range ``0-4`` (inclusive)."""
    seeds: list[int] = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            lo, hi = part.split("-", 1)
            seeds.extend(range(int(lo), int(hi) + 1))
        else:
            seeds.append(int(part))
    if not seeds:
        raise click.BadParameter("give at least one seed, e.g. 0 or 0,1,2 or 0-4")
    return seeds


def settings(items: tuple[str, ...], data_dir: str | None) -> dict:
    """Overrides from KEY=VALUE items, with ``data_dir`` when given."""
    return {**({"data_dir": data_dir} if data_dir else {}), **parse_settings(items)}


def parse_settings(items: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` pairs; values parsed as JSON when possible (3, 0.5, true, null), else strings."""
    out = {}
    for item in items:
        if "=" not in item:
            raise click.BadParameter(f"expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip().replace("-", "_")] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip().replace("-", "_")] = value
    return out


def study_options(fn: Callable) -> Callable:
    """--scale, --seeds, --out, --data-dir and the --search-set overrides."""
    for deco in reversed([
        click.option("--scale", type=click.Choice(["tiny", "quick", "paper"]), default="quick",
                     show_default=True, help=SCALE_HELP),
        click.option("--seeds", default="0", show_default=True, help="Seeds, e.g. 0,1,2 or 0-4."),
        click.option("--out", required=True, type=click.Path(file_okay=False),
                     help="Study directory (rerun with the same --out to resume)."),
        click.option("--data-dir", type=click.Path(file_okay=False),
                     help="Where CIFAR-10 lives (paper scale); passed to searches and trainings."),
        click.option("--search-set", multiple=True, metavar="KEY=VALUE",
                     help="Override a search setting, e.g. data_dir=/data or epochs=10 (repeatable)."),
    ]):
        fn = deco(fn)
    return fn


train_set = click.option("--train-set", multiple=True, metavar="KEY=VALUE",
                         help="Override a training setting, e.g. epochs=20 (repeatable).")


@click.group()
def study() -> None:
    """Reproduce the paper's comparisons and figures (see docs/studies.md)."""


@study.command("min-vs-max")
@study_options
@train_set
def min_vs_max(scale, seeds, out, data_dir, search_set, train_set) -> None:
    """Appendix B: train the minimum and the maximum stable-rank cells of each search."""
    from studies.min_vs_max import run_min_vs_max, summarize

    df = run_min_vs_max(out, scale=scale, seeds=parse_seeds(seeds),
                        search_overrides=settings(search_set, data_dir),
                        train_overrides=settings(train_set, data_dir), echo=click.echo)
    click.echo(summarize(df).to_string(index=False))


@study.command("msr-vs-darts")
@study_options
@train_set
@click.option("--darts-set", multiple=True, metavar="KEY=VALUE",
              help="Override a DARTS-search setting only, e.g. space=darts or order=first.")
def msr_vs_darts(scale, seeds, out, data_dir, search_set, train_set, darts_set) -> None:
    """Table 1 / Figure 3: MSR-DARTS and DARTS searched and trained alike."""
    from studies.msr_vs_darts import run_msr_vs_darts, table1

    df = run_msr_vs_darts(out, scale=scale, seeds=parse_seeds(seeds),
                          search_overrides=settings(search_set, data_dir),
                          darts_overrides=parse_settings(darts_set),
                          train_overrides=settings(train_set, data_dir), echo=click.echo)
    click.echo(table1(df).to_string(index=False))


@study.command("search-curves")
@study_options
def search_curves(scale, seeds, out, data_dir, search_set) -> None:
    """Figure 2: validation loss during an MSR search, stable ranks per op, chosen cells."""
    from studies.search_curves import run_search_curves

    df = run_search_curves(out, scale=scale, seeds=parse_seeds(seeds),
                           search_overrides=settings(search_set, data_dir), echo=click.echo)
    chosen = df[df["chosen"]]
    click.echo(chosen[["seed", "epoch", "val_loss", "val_acc"]].to_string(index=False))


@study.command("cells")
@click.option("--genotype", "genotypes", multiple=True,
              help="Published name (msr-darts, darts-v2, darts-v1), genotype.json or search run "
                   "dir (repeatable) [default: msr-darts and darts-v2].")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder.")
def cells(genotypes, out) -> None:
    """Figure 4: cell diagrams, with depth and width of each cell."""
    from studies.cells import DEFAULT_GENOTYPES, run_cells

    df = run_cells(out, genotypes=genotypes or DEFAULT_GENOTYPES, echo=click.echo)
    click.echo(df[["genotype", "cell_type", "depth", "width", "ops"]].to_string(index=False))
