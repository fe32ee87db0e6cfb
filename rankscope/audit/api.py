"""Public entry points: :func:`audit_module` (an ``nn.Module`` in memory) and :func:`audit_checkpoint`.

Both end in :func:`audit_layers`, which turns :class:`~rankscope.audit.layers.LayerSpec` records into
an :class:`~rankscope.audit.report.AuditResult`.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch
from torch import nn

from rankscope.audit import engine
from rankscope.audit.estimate import full_spectrum_seconds
from rankscope.audit.hparams import LayerMap, parse_layer_map
from rankscope.audit.layers import LayerSpec, discover_module_layers, layers_from_state_dict
from rankscope.audit.loading import LoadedSource, load_source
from rankscope.audit.metrics import audit_layer
from rankscope.audit.rebuild import (build_factory, first_input_channels, load_weights,
                                     rebuild_rankscope)
from rankscope.audit.report import AuditResult, make_table
from rankscope.errors import CheckpointError

Progress = Callable[[int, int, str], None]
DEFAULT_INPUT_SIZE = 32
DEFAULT_THREADS = 1  # see rankscope.audit.engine.intra_op_threads for the measurement


def audit_layers(specs: Sequence[LayerSpec], *, source: str, full: bool = False, n_iter: int = 20,
                 device: torch.device | str | None = None, progress: Progress | None = None,
                 estimate: bool = True, notes: Sequence[str] = (),
                 threads: int | None = DEFAULT_THREADS, spectra_layers: int = 0) -> AuditResult:
    """Compute every layer's row (and spectrum when ``full``); see docs/audit.md for the columns.

    ``estimate``: when not ``full``, time a few SVDs per matrix shape to estimate the full run.
    ``threads``: torch intra-op threads during the audit (None/0: leave torch's setting).
    ``spectra_layers``: in fast mode, still compute full spectra of this many conv layers spread
    evenly over the depth (for plots).
    """
    if not any(s.kind == "conv2d" for s in specs):
        n_lin = sum(s.kind == "linear" for s in specs)
        raise CheckpointError(f"{source} has no conv layers to audit"
                              + (f" (only {n_lin} linear)" if n_lin else ""))
    with engine.intra_op_threads(threads):
        return _run(specs, source, full, n_iter, device, progress, estimate, notes,
                    select_layers(specs, spectra_layers))


def select_layers(specs: Sequence[LayerSpec], k: int) -> set[str]:
    """Names of ``k`` conv layers with known input size, evenly spread from first to last."""
    convs = [s.name for s in specs if s.kind == "conv2d" and s.input_size is not None]
    if k <= 0 or not convs:
        return set()
    idx = np.unique(np.linspace(0, len(convs) - 1, num=min(k, len(convs))).round().astype(int))
    return {convs[i] for i in idx}


def _run(specs: Sequence[LayerSpec], source: str, full: bool, n_iter: int,
         device: torch.device | str | None, progress: Progress | None, estimate: bool,
         notes: Sequence[str], chosen: set[str]) -> AuditResult:
    start = time.perf_counter()
    rows, spectra, cache, est = [], {}, {}, 0.0
    for i, spec in enumerate(specs):
        if progress is not None:
            progress(i, len(specs), spec.name)
        row, values = audit_layer(spec, full=full or spec.name in chosen, n_iter=n_iter,
                                  device=device)
        rows.append(row)
        if values is not None:
            spectra[spec.name] = values
        if estimate and not full and row["flag"] == "ok":
            est += full_spectrum_seconds(spec, cache)
    if progress is not None:
        progress(len(specs), len(specs), "")
    return AuditResult(table=make_table(rows), spectra=spectra, source=source, notes=list(notes),
                       backend=engine.spectra_backend().source,
                       seconds=time.perf_counter() - start,
                       full_estimate_s=est if estimate and not full else None)


def audit_module(model: nn.Module, input_shape: Sequence[int], *, full: bool = False,
                 n_iter: int = 20, device: torch.device | str | None = None,
                 forward_kwargs: dict[str, Any] | None = None, progress: Progress | None = None,
                 estimate: bool = True, source: str | None = None,
                 threads: int | None = DEFAULT_THREADS, spectra_layers: int = 0) -> AuditResult:
    """Audit an in-memory network: one forward pass on zeros of shape ``(1, *input_shape)``
    reveals each conv's input size; every ``nn.Conv2d`` and ``nn.Linear`` gets a row."""
    specs = discover_module_layers(model, input_shape, forward_kwargs=forward_kwargs)
    return audit_layers(specs, source=source or type(model).__name__, full=full, n_iter=n_iter,
                        device=device, progress=progress, estimate=estimate,
                        notes=[f"input shape {tuple(input_shape)}"], threads=threads,
                        spectra_layers=spectra_layers)


def audit_checkpoint(path: str | Path, *, input_size: int | None = None,
                     layer_map: str | LayerMap | None = None, model: str | nn.Module | None = None,
                     trust: bool = False, full: bool = False, n_iter: int = 20,
                     device: torch.device | str | None = None, progress: Progress | None = None,
                     estimate: bool = True, threads: int | None = DEFAULT_THREADS,
                     spectra_layers: int = 0) -> AuditResult:
    """Audit a checkpoint file (rankscope, state dict, Lightning, DDP, safetensors).

    rankscope checkpoints are rebuilt from their config; ``model`` (a module or a
    ``pkg.module:factory`` spec) rebuilds any other checkpoint; otherwise the weights are read as a
    bare state dict, with hyper-parameters from ``layer_map`` (see :mod:`rankscope.audit.hparams`)
    and ``input_size``, and assumed fields listed in the ``assumed`` column.  ``trust=True`` allows
    unpickling arbitrary objects (only for files from a trusted source).
    """
    src = load_source(path, trust=trust)
    specs, notes = _layer_specs(src, input_size, layer_map, model)
    return audit_layers(specs, source=str(path), full=full, n_iter=n_iter, device=device,
                        progress=progress, estimate=estimate, notes=src.notes + notes,
                        threads=threads, spectra_layers=spectra_layers)


def _layer_specs(src: LoadedSource, input_size: int | None, layer_map: str | LayerMap | None,
                 model: str | nn.Module | None) -> tuple[list[LayerSpec], list[str]]:
    """Layer records with the best information available, and notes saying which that was."""
    if model is not None:
        module = build_factory(model) if isinstance(model, str) else model
        load_weights(module, src.state_dict)
        return _from_module(module, input_size, {}, "rebuilt with --model")
    if src.module is not None:
        return _from_module(src.module, input_size, {}, "pickled module (--trust)")
    if src.fmt == "rankscope":
        try:
            built = rebuild_rankscope(src.payload or {}, input_size)
        except (CheckpointError, ImportError, ValueError) as exc:
            note = f"network not rebuilt ({str(exc).splitlines()[0][:120]}); read as a state dict"
        else:
            specs = discover_module_layers(built.module, built.input_shape,
                                           forward_kwargs=built.forward_kwargs)
            return specs, [f"rebuilt {built.description}, input {built.input_shape}"]
    else:
        note = f"{src.fmt}: conv hyper-parameters are not stored; see the 'assumed' column"
    lmap = parse_layer_map(layer_map) if isinstance(layer_map, str) or layer_map is None else layer_map
    size = input_size or DEFAULT_INPUT_SIZE
    return layers_from_state_dict(src.state_dict, input_size=size, layer_map=lmap), [note]


def _from_module(module: nn.Module, input_size: int | None, kwargs: dict,
                 how: str) -> tuple[list[LayerSpec], list[str]]:
    channels = first_input_channels(module)
    if channels is None:
        raise CheckpointError("the network has no conv layers to audit")
    size = input_size or DEFAULT_INPUT_SIZE
    specs = discover_module_layers(module, (channels, size, size), forward_kwargs=kwargs)
    if input_size is None:  # every conv's size follows from an input size nobody gave
        for spec in specs:
            if spec.kind == "conv2d":
                spec.assumed = tuple(spec.assumed) + ("input_size",)
    return specs, [f"{how}, input {(channels, size, size)}"
                   + ("" if input_size else " (assumed; set --input-size)")]


def save_spectra(result: AuditResult, directory: str | Path, stem: str) -> Path:
    """Write ``DIR/<stem>.npz``: one array of singular values (descending) per layer name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{stem}.npz"
    import io

    from rankscope.io import atomic_write_bytes

    buf = io.BytesIO()
    np.savez_compressed(buf, **{name or "<root>": v for name, v in result.spectra.items()})
    atomic_write_bytes(path, buf.getvalue())
    return path
