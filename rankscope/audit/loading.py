"""Load weights from any common checkpoint format, safely.

Formats: rankscope checkpoints (``format == "rankscope-checkpoint"``), plain ``torch.save`` state
dicts (``.pt``/``.pth``/``.bin``), Lightning ``.ckpt`` files (tensors under ``state_dict`` with a
``model.`` prefix), DDP / ``torch.compile`` prefixes (``module.``, ``_orig_mod.``), dicts that nest the
weights under a common key (``model``, ``model_state_dict``, ``net``, ...), and ``.safetensors`` files.

Security: pickles are read with ``torch.load(weights_only=True)``, whose unpickler only rebuilds
tensors and primitive containers.  A file that needs arbitrary code (a pickled class, a ``__reduce__``
gadget) is refused with a one-line :class:`~rankscope.errors.CheckpointError`; it is never executed
unless the caller passes ``trust=True`` (the CLI's ``--trust``).
"""
from __future__ import annotations

import dataclasses
import pickle
import re
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from rankscope.errors import CheckpointError

RANKSCOPE_FORMAT = "rankscope-checkpoint"
# Keys under which training scripts commonly nest the weights, most specific first.
NESTED_KEYS = ("state_dict", "model_state_dict", "model", "net", "network", "module", "ema")
# Wrapper prefixes added by DDP / DataParallel, Lightning modules and torch.compile.
STRIP_PREFIXES = ("module.", "model.", "_orig_mod.")
_ZIP_MAGIC = b"PK\x03\x04"


@dataclasses.dataclass
class LoadedSource:
    """Weights and whatever metadata the file carried.

    ``fmt`` is one of ``rankscope``, ``state_dict``, ``lightning``, ``safetensors``, ``module``;
    ``payload`` is the raw rankscope checkpoint dict (config, genotype, ...) when ``fmt == "rankscope"``;
    ``module`` the unpickled ``nn.Module`` when a trusted file held a whole model.
    """

    path: Path
    fmt: str
    state_dict: dict[str, torch.Tensor]
    payload: dict[str, Any] | None = None
    module: nn.Module | None = None
    notes: list[str] = dataclasses.field(default_factory=list)


def load_source(path: str | Path, *, trust: bool = False) -> LoadedSource:
    """Read ``path`` into a :class:`LoadedSource`; every failure is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} is not a file")
    if _is_safetensors(path):
        return _finish(path, "safetensors", _load_safetensors(path), None, [])
    obj = _torch_load(path, trust)
    return _interpret(path, obj)


def _is_safetensors(path: Path) -> bool:
    """Sniff the safetensors layout (8-byte little-endian header length, then a JSON object)."""
    if path.suffix == ".safetensors":
        return True
    with open(path, "rb") as fh:
        head = fh.read(9)
    if len(head) < 9 or head.startswith(_ZIP_MAGIC):
        return False
    return head[8:9] == b"{" and 0 < int.from_bytes(head[:8], "little") < path.stat().st_size


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"{path} is not a readable safetensors file ({_first_line(exc)})") from None


def _torch_load(path: Path, trust: bool) -> Any:
    """``torch.load`` with ``weights_only=True`` unless trusted; refusals name the blocked global."""
    try:
        with warnings.catch_warnings():  # e.g. "Detected pickle protocol 4": noise for users
            warnings.simplefilter("ignore", UserWarning)
            return torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        msg = str(exc)
        if not trust and "Weights only load failed" in msg:
            found = re.search(r"GLOBAL ([\w.]+)", msg)
            name = found.group(1) if found else _pickled_global(path)
            if name:
                raise CheckpointError(_refusal(path, name)) from None
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({_first_line(exc)})") from None
    except Exception as exc:  # truncated zip, random bytes, wrong file type, EOF
        raise CheckpointError(f"{path} is corrupt or not a PyTorch checkpoint ({_first_line(exc)})") from None


def _refusal(path: Path, name: str) -> str:
    """One-line refusal for a pickle that would run code; mentions ``--trust``."""
    return (f"refusing to load {path}: it references {name}, which needs arbitrary code to "
            "unpickle (nothing was executed); re-run with --trust only if you trust its source")


def _pickled_global(path: Path) -> str | None:
    """Name of the first global a plain (non-zip) pickle imports, read without unpickling.

    ``pickletools.genops`` only parses opcodes; garbage fails to parse and returns None (corrupt).
    """
    import pickletools

    strings: list[str] = []
    try:
        with open(path, "rb") as fh:
            for op, arg, _ in pickletools.genops(fh):
                if op.name == "GLOBAL":
                    return str(arg).replace(" ", ".")
                if op.name == "STACK_GLOBAL":
                    return ".".join(strings[-2:]) or "a pickled global"
                if isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle at all
        return None
    return None


def _first_line(exc: BaseException) -> str:
    from rankscope.io import load_error_detail

    return load_error_detail(exc)


def _interpret(path: Path, obj: Any) -> LoadedSource:
    """Find the weights inside whatever ``torch.load`` returned."""
    if isinstance(obj, nn.Module):
        src = _finish(path, "module", obj.state_dict(), None, ["file holds a pickled nn.Module"])
        src.module = obj
        return src
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, not a dict of weights")
    if obj.get("format") == RANKSCOPE_FORMAT:
        sd = obj.get("state_dict")
        if not isinstance(sd, dict):
            raise CheckpointError(f"{path} is a rankscope checkpoint without a state_dict")
        return _finish(path, "rankscope", sd, obj, [])
    fmt = "lightning" if any("lightning" in str(k) for k in obj) else "state_dict"
    sd, notes = _nested_weights(obj)
    return _finish(path, fmt, sd, None, notes)


def _nested_weights(obj: dict) -> tuple[dict, list[str]]:
    """The weights dict: ``obj`` itself if it holds tensors, else the first known nested key."""
    if any(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj, []
    for key in NESTED_KEYS:
        inner = obj.get(key)
        if isinstance(inner, nn.Module):
            return inner.state_dict(), [f"weights taken from the module under '{key}'"]
        if isinstance(inner, dict) and any(isinstance(v, torch.Tensor) for v in inner.values()):
            return inner, [f"weights taken from key '{key}'"]
    return obj, []


def _finish(path: Path, fmt: str, sd: dict, payload: dict | None, notes: list[str]) -> LoadedSource:
    """Keep tensors only, strip wrapper prefixes, refuse empty results."""
    tensors = {str(k): v for k, v in sd.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path} contains no weight tensors (empty state_dict)")
    tensors, stripped = strip_prefixes(tensors)
    if stripped:
        notes = notes + [f"stripped prefix {', '.join(repr(p) for p in stripped)}"]
    return LoadedSource(path=path, fmt=fmt, state_dict=tensors, payload=payload, notes=notes)


def strip_prefixes(sd: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Remove ``module.``/``model.``/``_orig_mod.`` while *every* key carries one (DDP, Lightning)."""
    stripped: list[str] = []
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if sd and all(k.startswith(prefix) for k in sd):
                sd = {k[len(prefix):]: v for k, v in sd.items()}
                stripped.append(prefix)
                changed = True
    return sd, stripped
