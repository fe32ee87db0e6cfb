"""Exact conv spectra vs the dense-operator oracle, and invariants of norms and stable ranks."""
from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rankscope.spectra import (conv_frobenius_norm, conv_singular_values, conv_spectral_norm,
                               conv_stable_rank, dense_conv_operator, matrix_stable_rank,
                               normalized_stable_rank, operator_shape, separable_singular_values,
                               separable_spectral_norm, stable_rank, zero_padded_spectral_norm)

RTOL = 1e-6


def _weight(c_out, c_in_g, kh, kw, seed=0, dtype=torch.float64):
    return torch.randn(c_out, c_in_g, kh, kw, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _assert_spectrum(got, want):
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want[0].detach()))


# (c_out, c_in, kernel, input (h, w), stride, dilation, groups)
CASES = [
    (c_out, c_in, k, size, s, d, g)
    for (c_out, c_in, g), k, size, s, d in itertools.product(
        [(4, 3, 1), (6, 4, 2), (4, 4, 4), (3, 5, 1)],
        [(3, 3), (1, 1), (2, 3), (5, 5)],
        [(6, 6), (4, 6)],
        [1, 2, (2, 1)],
        [1, 2],
    )
    if (d * (k[0] - 1) + 1 <= size[0]) and (d * (k[1] - 1) + 1 <= size[1])
]


@pytest.mark.parametrize("c_out,c_in,k,size,s,d,g", CASES)
def test_circular_spectrum_matches_dense_oracle(c_out, c_in, k, size, s, d, g):
    w = _weight(c_out, c_in // g, *k, seed=hash((c_out, c_in, k, size)) % 1000)
    want = torch.linalg.svdvals(dense_conv_operator(w, size, stride=s, dilation=d, groups=g))
    got = conv_singular_values(w, size, stride=s, dilation=d, groups=g)
    _assert_spectrum(got, want)
    torch.testing.assert_close(conv_spectral_norm(w, size, stride=s, dilation=d, groups=g), want[0],
                               rtol=RTOL, atol=0)
    fro = conv_frobenius_norm(w, size, stride=s, dilation=d, groups=g, padding="circular")
    torch.testing.assert_close(fro, want.square().sum().sqrt(), rtol=RTOL, atol=0)


@pytest.mark.parametrize("k,size,s,d,pad,g", [
    ((3, 3), (7, 7), 1, 1, 1, 1), ((3, 3), (8, 6), 2, 1, 1, 2), ((5, 3), (9, 8), 2, 2, (4, 2), 1),
    ((2, 2), (6, 7), 1, 1, 0, 1), ((3, 3), (7, 7), 3, 1, 2, 2), ((1, 1), (5, 6), 2, 1, 1, 1),
    ((3, 3), (6, 6), 1, 2, "zeros", 2),
])
def test_zero_padding_matches_dense_oracle(k, size, s, d, pad, g):
    w = _weight(4, 4 // g, *k, seed=3)
    kw = dict(stride=s, dilation=d, groups=g, padding=pad)
    dense = dense_conv_operator(w, size, **kw)
    sv = torch.linalg.svdvals(dense)
    torch.testing.assert_close(conv_frobenius_norm(w, size, **kw), dense.norm(), rtol=RTOL, atol=0)
    torch.testing.assert_close(zero_padded_spectral_norm(w, size, **kw), sv[0], rtol=RTOL, atol=0)
    torch.testing.assert_close(conv_stable_rank(w, size, **kw), stable_rank(sv), rtol=RTOL, atol=0)
    assert operator_shape(w, size, **kw) == tuple(dense.shape)


def test_dense_oracle_is_the_layer_itself():
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dilation=1, bias=False).double()
    x = torch.randn(1, 3, 8, 6, dtype=torch.float64)
    dense = dense_conv_operator(conv, (8, 6))
    torch.testing.assert_close(dense @ x.flatten(), conv(x).flatten())
    circ = nn.Conv2d(3, 4, 3, padding=1, padding_mode="circular", bias=False).double()
    _assert_spectrum(conv_singular_values(circ, (8, 6)),
                     torch.linalg.svdvals(dense_conv_operator(circ, (8, 6))))


def test_module_and_float32_inputs():
    conv = nn.Conv2d(4, 6, 3, stride=2, dilation=1, groups=2, bias=False)
    got = conv_singular_values(conv, 8)
    assert got.dtype == torch.float32
    want = conv_singular_values(conv.weight.detach().double(), 8, stride=2, groups=2)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="contradicts"):
        conv_singular_values(conv, 8, stride=1)


@pytest.mark.parametrize("s,d", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_separable_composite_matches_oracle(s, d):
    dw, pw = _weight(6, 1, 3, 3, seed=1), _weight(5, 6, 1, 1, seed=2)
    dense = dense_conv_operator(pw, 8 // s) @ dense_conv_operator(dw, 8, stride=s, dilation=d, groups=6)
    want = torch.linalg.svdvals(dense)
    _assert_spectrum(separable_singular_values(dw, pw, 8, stride=s, dilation=d), want)
    torch.testing.assert_close(separable_spectral_norm(dw, pw, 8, stride=s, dilation=d), want[0],
                               rtol=RTOL, atol=0)


def test_batched_weights_match_single():
    ws = torch.randn(3, 4, 2, 3, 3, dtype=torch.float64)
    batched = conv_singular_values(ws, 6, groups=2)
    for b in range(3):
        _assert_spectrum(batched[b], conv_singular_values(ws[b], 6, groups=2))
    srs = conv_stable_rank(ws, 6, groups=2)
    assert srs.shape == (3,)
    torch.testing.assert_close(srs[1], stable_rank(batched[1]))


def test_one_by_one_fast_path():
    w = _weight(8, 6, 1, 1)
    for size, s in [(8, 1), (8, 2), ((6, 4), 2)]:
        want = stable_rank(torch.linalg.svdvals(dense_conv_operator(w, size, stride=s)))
        got = conv_stable_rank(w, size, stride=s)
        torch.testing.assert_close(got, want, rtol=RTOL, atol=0)
    torch.testing.assert_close(conv_stable_rank(w, 8), 64 * matrix_stable_rank(w))
    ws = torch.randn(100, 16, 16, 1, 1, dtype=torch.float64)
    torch.testing.assert_close(conv_stable_rank(ws, 32), 1024 * matrix_stable_rank(ws))
    g2 = _weight(8, 3, 1, 1)
    want = stable_rank(torch.linalg.svdvals(dense_conv_operator(g2, 5, groups=2, padding=0)))
    torch.testing.assert_close(conv_stable_rank(g2, 5, groups=2, padding=0), want)


def test_stable_rank_invariants():
    w = _weight(6, 4, 3, 3)
    r = conv_stable_rank(w, 8)
    torch.testing.assert_close(conv_stable_rank(7.5 * w, 8), r)
    torch.testing.assert_close(conv_stable_rank(-w, 8, padding="zeros"), conv_stable_rank(w, 8, padding="zeros"))
    assert 1.0 <= float(r) <= 64 * 4
    nsr = normalized_stable_rank(w, 8)
    torch.testing.assert_close(nsr, r / (64 * 4))
    # identity kernel: the operator is the identity, every singular value is 1
    eye = torch.zeros(3, 3, 3, 3, dtype=torch.float64)
    eye[range(3), range(3), 1, 1] = 1.0
    sv = conv_singular_values(eye, 5)
    torch.testing.assert_close(sv, torch.ones(75, dtype=torch.float64))
    torch.testing.assert_close(conv_stable_rank(eye, 5), torch.tensor(75.0, dtype=torch.float64))


def test_rank_one_kernel():
    # W[o, c, a, b] = u_o v_c h_a k_b: at each frequency Â(ω) = u vᵀ·ĥ(ω)k̂(ω), rank one.
    u, v, h, k = (torch.randn(n, dtype=torch.float64) for n in (5, 4, 3, 3))
    w = torch.einsum("o,c,a,b->ocab", u, v, h, k)
    sv = conv_singular_values(w, 6)
    dense = torch.linalg.svdvals(dense_conv_operator(w, 6))
    _assert_spectrum(sv, dense)
    assert int((sv > 1e-9 * sv[0]).sum()) <= 36
    assert float(matrix_stable_rank(w)) == pytest.approx(1.0)


def test_zero_operator_stable_rank_is_zero_without_warnings(recwarn):
    zero = torch.zeros(4, 4, 3, 3)
    assert float(conv_stable_rank(zero, 6)) == 0.0
    assert float(conv_stable_rank(zero, 6, padding="zeros")) == 0.0
    assert float(conv_stable_rank(torch.zeros(4, 4, 1, 1), 6)) == 0.0
    assert float(matrix_stable_rank(zero)) == 0.0
    assert float(stable_rank(torch.zeros(5))) == 0.0
    assert float(conv_spectral_norm(zero, 6)) == 0.0
    assert len(recwarn) == 0


def test_frobenius_identities():
    w = _weight(4, 3, 3, 3)
    torch.testing.assert_close(conv_frobenius_norm(w, 8), 8 * w.norm())
    torch.testing.assert_close(conv_frobenius_norm(w, 8, stride=2), 4 * w.norm())
    # zero padding loses taps at the border, so it is never larger than circular
    assert float(conv_frobenius_norm(w, 8, padding="zeros")) < float(conv_frobenius_norm(w, 8))
    sv = conv_singular_values(w, (8, 6))
    torch.testing.assert_close(conv_frobenius_norm(w, (8, 6)), sv.square().sum().sqrt())
    conv = nn.Conv2d(3, 4, 3, padding=1, bias=False).double()
    torch.testing.assert_close(conv_frobenius_norm(conv, 7), dense_conv_operator(conv, 7).norm())
