"""Per-frequency matrices and Gram matrices of a circular conv, straight from its taps.

Polyphase taps. With stride s, dilation d and an n×m torus, tap (a, b) sits at (d_h·a, d_w·b) =
s·q + r: polyphase offset q = (q_h, q_w) on the (n/s_h)×(m/s_w) grid, slot r = (r_h, r_w). At the
rfft2 frequency f = (u, v) of that grid the operator is (Sedghi, Gupta & Long 2019; Senderovich
et al. 2022 for strides)

    M(f) = Σ_taps e^{−iφ_f(q)} B_tap,    φ_f(q) = 2π(u·q_h/n_q + v·q_w/m_q),

a c_out×(s²·c_in) matrix, B_tap the tap's weight W[:, :, a, b] in the column block of slot r. This
is a (F × taps) @ (taps × entries) matmul: no zero-padded n×m kernel, no FFT. The 2-D DFT of the
padded kernel (the textbook route) gives the same matrices at a cost growing with n·m·c_out·c_in.

Gram by autocorrelation. The Gram matrix of the smaller side is itself a short Fourier series:

    M Mᴴ = Σ_Δ e^{−iφ_f(Δ)} K_L[Δ],   K_L[Δ] = Σ_{q−q'=Δ, r=r'} W_tap W_tap'ᵀ   (c_out×c_out),
    MᴴM ≅ Σ_Δ e^{−iφ_f(Δ)} K_R[Δ],     K_R[Δ] = Σ_{q−q'=Δ} B_tapᵀ B_tap'        (s²c_in×s²c_in),

(≅: complex conjugate, same eigenvalues) with at most (2k−1)² offsets Δ and K[−Δ] = K[Δ]ᵀ. The K
cost (taps² small real matmuls) does not grow with the input size; each Gram is then two real
(F × offsets) @ (offsets × d²) matmuls instead of one complex c_out×c_in×… product per frequency.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from ._checks import ConvSpec, Pair


@dataclass(frozen=True)
class Layout:
    """Frequency grid and polyphase tap geometry of one circular conv (see module docstring)."""

    nq: int        # rows of the polyphase grid, n / s_h
    mq: int        # cols of the polyphase grid, m / s_w
    slots: int     # s_h·s_w polyphase slots
    qh: Tensor     # (T,) long: polyphase row offset of each tap (taps in weight order a·kw + b)
    qw: Tensor     # (T,) long
    slot: Tensor   # (T,) long: r_h·s_w + r_w

    @property
    def n_freq(self) -> int:
        """F, the number of rfft2 frequencies (rows nq, cols mq//2 + 1) of the polyphase grid."""
        return self.nq * (self.mq // 2 + 1)


def layout(spec: ConvSpec, size: Pair) -> Layout:
    """Tap geometry of ``spec`` on an input of size ``size`` (already validated)."""
    (kh, kw), (sh, sw), (dh, dw) = spec.kernel, spec.stride, spec.dilation
    ph = (dh * torch.arange(kh)).repeat_interleave(kw)
    pw = (dw * torch.arange(kw)).repeat(kh)
    return Layout(size[0] // sh, size[1] // sw, sh * sw, ph // sh, pw // sw, (ph % sh) * sw + pw % sw)


def rfft_multiplicity(rows: int, cols: int) -> Tensor:
    """How often each rfft2 frequency of a rows×cols grid occurs in the full spectrum, shape (F,).

    Column 0 (and column cols/2 for even cols) is closed under ω -> -ω, so those frequencies are
    already all present in the half-spectrum; every other column stands for itself and its mirror.
    """
    per_col = torch.full((cols // 2 + 1,), 2, dtype=torch.long)
    per_col[0] = 1
    if cols % 2 == 0:
        per_col[-1] = 1
    return per_col.repeat(rows)


def phases(lay: Layout, dq_h: Tensor, dq_w: Tensor, freq: Tensor, dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """cos φ_f(Δq), sin φ_f(Δq) of shape (len(freq), len(Δq)); φ reduced exactly in integers."""
    mh = lay.mq // 2 + 1
    u, v = (freq // mh)[:, None], (freq % mh)[:, None]
    num = (u * dq_h[None] % lay.nq) * lay.mq + (v * dq_w[None] % lay.mq) * lay.nq
    angle = (2 * math.pi / (lay.nq * lay.mq)) * num.to(torch.float64)
    return angle.cos().to(dtype), angle.sin().to(dtype)


def _taps(spec: ConvSpec) -> Tensor:
    """Weight as (B·G, T, c_out/G, c_in/G): one matrix per tap, batch and group first."""
    w = spec.weight
    bsz, c_out, ci_g = w.shape[:3]
    g = spec.groups
    return w.reshape(bsz * g, c_out // g, ci_g, -1).permute(0, 3, 1, 2)


def _embedded(spec: ConvSpec, lay: Layout) -> Tensor:
    """B_tap: each tap's matrix in its slot's column block, (B·G, T, c_out/G, c_in/G·slots).

    Columns are ordered (channel, slot) as in ``fourier.frequency_matrices``'s polyphase split.
    """
    taps = _taps(spec)
    onehot = torch.nn.functional.one_hot(lay.slot, lay.slots).to(taps)  # (T, S)
    emb = taps[..., None] * onehot[None, :, None, None, :]  # (BG, T, co_g, ci_g, S)
    return emb.flatten(-2)


def _mm(a: Tensor, b: Tensor) -> Tensor:
    """a @ b; through numpy (OpenBLAS) outside autograd: 2× faster than torch's MKL for the
    skinny (F × few) @ (few × d²) products here (measured on this project's AMD machine)."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return a @ b
    return torch.from_numpy(a.detach().numpy() @ b.detach().numpy())


def _interleaved(coef_re: Tensor, coef_im: Tensor) -> Tensor:
    """Stack real row-blocks so that [a_re, a_im] @ out = (a_re @ coef_re) + i(a_im @ coef_im),
    with the complex result interleaved (view_as_complex, no copy): (…, R₁+R₂, 2E)."""
    out = coef_re.new_zeros(*coef_re.shape[:-2], coef_re.shape[-2] + coef_im.shape[-2], 2 * coef_re.shape[-1])
    out[..., : coef_re.shape[-2], 0::2] = coef_re
    out[..., coef_re.shape[-2]:, 1::2] = coef_im
    return out


def build_matrices(spec: ConvSpec, lay: Layout, freq: Optional[Tensor] = None,
                   item: Optional[int] = None) -> Tensor:
    """M(f) for the frequencies ``freq`` (default all F), complex, shape (B·G, len(freq), r, c).

    r = c_out/G, c = (c_in/G)·s_h·s_w; ``item`` keeps one (batch, group) index only (leading dim
    1). Differentiable in the weight.
    """
    freq = torch.arange(lay.n_freq) if freq is None else freq
    emb = _embedded(spec, lay)
    emb = emb if item is None else emb[item:item + 1]
    bg, taps, rows, cols = emb.shape
    cos, sin = phases(lay, lay.qh, lay.qw, freq, emb.dtype)  # (F', T)
    flat = emb.reshape(bg, taps, rows * cols)
    mats = _mm(torch.cat([cos, sin], dim=1), _interleaved(flat, -flat))  # e^{−iφ} = cos φ − i sin φ
    return torch.view_as_complex(mats.view(bg, len(freq), rows, cols, 2))


@dataclass(frozen=True)
class GramSeries:
    """G(f) = K0 + Σ_{Δ>0} [cos φ_f(Δ)·(K_Δ + K_Δᵀ) − i sin φ_f(Δ)·(K_Δ − K_Δᵀ)] per (batch, group),
    stored as ``coef`` (B·G, 1+2P, 2d²) with [1, cos φ_f, sin φ_f] @ coef = G(f) interleaved."""

    coef: Tensor
    dq_h: Tensor   # (P,) long: the offsets Δ > 0
    dq_w: Tensor   # (P,) long
    dim: int       # d, the order of each Gram matrix
    left: bool     # True: M Mᴴ (d = c_out/G); False: MᴴM (d = s²·c_in/G)

    @property
    def itemsize(self) -> int:
        return self.coef.element_size()

    def matrices(self, lay: Layout, freq: Tensor, item: Optional[int] = None, sign: float = 1.0) -> Tensor:
        return gram_matrices(self, lay, freq, item, sign)

    def traces(self, lay: Layout) -> Tensor:
        return gram_traces(self, lay)


class DirectGram:
    """G(f) = M(f)M(f)ᴴ (or M(f)ᴴM(f)) from the frequency matrices themselves, with the same
    interface as ``GramSeries``: cheaper when the kernel has many tap pairs but the grid has few
    frequencies (e.g. 5×5 kernels on 8×8 inputs). The weight must not need gradients."""

    def __init__(self, spec: ConvSpec, left: bool, dim: int):
        self.spec, self.left, self.dim = spec, left, dim
        self.itemsize = spec.weight.element_size()

    def matrices(self, lay: Layout, freq: Tensor, item: Optional[int] = None, sign: float = 1.0) -> Tensor:
        mats = build_matrices(self.spec, lay, freq, item)
        gram = mats @ mats.mH if self.left else mats.mH @ mats
        gram = gram if item is None else gram[0]
        return gram if sign == 1.0 else gram.neg_()

    def traces(self, lay: Layout) -> Tensor:
        return build_matrices(self.spec, lay).abs().square().sum(dim=(-1, -2))


def gram_source(spec: ConvSpec, lay: Layout):
    """The cheaper of ``gram_series`` and ``DirectGram`` for the smaller-side Gram, by flop count:
    Σ_pairs 2·d²·inner (real) for the series vs F·8·d²·inner (complex) per frequency."""
    co_g, ci_g = spec.weight.shape[1] // spec.groups, spec.weight.shape[2]
    left = co_g <= ci_g * lay.slots
    dim, inner = (co_g, ci_g) if left else (ci_g * lay.slots, co_g)
    series = sum(len(js) for _, js, _ in _pairs(lay, left)) * 2 * dim * dim * inner
    direct = lay.n_freq * 8 * dim * dim * (ci_g * lay.slots if left else co_g)
    return DirectGram(spec, left, dim) if direct < series else gram_series(spec, lay, left)


def _pairs(lay: Layout, left: bool) -> list[tuple[tuple[int, int], list[int], list[int]]]:
    """Tap pairs (j, k) grouped by offset Δ = q_j − q_k ≥ 0 (lexicographic); left: equal slots."""
    groups: dict[tuple[int, int], tuple[list[int], list[int]]] = {}
    qh, qw, slot = lay.qh.tolist(), lay.qw.tolist(), lay.slot.tolist()
    for j in range(len(qh)):
        for k in range(len(qh)):
            delta = (qh[j] - qh[k], qw[j] - qw[k])
            if (left and slot[j] != slot[k]) or delta < (0, 0):
                continue
            pair = groups.setdefault(delta, ([], []))
            pair[0].append(j)
            pair[1].append(k)
    return [(delta, js, ks) for delta, (js, ks) in sorted(groups.items())]


def gram_series(spec: ConvSpec, lay: Layout, left: Optional[bool] = None) -> GramSeries:
    """The autocorrelation series of the smaller-side Gram matrix (module docstring).

    ``left`` forces the side; by default the smaller one (c_out/G ≤ s²·c_in/G: M Mᴴ).
    """
    taps = _taps(spec)  # (BG, T, co_g, ci_g)
    bg, _, co_g, ci_g = taps.shape
    left = co_g <= ci_g * lay.slots if left is None else left
    mats = taps if left else _embedded(spec, lay)  # left pairs need equal slots: taps suffice
    dim = co_g if left else ci_g * lay.slots
    kds, deltas = [], []
    for delta, js, ks in _pairs(lay, left):
        a, b = mats[:, js], mats[:, ks]  # (BG, n, r, c)
        if left:  # Σ W_j W_kᵀ: inner index (pair, c_in)
            kds.append(a.transpose(1, 2).reshape(bg, co_g, -1) @ b.transpose(1, 2).reshape(bg, co_g, -1).mT)
        else:  # Σ B_jᵀ B_k: inner index (pair, c_out)
            kds.append(a.reshape(bg, -1, dim).mT @ b.reshape(bg, -1, dim))
        deltas.append(delta)
    kd = torch.stack(kds, dim=1)  # (BG, 1+P, d, d); deltas[0] == (0, 0)
    sym = torch.cat([kd[:, :1], kd[:, 1:] + kd[:, 1:].mT], dim=1).flatten(2)
    coef = _interleaved(sym, -(kd[:, 1:] - kd[:, 1:].mT).flatten(2))
    dq = torch.tensor(deltas[1:], dtype=torch.long).reshape(-1, 2)
    return GramSeries(coef, dq[:, 0], dq[:, 1], dim, left)


def _design(gs: GramSeries, lay: Layout, freq: Tensor) -> Tensor:
    """[1, cos φ_f(Δ), sin φ_f(Δ)] rows, shape (len(freq), 1+2P)."""
    cos, sin = phases(lay, gs.dq_h, gs.dq_w, freq, gs.coef.dtype)
    return torch.cat([cos.new_ones(len(freq), 1), cos, sin], dim=1)


def gram_matrices(gs: GramSeries, lay: Layout, freq: Tensor, item: Optional[int] = None,
                  sign: float = 1.0) -> Tensor:
    """Hermitian sign·G(f) for ``freq``, shape (B·G, len(freq), d, d); (len(freq), d, d) for one
    (batch, group) index ``item``. (sign = −1 gives −G at no extra cost.)"""
    coef = gs.coef if item is None else gs.coef[item]
    out = _mm(sign * _design(gs, lay, freq), coef)
    return torch.view_as_complex(out.view(*out.shape[:-1], gs.dim, gs.dim, 2))


def gram_traces(gs: GramSeries, lay: Layout) -> Tensor:
    """tr G(f) = ‖M(f)‖_F² for all F frequencies, (B·G, F), without forming G."""
    diag = torch.arange(gs.dim) * (gs.dim + 1) * 2  # real parts of the diagonal entries
    return gs.coef[..., diag].sum(-1) @ _design(gs, lay, torch.arange(lay.n_freq)).mT
