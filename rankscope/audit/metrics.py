"""Per-layer quantities: one row of the audit table (see docs/audit.md for every column).

Conv layers are measured as *operators* on their true input size: the exact circular-padding
spectrum (Sedghi et al. 2019) and a warm-started power iteration on the zero-padded layer as it
computes (Behrmann et al. 2019).  The reshaped c_out x (c_in/g k k) weight matrix is reported
separately (``stable_rank_matrix``), as torch's spectral_norm and WeightWatcher see it.
"""
from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch
from torch import nn

from rankscope.audit import _fallback, engine
from rankscope.audit.layers import LayerSpec

NAN = float("nan")
_WARM_START_MAX_ELEMENTS = 2 ** 24  # cap on the kernel symbol built for the warm start
_WARM_CANDIDATES = 4
_MATRIX_POWER_STEPS = 100
_WARM_NOISE = 0.05

COLUMNS = (
    "name", "kind", "shape", "input_size", "output_size", "stride", "dilation", "groups", "padding",
    "padding_assumed", "assumed", "sigma_max_exact", "sigma_max_power", "sigma_gap_rel",
    "frobenius", "frobenius_zero_pad", "stable_rank", "stable_rank_zero_pad",
    "stable_rank_normalized", "sigma_max_matrix", "stable_rank_matrix", "n_singular_values",
    "flag", "note", "seconds",
)


def weight_flag(w: torch.Tensor) -> str:
    """``nan``, ``inf``, ``zero`` (all entries zero) or ``ok``."""
    if bool(torch.isnan(w).any()):
        return "nan"
    if bool(torch.isinf(w).any()):
        return "inf"
    return "zero" if not bool(w.any()) else "ok"


def _fmt(pair: Any) -> str:
    if pair is None:
        return ""
    a, b = pair
    return str(a) if a == b else f"{a}x{b}"


def _ratio(num: float, den: float) -> float:
    return num / den if den > 0 and math.isfinite(den) else (0.0 if num == 0 else NAN)


def _base_row(spec: LayerSpec) -> dict[str, Any]:
    row: dict[str, Any] = {c: NAN for c in COLUMNS}
    conv = spec.kind == "conv2d"
    row.update(name=spec.name, kind=spec.kind, shape="x".join(map(str, spec.weight.shape)),
               input_size=_fmt(spec.input_size), output_size=_fmt(spec.out_size),
               stride=_fmt(spec.stride) if conv else "", dilation=_fmt(spec.dilation) if conv else "",
               groups=spec.groups if conv else 1, padding=_fmt(spec.padding) if conv else "",
               padding_assumed=conv and "padding" in spec.assumed, assumed=",".join(spec.assumed),
               flag="ok", note="; ".join(spec.notes))
    return row


def _add_note(row: dict[str, Any], text: str) -> None:
    row["note"] = f"{row['note']}; {text}" if row["note"] else text


def _compute_weight(w: torch.Tensor, device: torch.device | str | None) -> torch.Tensor:
    """Detached float32/float64 copy on ``device`` (half precision is promoted to float32)."""
    w = w.detach()
    dtype = w.dtype if w.dtype in (torch.float32, torch.float64) else torch.float32
    return w.to(device=device or w.device, dtype=dtype)


def matrix_columns(w2: torch.Tensor) -> dict[str, float]:
    """σ_max, Frobenius norm and stable rank ||W||_F^2/||W||_2^2 of a 2-D matrix."""
    sigma = float(torch.linalg.matrix_norm(w2, ord=2))
    fro = float(w2.double().norm())
    return {"sigma_max_matrix": sigma, "fro_matrix": fro, "stable_rank_matrix": _ratio(fro ** 2, sigma ** 2)}


def audit_layer(spec: LayerSpec, *, full: bool = False, n_iter: int = 20,
                device: torch.device | str | None = None) -> tuple[dict[str, Any], np.ndarray | None]:
    """One table row for ``spec`` and, when ``full``, all its singular values (descending).

    Never raises on bad weights or unsupported geometry: the row gets a ``flag`` and a ``note``.
    """
    start = time.perf_counter()
    row = _base_row(spec)
    w = _compute_weight(spec.weight, device)
    row["flag"] = weight_flag(w)
    values = None
    if row["flag"] in ("nan", "inf"):
        _add_note(row, f"weights contain {row['flag'].upper()}; nothing computed")
    elif spec.kind == "linear":
        values = _linear_columns(row, w, full)
    else:
        values = _conv_columns(row, spec, w, full=full, n_iter=n_iter)
    row["seconds"] = time.perf_counter() - start
    return row, values


def _linear_columns(row: dict[str, Any], w: torch.Tensor, full: bool) -> np.ndarray | None:
    """Ordinary matrix quantities; the operator is the matrix itself."""
    m = matrix_columns(w)
    n_sv = min(w.shape)
    row.update(sigma_max_exact=m["sigma_max_matrix"], frobenius=m["fro_matrix"],
               frobenius_zero_pad=m["fro_matrix"], stable_rank=m["stable_rank_matrix"],
               stable_rank_zero_pad=m["stable_rank_matrix"],
               stable_rank_normalized=m["stable_rank_matrix"] / n_sv,
               sigma_max_matrix=m["sigma_max_matrix"], stable_rank_matrix=m["stable_rank_matrix"],
               n_singular_values=n_sv)
    return torch.linalg.svdvals(w).cpu().numpy() if full else None


def _conv_columns(row: dict[str, Any], spec: LayerSpec, w: torch.Tensor, *, full: bool,
                  n_iter: int) -> np.ndarray | None:
    m = matrix_columns(w.reshape(w.shape[0], -1))
    row.update(sigma_max_matrix=m["sigma_max_matrix"], stable_rank_matrix=m["stable_rank_matrix"])
    if spec.input_size is None:
        _add_note(row, "input size unknown: operator columns not computed")
        return None
    values = _circular_columns(row, spec, w, full)
    _zero_pad_columns(row, spec, w, n_iter)
    return values


def _circular_columns(row: dict[str, Any], spec: LayerSpec, w: torch.Tensor,
                      full: bool) -> np.ndarray | None:
    """Exact circular-padding σ_max, ||op||_F, stable ranks (and all singular values if ``full``)."""
    size, stride, dil, g = spec.input_size, spec.stride, spec.dilation, spec.groups
    try:
        if full:
            sv = engine.singular_values(w, size, stride, dil, g)
            sigma, values = float(sv[0]), sv.cpu().numpy()
        else:
            sigma, values = engine.sigma_max_exact(w, size, stride, dil, g), None
    except ValueError as exc:
        _add_note(row, f"exact spectrum not computed: {exc}")
        return None
    fro = engine.frobenius(w, size, stride, None, dil)
    n_sv = engine.n_singular_values(w.shape[0], w.shape[1], size, stride, g)
    sr = _ratio(fro ** 2, sigma ** 2)
    row.update(sigma_max_exact=sigma, frobenius=fro, stable_rank=sr, n_singular_values=n_sv,
               stable_rank_normalized=sr / n_sv)
    return values


def _zero_pad_columns(row: dict[str, Any], spec: LayerSpec, w: torch.Tensor, n_iter: int) -> None:
    """σ_max by warm-started power iteration and ||op||_F with the layer's own zero padding."""
    conv = make_conv(spec, w)
    shape = (spec.in_channels, *spec.input_size)
    try:
        v0 = _with_noise(plane_wave_start(w, spec.input_size, spec.stride, spec.dilation,
                                          spec.groups, spec.padding))
        sigma, _ = engine.power_sigma(conv, shape, n_iter, v0)
        fro = engine.frobenius(w, spec.input_size, spec.stride, spec.padding, spec.dilation)
    except (ValueError, RuntimeError) as exc:
        _add_note(row, f"power iteration not run: {str(exc).splitlines()[0][:120]}")
        return
    row.update(sigma_max_power=sigma, frobenius_zero_pad=fro,
               stable_rank_zero_pad=_ratio(fro ** 2, sigma ** 2))
    exact = row["sigma_max_exact"]
    if isinstance(exact, float) and exact > 0:
        row["sigma_gap_rel"] = (sigma - exact) / exact


def _with_noise(v0: torch.Tensor | None) -> torch.Tensor | None:
    """Add a small seeded random component (5% of the norm) to a warm start.

    The plane wave lives in one group's channels (and, for 1x1 kernels, one polyphase component);
    the power iteration preserves such supports, so without the noise it could not leave a group
    whose circular norm is largest but whose zero-padded norm is not.
    """
    if v0 is None:
        return None
    gen = torch.Generator(device="cpu").manual_seed(0)
    noise = torch.randn(v0.shape, generator=gen, dtype=torch.float64).to(v0)
    return v0 / v0.norm().clamp_min(1e-30) + _WARM_NOISE * noise / noise.norm()


def make_conv(spec: LayerSpec, w: torch.Tensor) -> nn.Conv2d:
    """A bias-free ``nn.Conv2d`` with the layer's geometry holding ``w`` (no parametrizations)."""
    conv = nn.Conv2d(spec.in_channels, w.shape[0], tuple(w.shape[-2:]), stride=spec.stride,
                     padding=spec.padding, dilation=spec.dilation, groups=spec.groups, bias=False,
                     padding_mode=spec.padding_mode, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        conv.weight.copy_(w)
    conv.weight.requires_grad_(False)
    return conv


def plane_wave_start(w: torch.Tensor, size: tuple[int, int], stride: tuple[int, int],
                     dilation: tuple[int, int], groups: int,
                     padding: tuple[int, int] = (0, 0)) -> torch.Tensor | None:
    """Top right singular vector of the *circular* operator, as an input image (c_in, h, w).

    The circular operator's top singular vectors are (polyphase) plane waves at the frequency ω of
    the (n/s)-grid where the kernel symbol K(ω) has its largest singular value; the zero-padded
    layer's top vector differs by boundary effects only, so it is a good warm start.  Candidates are
    the few frequencies with the largest ||K(ω)||_F.  Returns None (random start) when the symbol
    would be large or the geometry does not allow the circular operator.  The layer reads
    x[s i + d a - p] where the symbol assumes x[s i + d a], so the image is rolled by -p.
    """
    c_out, cig, kh, kw = w.shape
    if (kh, kw) == (1, 1):
        return _one_by_one_start(w, size, stride, groups)
    if c_out * cig * stride[0] * stride[1] * size[0] * (size[1] // 2 + 1) > _WARM_START_MAX_ELEMENTS:
        return None
    try:
        sym = _fallback.polyphase_symbol(w, size, stride=stride, dilation=dilation, groups=groups)
    except ValueError:
        return None
    f1, f2, g, vec = _top_frequency(sym)
    x = _plane_wave(vec.conj(), (f1, f2), g, groups, cig, size, stride)
    return torch.roll(x, shifts=(-padding[0], -padding[1]), dims=(1, 2))


def _one_by_one_start(w: torch.Tensor, size: tuple[int, int], stride: tuple[int, int],
                      groups: int) -> torch.Tensor:
    """1x1 kernel: the top vector is a constant image (on the read pixels) times W's top right
    singular vector, found by matrix power iteration on the best group (cheap, any size)."""
    mats = w.reshape(groups, w.shape[0] // groups, w.shape[1]).double()
    v = torch.ones(groups, w.shape[1], 1, dtype=mats.dtype, device=w.device)
    for _ in range(_MATRIX_POWER_STEPS):
        v = mats.mT @ (mats @ v)
        v = v / v.norm(dim=1, keepdim=True).clamp_min(1e-300)
    g = int(torch.argmax((mats @ v).norm(dim=(1, 2))))
    x = torch.zeros(groups * w.shape[1], *size, dtype=w.dtype, device=w.device)
    x[g * w.shape[1]:(g + 1) * w.shape[1], ::stride[0], ::stride[1]] = v[g].to(w.dtype)[:, :, None]
    return x


def _complex(w: torch.Tensor) -> torch.dtype:
    return torch.complex128 if w.dtype == torch.float64 else torch.complex64


def _top_frequency(sym: torch.Tensor) -> tuple[int, int, int, torch.Tensor]:
    """(ω1, ω2, group, top right singular vector) among the largest-Frobenius candidates."""
    energy = sym.abs().pow(2).sum(dim=(-2, -1)).reshape(-1)
    cand = torch.topk(energy, min(_WARM_CANDIDATES, energy.numel())).indices
    mats = sym.reshape(-1, *sym.shape[-2:])[cand]
    _, s, vh = torch.linalg.svd(mats, full_matrices=False)
    best = int(torch.argmax(s[:, 0]))
    f1, f2, g = np.unravel_index(int(cand[best]), sym.shape[:3])
    return int(f1), int(f2), int(g), vh[best, 0].conj()


def _plane_wave(vec: torch.Tensor, freq: tuple[int, int], group: int, groups: int, cig: int,
                size: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Image with x[c, s_h u + r, s_w v + t] = Re(vec[c, r, t] e^{2πi(ω1 u/H + ω2 v/W)}).

    (H, W) = size / stride is the polyphase grid; only the group's input channels are non-zero.
    """
    grid = (size[0] // stride[0], size[1] // stride[1])
    ii = torch.arange(grid[0], device=vec.device, dtype=torch.float64)
    jj = torch.arange(grid[1], device=vec.device, dtype=torch.float64)
    phase = 2 * math.pi * (freq[0] * ii[:, None] / grid[0] + freq[1] * jj[None, :] / grid[1])
    wave = torch.polar(torch.ones_like(phase), phase).to(vec.dtype)  # (H, W)
    field = vec.reshape(cig, stride[0], stride[1], 1, 1) * wave  # (cig, sh, sw, H, W)
    part = field.real if bool(field.real.any()) else field.imag  # a purely imaginary DC component
    block = part.permute(0, 3, 1, 4, 2).reshape(cig, size[0], size[1])
    x = torch.zeros(groups * cig, *size, device=vec.device, dtype=vec.real.dtype)
    x[group * cig:(group + 1) * cig] = block
    return x
