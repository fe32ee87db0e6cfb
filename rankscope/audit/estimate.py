"""How long the full spectra (``full=True``) would take, from timings measured on this machine.

The full circular spectrum of a conv is one SVD per frequency of the (n/s)-grid's rfft half and per
group, of a c_out/g x (s_h s_w c_in/g) complex matrix (1x1 kernels: one real SVD per group).  For each
distinct matrix shape one SVD is timed (matrices with more than ``_TIMED_MAX`` entries are timed at a
smaller size of the same aspect and scaled by r c min(r, c)); the layer's estimate is that time times
its number of matrices.  The FFT and sorting are cheap next to the SVDs and are not counted.
"""
from __future__ import annotations

import time

import torch

from rankscope.audit.layers import LayerSpec

_SAMPLE = 2
_TIMED_MAX = 128 * 512


def _per_matrix_seconds(rows: int, cols: int, dtype: torch.dtype, device: torch.device,
                        cache: dict[tuple, float]) -> float:
    key = (rows, cols, dtype, device)
    scale = 1.0
    while rows * cols > _TIMED_MAX and min(rows, cols) > 8:
        rows, cols, scale = rows // 2, cols // 2, scale * 8.0
    if key not in cache:
        mats = torch.randn(_SAMPLE, rows, cols, dtype=dtype, device=device)
        torch.linalg.svdvals(mats[:1])  # warm-up (allocations, kernels)
        start = time.perf_counter()
        torch.linalg.svdvals(mats)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cache[key] = scale * (time.perf_counter() - start) / _SAMPLE
    return cache[key]


def full_spectrum_seconds(spec: LayerSpec, cache: dict[tuple, float]) -> float:
    """Estimated seconds for all singular values of one layer (0 when nothing would be computed)."""
    w = spec.weight
    device = w.device
    real = torch.float64 if w.dtype == torch.float64 else torch.float32
    if spec.kind == "linear":
        return _per_matrix_seconds(*w.shape, real, device, cache)
    if spec.input_size is None:
        return 0.0
    c_out, cig, kh, kw = w.shape
    g = spec.groups
    if (kh, kw) == (1, 1):
        return g * _per_matrix_seconds(c_out // g, cig, real, device, cache)
    sh, sw = spec.stride
    cplx = torch.complex128 if real == torch.float64 else torch.complex64
    n_mats = g * (spec.input_size[0] // sh) * ((spec.input_size[1] // sw) // 2 + 1)
    return n_mats * _per_matrix_seconds(c_out // g, cig * sh * sw, cplx, device, cache)
