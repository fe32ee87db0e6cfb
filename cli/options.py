"""Click options generated from a frozen config dataclass: one option per field, same name.

Options default to None so that only what the user typed overrides the preset and config file.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import click

_TYPES = {"str": str, "int": int, "float": float, "str | None": str, "int | None": int,
          "float | None": float}


def config_options(cls: type, skip: tuple[str, ...] = ()) -> Callable:
    """Decorator adding ``--field-name`` for every field of dataclass ``cls``."""
    def decorate(fn: Callable) -> Callable:
        for f in reversed(dataclasses.fields(cls)):
            if f.name in skip:
                continue
            flag = f.name.replace("_", "-")
            help_ = f"{f.metadata.get('help', '')} [default: {f.default}]".strip()
            if f.type == "bool":
                fn = click.option(f"--{flag}/--no-{flag}", f.name, default=None, help=help_)(fn)
            else:
                typ = _TYPES.get(str(f.type), str)
                fn = click.option(f"--{flag}", f.name, type=typ, default=None, help=help_)(fn)
        return fn
    return decorate


def overrides(cls: type, kwargs: dict) -> dict:
    """The config fields the user set on the command line."""
    names = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in kwargs.items() if k in names and v is not None}


def run_options(kind: str) -> Callable:
    """``--config``, ``--out`` and ``--resume``, shared by the commands that write a run directory."""
    def decorate(fn: Callable) -> Callable:
        fn = click.option("--resume", "resume_dir", type=click.Path(file_okay=False),
                          help="Continue the run in this directory from its last checkpoint.")(fn)
        fn = click.option("--out", type=click.Path(file_okay=False),
                          help=f"Run directory [default: runs/{kind}-<time>].")(fn)
        return click.option("--config", "config_file", type=click.Path(dir_okay=False),
                            help="JSON file of config fields (e.g. an earlier run's config.json).")(fn)
    return decorate
