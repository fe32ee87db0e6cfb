"""What the study runners share: scales, resumable sub-runs, reading run directories.

A study is a directory of sub-runs (search and train run directories, named like
``search-msr-s0`` or ``train-min-s0``) plus its results CSV and figures. A sub-run whose
``summary.json`` exists is finished and skipped; one with a ``checkpoint.pt`` but no summary was
interrupted and is resumed; otherwise it starts afresh.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import pandas as pd

from rankscope.errors import ConfigError

Echo = Callable[[str], None]
SCALES = ("tiny", "quick", "paper")


@dataclass(frozen=True)
class Scale:
    """Presets and overrides of the searches and trainings of one scale."""

    search_preset: str
    darts_preset: str
    train_preset: str
    search: dict = field(default_factory=dict)    # overrides of both searches
    darts: dict = field(default_factory=dict)     # extra overrides of the DARTS search
    train: dict = field(default_factory=dict)     # overrides of every training


_TINY_SEARCH = dict(train_limit=60, epochs=2, batch_size=32, layers=3, channels=4, sn_iters=1)
_TINY_TRAIN = dict(train_limit=64, test_limit=40, layers=3, channels=4, epochs=2, batch_size=32)

SCALE_SETTINGS: dict[str, Scale] = {
    # Seconds on a CPU: for tests only (the numbers mean nothing).
    "tiny": Scale("quick", "darts-quick", "quick", search=_TINY_SEARCH, darts=dict(space="msr"),
                  train=_TINY_TRAIN),
    # Minutes on a CPU, embedded 8x8 digits: the search and train `quick` presets.
    "quick": Scale("quick", "darts-quick", "quick", darts=dict(space="msr")),
    # The paper's toy experiment (4.2): CIFAR-10 search of 8 cells, C=16, 50 epochs; evaluation of
    # 8 cells, C=36, 600 epochs with path dropout 0.3. DARTS searches the same O_MSR space (Table 1).
    "paper": Scale("paper", "darts-paper", "cifar-toy", darts=dict(space="msr"),
                   train=dict(drop_path_prob=0.3)),
}


def scale_settings(scale: str) -> Scale:
    if scale not in SCALE_SETTINGS:
        raise ConfigError(f"unknown scale {scale!r}; choose one of {', '.join(SCALES)}")
    return SCALE_SETTINGS[scale]


def search_config(scale: str, method: str, seed: int, overrides: dict | None = None):
    """The SearchConfig of one search of a study (``method`` msr or darts)."""
    from rankscope.search.config import resolve_config

    s = scale_settings(scale)
    values = {**s.search, **(s.darts if method == "darts" else {}), **(overrides or {}), "seed": seed}
    return resolve_config(s.darts_preset if method == "darts" else s.search_preset, overrides=values)


def train_config(scale: str, genotype: str, seed: int, overrides: dict | None = None):
    """The TrainConfig of one training of a study; ``genotype`` is a name, file or run dir."""
    from rankscope.train.config import resolve_config

    s = scale_settings(scale)
    values = {**s.train, **(overrides or {}), "genotype": genotype, "seed": seed}
    return resolve_config(s.train_preset, overrides=values)


def _state(run_dir: Path) -> str:
    if (run_dir / "summary.json").is_file():
        return "done"
    return "resume" if (run_dir / "checkpoint.pt").is_file() else "new"


def _ensure(run, cfg, run_dir: Path, verb: str, echo: Echo) -> dict:
    """Run (``verb`` names it), resume or skip one sub-run; returns its summary."""
    state = _state(run_dir)
    if state == "done":
        echo(f"[study] {run_dir.name}: finished, skipped")
        return read_json(run_dir / "summary.json")
    echo(f"[study] {run_dir.name}: {'resuming' if state == 'resume' else verb}")
    return run(None if state == "resume" else cfg, run_dir, resume=state == "resume",
               echo=_prefixed(echo, run_dir.name))


def ensure_search(cfg, run_dir: Path, echo: Echo) -> dict:
    """Run, resume or skip one search; returns its summary."""
    from rankscope.search.runner import run_search

    return _ensure(run_search, cfg, run_dir, "searching", echo)


def ensure_train(cfg, run_dir: Path, echo: Echo) -> dict:
    """Run, resume or skip one training; returns its summary."""
    from rankscope.train.runner import run_train

    return _ensure(run_train, cfg, run_dir, "training", echo)


def _prefixed(echo: Echo, name: str) -> Echo:
    return lambda msg: echo(f"  [{name}] {msg}")


def read_json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines() if line.strip()]


def read_metrics(run_dir: Path, **columns) -> pd.DataFrame:
    """A run's ``metrics.csv`` with constant ``columns`` (e.g. seed=0) added."""
    return pd.read_csv(Path(run_dir) / "metrics.csv").assign(**columns)


def save(fig, path: Path, echo: Echo) -> Path:
    """Write a figure, close it, and say where it went."""
    from rankscope.plots import save_figure

    save_figure(fig, path)
    echo(f"[study] wrote {path}")
    return path


def write_table(df: pd.DataFrame, path: Path, echo: Echo) -> Path:
    from rankscope.io import atomic_write_text

    atomic_write_text(path, df.to_csv(index=False))
    echo(f"[study] wrote {path}")
    return path


def prepare_out(out_dir: str | Path, seeds: Iterable[int]) -> tuple[Path, list[int]]:
    """Create the study directory; seeds as a non-empty list of ints."""
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ConfigError("at least one seed is needed")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    return out, seeds


def test_start_epoch(epochs: int) -> int:
    """First epoch of the test curves: the second half, as the paper plots (after 300 of 600),
    where the curves separate; all epochs of very short runs."""
    return epochs // 2 + 1 if epochs >= 4 else 1


def summary_row(summary: dict, prefix: str = "") -> dict:
    """The columns of a train summary that the study tables keep."""
    keys = ("test_top1_err", "test_top5_err", "test_loss", "best_test_top1_err", "params_m",
            "multiply_adds_m", "device_hours")
    return {f"{prefix}{k}": summary.get(k) for k in keys}
