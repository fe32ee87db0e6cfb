"""The ``rankscope`` console command: a click group whose subcommands live in sibling modules."""
from __future__ import annotations

import click

from rankscope import __version__
from rankscope.errors import RankscopeError

# Errors a user can fix; the CLI shows them as one line instead of a traceback.
USER_ERRORS = (RankscopeError, ValueError, FileNotFoundError, PermissionError, IsADirectoryError)


class RankscopeGroup(click.Group):
    """Click group that turns user errors into a one-line ``Error: ...`` (exit code 1)."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except USER_ERRORS as exc:
            if ctx.obj and ctx.obj.get("debug"):
                raise
            raise click.ClickException(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


@click.group(cls=RankscopeGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="rankscope")
@click.option("--debug", is_flag=True, help="Show full tracebacks instead of one-line errors.")
@click.option("--threads", type=click.IntRange(min=1), envvar="RANKSCOPE_THREADS",
              help="torch CPU threads [default: 1 on machines with <= 2 cores, else torch's choice; "
                   "env RANKSCOPE_THREADS].")
@click.pass_context
def main(ctx: click.Context, debug: bool, threads: int | None) -> None:
    """rankscope: stable-rank studies of convolutional networks, and MSR-DARTS."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug
    set_threads(threads)


def set_threads(threads: int | None) -> None:
    """Pick the torch CPU thread count.

    On a 2-core machine the OpenMP workers of small convolutions mostly wait on each other and on
    the Python thread: a quick-preset supernet step measured 2.1 s at 1 thread and 7.6-54 s at 2
    threads under load (docs/performance.md), so small machines default to one thread.
    """
    import os

    import torch

    if threads is None and (os.cpu_count() or 1) <= 2:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads)


COMMANDS = ("search", "train", "audit", "spectrum", "study")


def _register() -> None:
    # Each sibling module defines one click command of the same name.
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f"cli.{name}")
        main.add_command(getattr(module, name))


_register()
