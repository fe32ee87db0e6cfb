"""``rankscope audit CKPT [CKPT_B]``: operator-exact per-layer spectra and stable ranks."""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from rankscope.errors import RankscopeError

FORMATS = ("table", "csv", "json", "markdown")
PLOT_SPECTRA_LAYERS = 6


class _Progress:
    """Progress bar over layers on stderr (click hides it when stderr is not a terminal)."""

    def __init__(self, label: str, enabled: bool):
        self.label, self.enabled, self.bar, self.done = label, enabled, None, 0

    def __call__(self, i: int, total: int, name: str) -> None:
        if not self.enabled:
            return
        if self.bar is None:
            self.bar = click.progressbar(length=total, label=self.label, file=sys.stderr,
                                         show_pos=True, item_show_func=lambda _: name or None)
            self.bar.__enter__()
        self.bar.update(i - self.done, current_item=name)
        self.done = i
        if i >= total:
            self.bar.__exit__(None, None, None)
            self.bar = None


def _audit_one(path: Path, opts: dict[str, Any]):
    from rankscope.audit import audit_checkpoint

    return audit_checkpoint(path, input_size=opts["input_size"], layer_map=opts["stride_map"],
                            model=opts["model_spec"], trust=opts["trust"],
                            full=opts["full"] or opts["spectra_dir"] is not None,
                            n_iter=opts["power_iters"], device=opts["device"],
                            threads=opts["threads"],
                            spectra_layers=PLOT_SPECTRA_LAYERS if opts["plot_dir"] else 0,
                            progress=_Progress(f"auditing {path.name}", not opts["quiet"]))


def _emit(text: str, out: Path | None) -> None:
    if out is None:
        click.echo(text, nl=False)
        return
    from rankscope.io import atomic_write_text

    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out, text)
    click.echo(f"wrote {out}", err=True)


def _render_single(result, fmt: str) -> str:
    from rankscope.audit.report import TABLE_COLUMNS, format_table

    extra = {"source": result.source, "summary": result.summary, "notes": result.notes,
             "backend": result.backend, "full_estimate_s": result.full_estimate_s}
    cols = TABLE_COLUMNS if fmt in ("table", "markdown") else None
    return format_table(result.table, fmt, columns=cols, extra=extra)


def _render_compare(cmp, a, b, fmt: str) -> str:
    from rankscope.audit.report import format_table

    cols = ("name", "kind", "shape_changed", "stable_rank_a", "stable_rank_b", "stable_rank_ratio",
            "sigma_max_exact_a", "sigma_max_exact_b", "sigma_max_exact_ratio",
            "stable_rank_matrix_ratio")
    extra = {"a": {"source": a.source, "summary": a.summary},
             "b": {"source": b.source, "summary": b.summary}}
    return format_table(cmp, fmt, columns=cols if fmt in ("table", "markdown") else None, extra=extra)


def _plots(results: list, cmp, plot_dir: Path) -> list[Path]:
    from rankscope.audit import plots

    written = []
    for tag, res in zip("ab", results):
        stem = Path(res.source).stem + (f"_{tag}" if len(results) > 1 else "")
        written.append(plots.plot_layers(res.table, plot_dir / f"{stem}_layers.png", res.source))
        if res.spectra:
            written.append(plots.plot_spectra(res.spectra, plot_dir / f"{stem}_spectra.png",
                                              res.source))
    if cmp is not None:
        labels = (Path(results[0].source).stem, Path(results[1].source).stem)
        written.append(plots.plot_comparison(cmp, plot_dir / "comparison.png", labels))
    return written


@click.command("audit")
@click.argument("checkpoint", type=click.Path(path_type=Path))
@click.argument("checkpoint_b", required=False, type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="Output format (csv/json carry every column).")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path),
              help="Write the output to FILE instead of stdout.")
@click.option("--plot", "plot_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write PNG figures (per-layer bars, spectra, A/B comparison) to DIR.")
@click.option("--spectra", "spectra_dir", type=click.Path(file_okay=False, path_type=Path),
              help="Save all singular values per layer to DIR/<checkpoint>.npz (implies --full).")
@click.option("--input-size", type=click.IntRange(min=1), default=None,
              help="Network input side N (default: from a rankscope config, else 32, marked assumed).")
@click.option("--stride-map", default=None,
              help="Bare state dicts: NAME=STRIDE,... (globs allowed) or a JSON file with per-layer "
                   "stride/padding/dilation/groups/input_size.")
@click.option("--model", "model_spec", default=None,
              help="pkg.module:factory returning the nn.Module to load the weights into "
                   "(exact geometry for foreign checkpoints).")
@click.option("--trust", is_flag=True,
              help="Allow unpickling arbitrary objects (runs code from the file; trusted files only).")
@click.option("--full/--fast", default=False, show_default=True,
              help="--full: all singular values per layer; --fast: largest only.")
@click.option("--power-iters", type=click.IntRange(min=0), default=20, show_default=True,
              help="Warm-started power iterations per conv (zero-padded σ_max).")
@click.option("--threads", type=click.IntRange(min=0), default=1, show_default=True,
              help="torch intra-op threads (0: torch's default); 1 is fastest on busy machines.")
@click.option("--device", default="cpu", show_default=True, help="torch device for the spectra.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
def audit(checkpoint: Path, checkpoint_b: Path | None, fmt: str, out: Path | None, **opts: Any) -> None:
    """Per-layer operator spectra and stable ranks of CHECKPOINT (and changes to CHECKPOINT_B).

    Reads rankscope checkpoints (rebuilt from their config), .pt/.pth/.bin state dicts, Lightning
    .ckpt, DDP-prefixed and .safetensors files. Pickles are loaded with weights_only=True; a file
    that needs code to load is refused unless --trust is given.
    """
    try:
        _run(checkpoint, checkpoint_b, fmt, out, opts)
    except RankscopeError as exc:  # one line even when the command is invoked outside the group
        root = click.get_current_context().find_root().obj
        if isinstance(root, dict) and root.get("debug"):
            raise
        raise click.ClickException(str(exc).splitlines()[0] if str(exc) else repr(exc)) from None


def _run(checkpoint: Path, checkpoint_b: Path | None, fmt: str, out: Path | None,
         opts: dict[str, Any]) -> None:
    from rankscope.audit import compare, save_spectra

    results = [_audit_one(p, opts) for p in (checkpoint, checkpoint_b) if p is not None]
    cmp = compare(*results) if len(results) == 2 else None
    text = _render_single(results[0], fmt) if cmp is None else _render_compare(cmp, *results, fmt)
    _emit(text, out)
    summary_to_stderr = fmt != "table" and out is None
    for res in results:
        click.echo(res.summary_line(), err=summary_to_stderr)
        for note in res.notes:
            click.echo(f"  note: {note}", err=True)
    if opts["spectra_dir"] is not None:
        for tag, res in zip("ab", results):
            stem = Path(res.source).stem + (f"_{tag}" if len(results) > 1 else "")
            click.echo(f"wrote {save_spectra(res, opts['spectra_dir'], stem)}", err=True)
    if opts["plot_dir"] is not None:
        for path in _plots(results, cmp, opts["plot_dir"]):
            click.echo(f"wrote {path}", err=True)
