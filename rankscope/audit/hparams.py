"""User-supplied conv hyper-parameters for bare state dicts (``--stride-map``).

A state dict stores a conv's weight but not its stride, padding, dilation, groups or input size.
The user can supply them per layer, either inline (``layer2.0.conv1=2,layer3.*.conv2=2``: a stride
per layer name or glob pattern) or as a JSON file mapping a name or pattern to a stride or to a dict
with any of ``stride``, ``padding``, ``dilation``, ``groups`` and ``input_size``::

    {"conv1": {"stride": 2, "input_size": 224}, "layer2.0.conv2": 2}

The first matching entry wins for each field (exact names are tried before patterns).
"""
from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Any

from rankscope.errors import ConfigError

FIELDS = ("stride", "padding", "dilation", "groups", "input_size")
LayerMap = dict[str, dict[str, Any]]


def parse_layer_map(spec: str | None) -> LayerMap:
    """Parse ``--stride-map``: a JSON file path or ``name=stride,name=stride`` (globs allowed)."""
    if not spec:
        return {}
    path = Path(spec)
    if spec.endswith(".json") or path.is_file():
        return _from_json(path)
    out: LayerMap = {}
    for item in filter(None, (s.strip() for s in spec.split(","))):
        name, sep, value = item.partition("=")
        if not sep or not name.strip():
            raise ConfigError(f"--stride-map item {item!r} is not NAME=STRIDE")
        out[name.strip()] = {"stride": _positive_int(value, f"stride of {name.strip()}")}
    return out


def _from_json(path: Path) -> LayerMap:
    from rankscope.io import read_json_object

    data = read_json_object(path, "--stride-map file")
    return {str(k): _entry(str(k), v) for k, v in data.items()}


def _entry(name: str, value: Any) -> dict[str, Any]:
    if isinstance(value, (int, str)) and not isinstance(value, bool):
        return {"stride": _positive_int(value, f"stride of {name}")}
    if not isinstance(value, dict):
        raise ConfigError(f"--stride-map entry {name!r} must be a stride or an object")
    unknown = sorted(set(value) - set(FIELDS))
    if unknown:
        raise ConfigError(f"--stride-map entry {name!r} has unknown field(s) {', '.join(unknown)}; "
                          f"valid: {', '.join(FIELDS)}")
    out: dict[str, Any] = {}
    for key, v in value.items():
        lo = 0 if key == "padding" else 1
        out[key] = _int_or_pair(v, f"{key} of {name}", lo)
    return out


def _positive_int(value: Any, what: str, lo: int = 1) -> int:
    try:
        n = int(str(value).strip())
    except ValueError:
        raise ConfigError(f"{what} must be an integer, got {value!r}") from None
    if n < lo:
        raise ConfigError(f"{what} must be >= {lo}, got {n}")
    return n


def _int_or_pair(value: Any, what: str, lo: int) -> int | tuple[int, int]:
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ConfigError(f"{what} must be an integer or a pair, got {value!r}")
        return (_positive_int(value[0], what, lo), _positive_int(value[1], what, lo))
    return _positive_int(value, what, lo)


def lookup(layer_map: LayerMap, name: str) -> dict[str, Any]:
    """Fields given for ``name``: exact entry first, then glob patterns in the order given."""
    found: dict[str, Any] = dict(layer_map.get(name, {}))
    for pattern, fields in layer_map.items():
        if pattern != name and fnmatch.fnmatchcase(name, pattern):
            for key, v in fields.items():
                found.setdefault(key, v)
    return found
