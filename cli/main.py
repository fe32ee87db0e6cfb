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
@click.pass_context
def main(ctx: click.Context, debug: bool) -> None:
    """rankscope: stable-rank studies of convolutional networks, and MSR-DARTS."""
    ctx.ensure_object(dict)
    ctx.obj["debug"] = debug


COMMANDS = ("search", "train", "audit", "spectrum", "study")


def _register() -> None:
    # Each sibling module defines one click command of the same name.
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f"cli.{name}")
        main.add_command(getattr(module, name))


_register()
