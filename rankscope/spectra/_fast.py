"""Fast exact spectra of circular convs: Gram eigenvalues with an accuracy guard, and a certified
largest singular value that decomposes only the frequencies that can hold it.

All singular values. σᵢ(M)² = λᵢ(G) for the smaller-side Gram G (built by autocorrelation, see
``_taps``); Hermitian ``eigvalsh`` costs about half of ``svdvals``. Squaring doubles the condition
number's effect: with a backward-stable eigensolver |Δλᵢ| ≲ p(d)·eps·λ_max, so the relative error
of σᵢ is ≲ p(d)·eps·λ_max/(2λᵢ) (Golub & Van Loan, Matrix Computations, §8.1 and §8.6). We take
p(d) = d (measured errors are 10–25× smaller) and send every frequency whose smallest σ could miss
``GUARD_RTOL`` to ``svdvals`` of M(f) itself (rank-deficient ones included). Always float64.

Largest singular value. σ₁ = √max_f λ_max(G(f)). A few power steps on every G(f) rank the
frequencies (Rayleigh quotients are lower bounds); the best one is decomposed exactly, giving a
lower bound L. Every frequency with tr G(f) = ‖M(f)‖_F² > L is then certified by a Cholesky
factorisation of L(1+τ)·I − G(f), which exists iff λ_max(G(f)) < L(1+τ) (Higham, Accuracy and
Stability of Numerical Algorithms, 2nd ed., §10.1: floating-point Cholesky is backward stable, so
its success is a certificate up to rounding); the best-ranked survivor is decomposed, L raised,
and the survivors screened again until none is left. Cholesky costs a quarter of ``eigvalsh``.
The result is within τ/2 (plus rounding) of σ₁, relative.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Iterator, Union

import torch
from torch import Tensor

from . import _lapack
from ._checks import ConvSpec, Pair
from ._taps import DirectGram, GramSeries, Layout, build_matrices, gram_source, layout, rfft_multiplicity

GramSource = Union[GramSeries, DirectGram]

CHUNK_BYTES = 32 * 2 ** 20          # Gram matrices assembled per LAPACK call
CACHE_BYTES = 256 * 2 ** 20         # σ₁: keep all Gram matrices of a weight when they fit
CACHE_CHUNK = 2 ** 20               # σ₁: chunk for the passes over kept matrices (~L2 size)
GUARD_RTOL = 1e-7                   # predicted relative error of any σ that sends f to svdvals
SMALL_WORK = 1e7                    # Σ d³ below which σ₁ just decomposes every frequency
POWER_STEPS = 3                     # power steps ranking the frequencies
SLACK = {torch.float64: 1e-10, torch.float32: 1e-6}  # τ: certified σ₁ within τ/2 relative


def _chunks(total: int, dim: int, budget: int = CHUNK_BYTES) -> Iterator[slice]:
    """Slices of range(total) holding ~budget bytes of complex128 d×d matrices (≥ 1 each)."""
    step = max(1, budget // (16 * dim * dim))
    for start in range(0, total, step):
        yield slice(start, min(start + step, total))


def _guarded_values(spec: ConvSpec, lay: Layout, gs: GramSource, item: int, freq: Tensor) -> Tensor:
    """σ (descending) of M(f) for ``freq`` of one (batch, group) item: Gram route + svdvals guard."""
    lam = _lapack.eigvalsh(gs.matrices(lay, freq, item)).flip(-1)  # (F', d) descending
    top = lam[:, :1].clamp_min(torch.finfo(lam.dtype).tiny)
    predicted = torch.finfo(lam.dtype).eps * gs.dim * top / (2 * lam[:, -1:])
    risky = ((lam[:, -1:] <= 0) | (predicted > GUARD_RTOL)).squeeze(-1)
    values = lam.clamp_min(0).sqrt()
    if bool(risky.any()):
        values[risky] = _lapack.svdvals(build_matrices(spec, lay, freq[risky], item)[0])
    return values


def all_singular_values(spec: ConvSpec, size: Pair) -> Tensor:
    """All singular values, (B, N) descending, of the circular operator of ``spec`` (float64 inside,
    returned in the weight's dtype). A single-tap kernel (1×1) has the same M(f) up to a phase at
    every frequency: one small SVD, repeated."""
    lay = layout(spec, size)
    spec64 = replace(spec, weight=spec.weight.detach().to(torch.float64))
    bsz, groups = spec.weight.shape[0], spec.groups
    mult = rfft_multiplicity(lay.nq, lay.mq)
    with _lapack.single_threaded():
        if len(lay.qh) == 1:
            sv = _lapack.svdvals(build_matrices(spec64, lay, torch.zeros(1, dtype=torch.long)))
            sv = sv.expand(-1, lay.n_freq, -1)  # (BG, F, d)
        else:
            gs = gram_source(spec64, lay)
            sv = torch.empty(bsz * groups, lay.n_freq, gs.dim, dtype=torch.float64)
            for item in range(bsz * groups):
                for part in _chunks(lay.n_freq, gs.dim):
                    sv[item, part] = _guarded_values(spec64, lay, gs, item, torch.arange(lay.n_freq)[part])
    sv = sv.reshape(bsz, groups, lay.n_freq, -1).permute(0, 2, 1, 3).reshape(bsz, lay.n_freq, -1)
    sv = sv.repeat_interleave(mult, dim=1).reshape(bsz, -1)
    return sv.sort(dim=-1, descending=True).values.to(spec.weight.dtype)


class _Grams:
    """−G(f) of the items lo, lo+1, … of one batch element, by flat index item·F + f (item counted
    from lo): assembled once and kept when they fit in CACHE_BYTES, else assembled per chunk.
    Negated so that the Cholesky test of level·I − G needs one copy and a diagonal shift."""

    def __init__(self, gs: GramSource, lay: Layout, lo: int, n_items: int):
        self.gs, self.lay, self.lo = gs, lay, lo
        size = n_items * lay.n_freq * gs.dim ** 2 * 2 * gs.itemsize
        everything = torch.arange(lay.n_freq)
        self.cache = ([gs.matrices(lay, everything, lo + i, sign=-1.0) for i in range(n_items)]
                      if size <= CACHE_BYTES else None)

    def get(self, flat: Tensor, fresh: bool = False) -> Tensor:
        """−G for flat indices that all belong to one item; a view unless ``fresh``."""
        item, freq = int(flat[0]) // self.lay.n_freq, flat % self.lay.n_freq
        if self.cache is None:
            return self.gs.matrices(self.lay, freq, self.lo + item, sign=-1.0)
        first = int(freq[0])
        if not fresh and bool((freq == torch.arange(first, first + len(freq))).all()):
            return self.cache[item][first:first + len(freq)]
        return self.cache[item].index_select(0, freq)

    def blocks(self, pool: Tensor, budget: int, fresh: bool = False) -> Iterator[tuple[Tensor, Tensor]]:
        """(indices, −G) over ``pool`` in chunks of ~budget bytes, one item at a time."""
        for part in _chunks(len(pool), self.gs.dim, budget):
            idx = pool[part]
            items = idx // self.lay.n_freq
            for item in items.unique().tolist():
                sub = idx[items == item]
                yield sub, self.get(sub, fresh)


def _quotients(grams: _Grams, pool: Tensor) -> Tensor:
    """Rayleigh quotients vᴴGv ≤ λ_max(G) after POWER_STEPS power steps, for every index of pool
    (on cache-sized chunks: all steps while the matrices are in cache)."""
    gen = torch.Generator().manual_seed(0)
    out = torch.empty(len(pool), dtype=torch.float64)
    pos = torch.empty(int(pool.max()) + 1 if len(pool) else 0, dtype=torch.long)
    pos[pool] = torch.arange(len(pool))
    for sub, neg in grams.blocks(pool, CACHE_CHUNK):
        v = torch.randn(*neg.shape[:-1], 1, dtype=neg.dtype, generator=gen)
        for _ in range(POWER_STEPS):  # −G has the same eigenvectors; sign is irrelevant here
            v = neg @ v
            v = v / v.norm(dim=-2, keepdim=True).clamp_min(torch.finfo(v.real.dtype).tiny)
        out[pos[sub]] = -(v.mH @ neg @ v).real.flatten().double()
    return out


def _failing(grams: _Grams, pool: Tensor, level: float) -> Tensor:
    """The indices of ``pool`` whose G fails the Cholesky certificate λ_max(G) < level."""
    fails = [pool[:0]]
    for sub, shifted in grams.blocks(pool, CACHE_CHUNK, fresh=True):
        shifted.diagonal(dim1=-2, dim2=-1).add_(level)  # level·I − G
        fails.append(sub[_lapack.cholesky_fails(shifted)])
    return torch.cat(fails)


def _top_eig(grams: _Grams, flat: int) -> float:
    """λ_max(G(f)) = −λ_min(−G(f)) of one flat index item·F + f, by eigvalsh."""
    return -float(_lapack.eigvalsh(grams.get(torch.tensor([flat])))[0, 0])


def _certified_top(grams: _Grams, traces: Tensor, tau: float) -> tuple[float, int, int]:
    """max over (item, f) of λ_max(G(f)) for one batch element: (value, item from lo, freq).

    Rank by Rayleigh quotients, decompose the best, then repeat: screen the pool by the Cholesky
    certificate at L(1+τ), decompose the best-ranked survivor, raise L. ``traces`` (items, F).
    """
    flat = traces.flatten()
    rank = _quotients(grams, torch.arange(len(flat)))
    order = rank.argsort(descending=True)
    arg = int(order[0])
    best, pool = _top_eig(grams, arg), order[1:]
    while len(pool):
        pool = pool[flat[pool] > best * (1 + tau)]
        pool = _failing(grams, pool, best * (1 + tau)) if len(pool) else pool
        if not len(pool):
            break
        pick = int(pool[rank[pool].argmax()])
        top = _top_eig(grams, pick)
        if top > best:
            best, arg = top, pick
        pool = pool[pool != pick]
    n_freq = grams.lay.n_freq
    return best, grams.lo + arg // n_freq, arg % n_freq


def _small_top(gs: GramSource, lay: Layout, lo: int, hi: int, n_freq: int) -> tuple[float, int, int]:
    """max λ_max(G(f)) over the first n_freq frequencies of items [lo, hi), by eigvalsh."""
    best, arg = -1.0, (lo, 0)
    for item in range(lo, hi):
        for part in _chunks(n_freq, gs.dim):
            top = _lapack.eigvalsh(gs.matrices(lay, torch.arange(n_freq)[part], item))[:, -1]
            if float(top.max()) > best:
                best, arg = float(top.max()), (item, part.start + int(top.argmax()))
    return best, arg[0], arg[1]


def largest_singular_value(spec: ConvSpec, size: Pair) -> Tensor:
    """σ₁ of the circular operator of ``spec`` for each weight in the stack, shape (B,).

    Computed in the weight's dtype. With autograd on, σ₁ is recomputed differentiably (svdvals
    of M at the maximising frequency), so gradients reach the weight as with ``max`` over all.
    """
    lay = layout(spec, size)
    weight = spec.weight
    bsz, groups = weight.shape[0], spec.groups
    with _lapack.single_threaded():
        gs = gram_source(replace(spec, weight=weight.detach()), lay)
        large = bsz * groups * lay.n_freq * gs.dim ** 3 > SMALL_WORK and len(lay.qh) > 1
        traces = gs.traces(lay) if large else None
        tops, where = [], []
        for b in range(bsz):
            lo, hi = b * groups, (b + 1) * groups
            if traces is None:  # (one tap: G(f) = K0 at every frequency, f = 0 suffices)
                value, item, freq = _small_top(gs, lay, lo, hi, 1 if len(lay.qh) == 1 else lay.n_freq)
            else:
                grams = _Grams(gs, lay, lo, groups)
                value, item, freq = _certified_top(grams, traces[lo:hi], SLACK[weight.dtype])
            tops.append(max(value, 0.0) ** 0.5)
            where.append((item, freq))
        if not (torch.is_grad_enabled() and weight.requires_grad):
            return torch.tensor(tops, dtype=weight.dtype)
        return torch.stack([torch.linalg.svdvals(build_matrices(spec, lay, torch.tensor([f]), item)[0, 0])[0]
                            for item, f in where])
