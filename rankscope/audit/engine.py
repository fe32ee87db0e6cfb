"""Bindings to the conv-spectrum engine ``rankscope.spectra``, with private fallbacks.

Functions take explicit geometry (size, stride, dilation, groups as pairs/ints) and return floats or
tensors.  1x1 kernels take an exact shortcut instead of a 2-D FFT: their circular operator applies W
(per group) at each of the (n/s)^2 output positions, so its singular values are those of each group's
c_out/g x c_in/g matrix, each repeated (n/s)^2 times (padded with zeros up to min(c_out/g, s^2 c_in/g)
per position when strided, the unread polyphase components).  Frobenius norms use the closed forms.
"""
from __future__ import annotations

import contextlib
import functools
from types import SimpleNamespace
from typing import Iterator

import torch
from torch import nn

from rankscope.audit import _fallback

Pair = tuple[int, int]


@functools.lru_cache(maxsize=1)
def spectra_backend() -> SimpleNamespace:
    """The functions in use: ``rankscope.spectra``'s where present, else the private fallbacks."""
    ns = SimpleNamespace(conv_spectral_norm=_fallback.conv_spectral_norm,
                         conv_singular_values=_fallback.conv_singular_values,
                         power_iteration=_fallback.power_iteration, source="rankscope.audit._fallback")
    try:
        from rankscope import spectra  # noqa: WPS433 (lazy: the engine may be absent or partial)
    except Exception:  # pragma: no cover - depends on the engine's presence
        return ns
    found = [name for name in ("conv_spectral_norm", "conv_singular_values", "power_iteration")
             if hasattr(spectra, name)]
    for name in found:
        setattr(ns, name, getattr(spectra, name))
    if found:
        ns.source = "rankscope.spectra" + ("" if len(found) == 3 else f" ({', '.join(found)})")
    return ns


@contextlib.contextmanager
def intra_op_threads(n: int | None) -> Iterator[None]:
    """Run with ``n`` intra-op threads (None or 0: leave torch's setting), restoring it afterwards.

    The audit defaults to 1.  Measured on the 2-core development machine while other processes kept
    it busy: batched ``eigvalsh`` of four 512x512 complex matrices took 15.9 s with 2 threads and
    0.23 s with 1; 20 conv2d + conv_transpose2d pairs (64 channels, 1x1, 56x56) 0.76-3.2 s with 2
    threads and 0.06-0.11 s with 1 (OpenMP threads spin while the cores are busy).
    """
    before = torch.get_num_threads()
    if n:
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        if n and torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _group_mats(w: torch.Tensor, groups: int) -> torch.Tensor:
    """(g, c_out/g, c_in/g) matrices of a 1x1 kernel."""
    return w.reshape(groups, w.shape[0] // groups, w.shape[1])


def sigma_max_exact(w: torch.Tensor, size: Pair, stride: Pair, dilation: Pair, groups: int) -> float:
    """Largest singular value of the circular-padded operator (Sedghi et al. 2019)."""
    if tuple(w.shape[-2:]) == (1, 1):
        _fallback_check_stride(size, stride)
        return float(torch.linalg.matrix_norm(_group_mats(w, groups), ord=2).max())
    out = spectra_backend().conv_spectral_norm(w, size, stride=stride, dilation=dilation,
                                               groups=groups)
    return float(out)


def singular_values(w: torch.Tensor, size: Pair, stride: Pair, dilation: Pair, groups: int
                    ) -> torch.Tensor:
    """All singular values of the circular-padded operator, descending (1x1: exact shortcut)."""
    if tuple(w.shape[-2:]) == (1, 1):
        _fallback_check_stride(size, stride)
        cells = (size[0] // stride[0]) * (size[1] // stride[1])
        sv = torch.linalg.svdvals(_group_mats(w, groups))  # (g, r)
        rank_bound = min(w.shape[0] // groups, w.shape[1] * stride[0] * stride[1])
        sv = torch.nn.functional.pad(sv, (0, rank_bound - sv.shape[-1]))  # zero phases when s > 1
        return sv.reshape(-1).repeat(cells).sort(descending=True).values
    out = spectra_backend().conv_singular_values(w, size, stride=stride, dilation=dilation,
                                                 groups=groups)
    return out.reshape(-1)


def _fallback_check_stride(size: Pair, stride: Pair) -> None:
    if size[0] % stride[0] or size[1] % stride[1]:
        raise ValueError(f"stride {stride} does not divide input size {size}")


def n_singular_values(c_out: int, c_in_per_group: int, size: Pair, stride: Pair, groups: int) -> int:
    """Number of singular values of the circular operator: g * (n/s)^2 * min(c_out/g, s^2 c_in/g)."""
    cells = (size[0] // stride[0]) * (size[1] // stride[1])
    return groups * cells * min(c_out // groups, c_in_per_group * stride[0] * stride[1])


def frobenius(w: torch.Tensor, size: Pair, stride: Pair, padding: Pair | None, dilation: Pair) -> float:
    """||op||_F in closed form: circular padding if ``padding`` is None, else that zero padding."""
    if padding is None:
        return _fallback.frobenius_circular(w, size, stride=stride)
    return _fallback.frobenius_zero(w, size, stride=stride, padding=padding, dilation=dilation)


def power_sigma(conv: nn.Conv2d, input_shape: tuple[int, int, int], n_iter: int,
                v0: torch.Tensor | None) -> tuple[float, torch.Tensor]:
    """Warm-started power iteration on the layer as it computes (Behrmann et al. 2019)."""
    with torch.no_grad():
        try:
            est, vec = spectra_backend().power_iteration(conv, input_shape, n_iter=n_iter, v0=v0)
        except ValueError:
            if conv.padding_mode != "zeros":
                raise
            # rankscope.spectra (at the time of writing) rejects padding (0, 0); same algorithm here.
            est, vec = _fallback.power_iteration(conv, input_shape, n_iter=n_iter, v0=v0)
    return float(est), vec.detach()
