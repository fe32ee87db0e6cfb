"""Self-describing artifacts: atomic file writes, checkpoints, run directories, config files.

A checkpoint is a plain dict of tensors and primitives (never a pickled module), so it loads with
``torch.load(weights_only=True)``. It always carries ``format``, ``rankscope_version``, ``kind``,
``config`` (the resolved config as a dict), ``genotype`` (a dict or None), ``epoch``, ``metrics``
and ``state_dict``; resumable runs add ``optimizer`` and ``rng``.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

import torch

from rankscope import __version__
from rankscope.errors import CheckpointError, ConfigError

CHECKPOINT_FORMAT = "rankscope-checkpoint"


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a kill never leaves half a file."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


def write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj: Any):
    if dataclasses.is_dataclass(obj):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"cannot write {type(obj).__name__} as JSON")


def write_csv(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write all rows (a list of dicts with the same keys) atomically."""
    rows = list(rows)
    fields: list[str] = []
    for row in rows:
        fields += [k for k in row if k not in fields]
    import io as _io

    buf = _io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields)
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def save_checkpoint(path: str | os.PathLike, *, kind: str, config: Any, state_dict: dict,
                    epoch: int, metrics: dict | None = None, genotype: dict | None = None,
                    **extra: Any) -> None:
    """Save a self-describing checkpoint atomically (see module docstring for the keys)."""
    payload = {
        "format": CHECKPOINT_FORMAT,
        "rankscope_version": __version__,
        "kind": kind,
        "config": dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config),
        "genotype": genotype,
        "epoch": int(epoch),
        "metrics": dict(metrics or {}),
        "state_dict": state_dict,
        **extra,
    }
    import io as _io

    buf = _io.BytesIO()
    torch.save(payload, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_error_detail(exc: BaseException) -> str:
    """The useful line of a ``torch.load`` failure (torch's weights-only message is a paragraph)."""
    text = str(exc).strip()
    if "WeightsUnpickler error:" in text:
        text = text.split("WeightsUnpickler error:", 1)[1].strip()
    line = text.splitlines()[0].strip() if text else type(exc).__name__
    return line[:160]


def load_checkpoint(path: str | os.PathLike, *, kind: str | None = None,
                    map_location: str | torch.device = "cpu") -> dict:
    """Load a rankscope checkpoint safely (``weights_only=True``), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # corrupt zip, truncated file, or a pickle needing arbitrary code
        raise CheckpointError(f"cannot load {path} as a rankscope checkpoint "
                              f"({load_error_detail(exc)})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path} is not a rankscope checkpoint (no '{CHECKPOINT_FORMAT}' "
                              "marker); use `rankscope audit` for foreign checkpoints")
    if kind is not None and ckpt.get("kind") != kind:
        raise CheckpointError(f"{path} is a {ckpt.get('kind')!r} checkpoint, expected {kind!r}")
    return ckpt


def opt(default: Any, help: str) -> Any:
    """A config dataclass field carrying the help text of its command-line option."""
    return dataclasses.field(default=default, metadata={"help": help})


def config_from_dict(cls: type, values: dict) -> Any:
    """Build frozen dataclass ``cls`` from a dict, refusing unknown keys (no silent typos)."""
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise ConfigError(f"unknown {cls.__name__} field(s): {', '.join(unknown)}; "
                          f"valid: {', '.join(sorted(names))}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name in values:
            v = values[f.name]
            # JSON has no tuples; dataclass fields typed as tuples get them back.
            kwargs[f.name] = tuple(v) if isinstance(v, list) else v
    return cls(**kwargs)


def read_json_object(path: str | os.PathLike, what: str = "config file") -> dict:
    """A JSON file that must hold an object; one-line ConfigErrors naming ``what`` it is."""
    try:
        data = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise ConfigError(f"{what} {path} does not exist") from None
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{what} {path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must hold a JSON object")
    return data


def read_config_file(path: str | os.PathLike) -> dict:
    """Read a JSON config file (e.g. a run directory's ``config.json``) as a dict."""
    data = read_json_object(path)
    return data.get("config", data) if "config" in data and isinstance(data["config"], dict) else data


_RUN_MARKERS = {"search": "supernet", "train": "network"}  # the record each kind's config.json holds


def read_run_config(run_dir: str | os.PathLike, kind: str) -> dict:
    """A run directory's ``config.json``, checked to belong to a ``kind`` ("search"/"train") run."""
    path = Path(run_dir) / "config.json"
    if not path.is_file():
        raise ConfigError(f"cannot resume: {run_dir} has no config.json (not a rankscope run directory)")
    data = read_config_file(path)
    if _RUN_MARKERS[kind] not in data:
        other = next((k for k, m in _RUN_MARKERS.items() if m in data), None)
        hint = f"it is a {other} run: use `rankscope {other} --resume`" if other else "unknown layout"
        raise ConfigError(f"cannot resume {run_dir} as a {kind} run ({hint})")
    return data


def prepare_run_dir(path: str | os.PathLike, *, resume: bool = False) -> Path:
    """Create (or, for resume, require) a writable run directory; clear one-line errors."""
    path = Path(path)
    if resume:
        if not path.is_dir():
            raise ConfigError(f"cannot resume: run directory {path} does not exist")
    else:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise ConfigError(f"cannot create run directory {path}: {exc.strerror}") from None
    if not os.access(path, os.W_OK):
        raise ConfigError(f"run directory {path} is not writable; choose another with --out")
    return path
