"""Genotypes: the discrete cell architectures a search produces and a training run consumes.

A genotype holds, per cell type, two (op name, input index) pairs for each of the four intermediate
nodes. Input 0 is the output of cell k-2, input 1 of cell k-1, input j >= 2 is intermediate node
j-2. Genotypes are stored as JSON; the DARTS text form ``Genotype(normal=[...], ...)`` that people
copy between projects is parsed with ``ast`` (never ``eval``) and can be written back.
"""
from __future__ import annotations

import ast
import json
from dataclasses import dataclass
from pathlib import Path

from rankscope.errors import GenotypeError
from rankscope.ops import OPS

Edge = tuple[str, int]
N_NODES = 4  # intermediate nodes per cell
_FIELDS = ("normal", "normal_concat", "reduce", "reduce_concat")


@dataclass(frozen=True)
class Genotype:
    """Normal and reduction cells: ``normal[2*i], normal[2*i+1]`` feed intermediate node i."""

    normal: tuple[Edge, ...]
    normal_concat: tuple[int, ...]
    reduce: tuple[Edge, ...]
    reduce_concat: tuple[int, ...]

    def __post_init__(self) -> None:
        for field in _FIELDS:
            value = getattr(self, field)
            if field.endswith("concat"):
                object.__setattr__(self, field, tuple(int(i) for i in value))
            else:
                object.__setattr__(self, field, tuple((str(op), int(i)) for op, i in value))
        validate(self)

    def to_dict(self) -> dict:
        return {
            "normal": [[op, i] for op, i in self.normal],
            "normal_concat": list(self.normal_concat),
            "reduce": [[op, i] for op, i in self.reduce],
            "reduce_concat": list(self.reduce_concat),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    def to_darts_text(self) -> str:
        """The DARTS text form, readable by DARTS-derived code bases."""
        def edges(cell):
            return "[" + ", ".join(f"('{op}', {i})" for op, i in cell) + "]"
        return (f"Genotype(normal={edges(self.normal)}, normal_concat={list(self.normal_concat)}, "
                f"reduce={edges(self.reduce)}, reduce_concat={list(self.reduce_concat)})")

    def ops(self) -> set[str]:
        return {op for op, _ in self.normal + self.reduce}


def validate(g: Genotype) -> None:
    """Raise GenotypeError naming the first problem: edge count, op name, input index, concat."""
    for cell_name in ("normal", "reduce"):
        edges = getattr(g, cell_name)
        if len(edges) != 2 * N_NODES:
            raise GenotypeError(f"genotype {cell_name} cell needs {2 * N_NODES} edges "
                                f"(two per node), got {len(edges)}")
        for k, (op, idx) in enumerate(edges):
            node = k // 2
            if op not in OPS:
                raise GenotypeError(f"genotype {cell_name} edge {k}: unknown op {op!r}; "
                                    f"known ops: {', '.join(OPS)}")
            if not 0 <= idx < node + 2:
                raise GenotypeError(f"genotype {cell_name} edge {k}: node {node + 2} cannot take "
                                    f"input {idx} (valid: 0..{node + 1})")
        concat = getattr(g, cell_name + "_concat")
        if not concat or any(not 2 <= i < N_NODES + 2 for i in concat) or len(set(concat)) != len(concat):
            raise GenotypeError(f"genotype {cell_name}_concat must be distinct nodes in 2..{N_NODES + 1}, "
                                f"got {list(concat)}")


def from_dict(d: dict) -> Genotype:
    if not isinstance(d, dict) or any(f not in d for f in ("normal", "reduce")):
        raise GenotypeError("a genotype needs 'normal' and 'reduce' edge lists "
                            "(and optionally 'normal_concat', 'reduce_concat')")
    try:
        return Genotype(
            normal=[(op, i) for op, i in d["normal"]],
            normal_concat=d.get("normal_concat", range(2, 2 + N_NODES)),
            reduce=[(op, i) for op, i in d["reduce"]],
            reduce_concat=d.get("reduce_concat", range(2, 2 + N_NODES)),
        )
    except (TypeError, ValueError) as exc:
        if isinstance(exc, GenotypeError):
            raise
        raise GenotypeError(f"malformed genotype: {exc}") from None


def from_json(text: str) -> Genotype:
    try:
        return from_dict(json.loads(text))
    except json.JSONDecodeError as exc:
        raise GenotypeError(f"genotype is not valid JSON: {exc}") from None


def _literal(node: ast.AST):
    """Evaluate list/tuple/str/int literals and ``range(a, b)``; refuse anything else."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "range":
        args = [_literal(a) for a in node.args]
        if not 1 <= len(args) <= 3 or not all(isinstance(a, int) for a in args) or node.keywords:
            raise GenotypeError("range(...) in a genotype takes 1 to 3 integers")
        return list(range(*args))
    if isinstance(node, (ast.List, ast.Tuple)):
        return [_literal(e) for e in node.elts]
    if isinstance(node, ast.Constant) and isinstance(node.value, (str, int)):
        return node.value
    raise GenotypeError(f"unexpected expression in genotype text: {ast.dump(node)[:60]}")


def parse_darts_text(text: str) -> Genotype:
    """Parse ``Genotype(normal=[('sep_conv_3x3', 0), ...], normal_concat=..., reduce=..., ...)``."""
    try:
        tree = ast.parse(text.strip(), mode="eval").body
    except SyntaxError as exc:
        raise GenotypeError(f"genotype text is not valid: {exc.msg}") from None
    if not (isinstance(tree, ast.Call) and isinstance(tree.func, ast.Name)
            and tree.func.id == "Genotype" and not tree.args):
        raise GenotypeError("genotype text must look like Genotype(normal=[...], normal_concat=[...], "
                            "reduce=[...], reduce_concat=[...])")
    fields = {kw.arg: _literal(kw.value) for kw in tree.keywords}
    unknown = set(fields) - set(_FIELDS)
    if unknown:
        raise GenotypeError(f"unknown genotype field(s): {', '.join(sorted(map(str, unknown)))}")
    for cell in ("normal", "reduce"):
        if any(not (isinstance(e, list) and len(e) == 2) for e in fields.get(cell, [])):
            raise GenotypeError(f"genotype {cell} edges must be (op name, input index) pairs")
    return from_dict(fields)


def _g(normal, reduce) -> Genotype:
    return Genotype(normal=normal, normal_concat=range(2, 6), reduce=reduce, reduce_concat=range(2, 6))


# Published cells (REFERENCE.md section 2; DARTS V1 from the DARTS paper's released genotypes).
PUBLISHED: dict[str, Genotype] = {
    "msr-darts": _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 2), ("dil_conv_5x5", 1),
         ("dil_conv_3x3", 3), ("dil_conv_3x3", 0), ("sep_conv_5x5", 1), ("dil_conv_5x5", 2)],
        [("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("dil_conv_3x3", 1), ("sep_conv_5x5", 0),
         ("sep_conv_3x3", 0), ("dil_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_5x5", 1)]),
    "darts-v2": _g(
        [("sep_conv_3x3", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("sep_conv_3x3", 1),
         ("sep_conv_3x3", 1), ("skip_connect", 0), ("skip_connect", 0), ("dil_conv_3x3", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 1),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("max_pool_3x3", 1)]),
    "darts-v1": _g(
        [("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 0), ("sep_conv_3x3", 1),
         ("skip_connect", 0), ("sep_conv_3x3", 1), ("sep_conv_3x3", 0), ("skip_connect", 2)],
        [("max_pool_3x3", 0), ("max_pool_3x3", 1), ("skip_connect", 2), ("max_pool_3x3", 0),
         ("max_pool_3x3", 0), ("skip_connect", 2), ("skip_connect", 2), ("avg_pool_3x3", 0)]),
}


def load_genotype(spec: str) -> Genotype:
    """A published name, a JSON file (e.g. a search run's ``genotype.json``), a run directory,
    a JSON string, or the DARTS text form."""
    if spec in PUBLISHED:
        return PUBLISHED[spec]
    stripped = spec.lstrip()
    if stripped.startswith("{"):
        return from_json(spec)
    if stripped.startswith("Genotype("):
        return parse_darts_text(spec)
    path = Path(spec)
    if path.is_dir() and (path / "genotype.json").is_file():
        path = path / "genotype.json"
    if path.is_file():
        text = path.read_text()
        return from_json(text) if text.lstrip().startswith("{") else parse_darts_text(text)
    raise GenotypeError(f"genotype {spec!r} is not a published name ({', '.join(PUBLISHED)}), "
                        "an existing file, JSON, or DARTS text")
