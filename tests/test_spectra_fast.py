"""The fast spectra paths (rankscope.spectra._taps/_fast/_lapack) against the dense oracle and the
straightforward path (rfft2 of the padded kernel, batched svdvals / eigvalsh of every frequency)."""
from __future__ import annotations

import itertools

import pytest
import torch

from rankscope.spectra import _fast, _lapack, _taps, conv_singular_values, conv_spectral_norm
from rankscope.spectra import conv_stable_rank, dense_conv_operator, stable_rank
from rankscope.spectra._checks import conv_spec
from rankscope.spectra.fourier import frequency_matrices, largest_from_matrices, spectrum_from_matrices

RTOL = 1e-6


@pytest.fixture(autouse=True)
def _one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _weight(*shape, seed=0, dtype=torch.float64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=dtype)


def _padded_rfft_matrices(w, size, s, d, g):
    """The textbook construction: zero-pad the dilated kernel to n×m, polyphase split, rfft2."""
    c_out, ci_g, kh, kw = w.shape
    (n, m), (sh, sw), (dh, dw) = size, s, d
    grid = w.new_zeros(c_out, ci_g, n, m)
    grid[..., : dh * (kh - 1) + 1: dh, : dw * (kw - 1) + 1: dw] = w
    grid = grid.view(c_out, ci_g, n // sh, sh, m // sw, sw).permute(0, 1, 3, 5, 2, 4)
    spec = torch.fft.rfft2(grid)  # (co, ci_g, sh, sw, nq, mh)
    nq, mh = spec.shape[-2:]
    spec = spec.reshape(g, c_out // g, ci_g, sh, sw, nq, mh)
    return spec.permute(0, 5, 6, 1, 2, 3, 4).reshape(g, nq * mh, c_out // g, ci_g * sh * sw)


# (c_out, c_in, groups), kernel, input size, stride, dilation
GEOMETRIES = [
    (cg, k, size, s, d)
    for cg, k, size, s, d in itertools.product(
        [(4, 3, 1), (6, 4, 2), (4, 4, 4), (3, 8, 1), (9, 2, 1)],
        [(3, 3), (1, 1), (2, 3)], [(6, 6), (4, 6)], [(1, 1), (2, 2), (2, 1)], [(1, 1), (2, 1)])
    if (d[0] * (k[0] - 1) + 1 <= size[0]) and (d[1] * (k[1] - 1) + 1 <= size[1])
]


@pytest.mark.parametrize("cg,k,size,s,d", GEOMETRIES)
def test_tap_matrices_and_gram_series_match_the_padded_fft(cg, k, size, s, d):
    (c_out, c_in, g) = cg
    w = _weight(c_out, c_in // g, *k, seed=7)
    spec = conv_spec(w, s, d, g, allow_batch=True)
    lay = _taps.layout(spec, size)
    mats = _taps.build_matrices(spec, lay)
    torch.testing.assert_close(mats, _padded_rfft_matrices(w, size, s, d, g), rtol=0, atol=1e-12)
    for left in (True, False):
        gram = _taps.gram_matrices(_taps.gram_series(spec, lay, left), lay, torch.arange(lay.n_freq))
        want = mats @ mats.mH if left else (mats.mH @ mats).conj()
        torch.testing.assert_close(gram, want, rtol=0, atol=1e-11)
    traces = _taps.gram_traces(_taps.gram_series(spec, lay), lay)
    torch.testing.assert_close(traces, mats.abs().square().sum(dim=(-1, -2)), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("cg,k,size,s,d", GEOMETRIES[::3])
def test_all_singular_values_match_dense_oracle(cg, k, size, s, d):
    (c_out, c_in, g) = cg
    w = _weight(c_out, c_in // g, *k, seed=11)
    want = torch.linalg.svdvals(dense_conv_operator(w, size, stride=s, dilation=d, groups=g))
    got = conv_singular_values(w, size, stride=s, dilation=d, groups=g)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=RTOL * float(want[0]))
    torch.testing.assert_close(conv_spectral_norm(w, size, stride=s, dilation=d, groups=g), want[0],
                               rtol=1e-9, atol=0)


@pytest.mark.parametrize("guard", [0.0, 1e-7, 1.0])
def test_gram_guard_any_setting_matches_straightforward_path(monkeypatch, guard):
    # guard 0: every frequency by svdvals; 1.0: none (pure Gram route); default in between.
    monkeypatch.setattr(_fast, "GUARD_RTOL", guard)
    w = _weight(2, 24, 16, 3, 3, seed=3)  # a 5-D stack, 16 -> 24 channels at 12x12
    spec = conv_spec(w, 1, 1, 1, allow_batch=True)
    mats, mult = frequency_matrices(spec, (12, 12))
    want = spectrum_from_matrices(mats, mult)
    got = conv_singular_values(w, 12)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=0)


def test_rank_deficient_kernel_goes_to_svdvals_and_matches_oracle():
    # Rank-1 taps: most singular values are exactly 0; the Gram route alone would give ~1e-8·σ₁.
    u, v = _weight(6, 1, seed=1), _weight(1, 5, seed=2)
    w = (u @ v)[:, :, None, None] * _weight(1, 1, 3, 3, seed=4)
    want = torch.linalg.svdvals(dense_conv_operator(w, (6, 6)))
    got = conv_singular_values(w, 6)
    torch.testing.assert_close(got, want, rtol=RTOL, atol=1e-12 * float(want[0]))


def test_realistic_layer_all_values_to_1e6_relative():
    w = _weight(64, 64, 3, 3, seed=5) / 24
    spec = conv_spec(w, 1, 1, 1, allow_batch=True)
    mats, mult = frequency_matrices(spec, (16, 16))
    want = spectrum_from_matrices(mats, mult)[0]
    got = conv_singular_values(w, 16)
    assert float(((got - want).abs() / want).max()) < RTOL


@pytest.mark.parametrize("cache", [True, False])
@pytest.mark.parametrize("geo", [dict(stride=1, groups=1), dict(stride=2, groups=2), dict(stride=1, dilation=2)])
def test_certified_sigma_max_matches_exhaustive(monkeypatch, cache, geo):
    monkeypatch.setattr(_fast, "SMALL_WORK", 0)  # force the Cholesky-screened path
    if not cache:
        monkeypatch.setattr(_fast, "CACHE_BYTES", 0)
    w = _weight(3, 12, 12 // geo.get("groups", 1), 3, 3, seed=9)
    spec = conv_spec(w, geo.get("stride"), geo.get("dilation"), geo.get("groups"), allow_batch=True)
    want = largest_from_matrices(frequency_matrices(spec, (12, 12))[0])
    got = conv_spectral_norm(w, 12, **geo)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=0)
    dense = torch.linalg.svdvals(dense_conv_operator(w[0], 12, **geo))
    torch.testing.assert_close(conv_stable_rank(w[0], 12, **geo), stable_rank(dense), rtol=1e-9, atol=0)


def test_certified_sigma_max_float32_and_zero_and_one_tap(monkeypatch):
    monkeypatch.setattr(_fast, "SMALL_WORK", 0)
    w = _weight(16, 16, 3, 3, seed=2)
    got = conv_spectral_norm(w.float(), 16)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), conv_spectral_norm(w, 16), rtol=1e-5, atol=0)
    assert float(conv_spectral_norm(torch.zeros(4, 4, 3, 3), 8)) == 0.0
    pointwise = _weight(5, 3, 1, 1, seed=8)
    torch.testing.assert_close(conv_spectral_norm(pointwise, 8, stride=2),
                               torch.linalg.matrix_norm(pointwise[..., 0, 0], ord=2), rtol=1e-12, atol=0)


def test_sigma_max_gradient_equals_straightforward_gradient():
    w = _weight(8, 6, 3, 3, seed=6).requires_grad_()
    conv_spectral_norm(w, 8, stride=2).backward()
    fast = w.grad.clone()
    w.grad = None
    largest_from_matrices(frequency_matrices(conv_spec(w, 2, 1, 1, allow_batch=True), (8, 8))[0]).sum().backward()
    torch.testing.assert_close(fast, w.grad, rtol=1e-8, atol=1e-10)
    sv = conv_singular_values(w, 8, stride=2)  # autograd on: the differentiable svdvals route
    assert sv.requires_grad


def test_lapack_helpers_restore_threads_and_agree_with_torch(monkeypatch):
    torch.set_num_threads(2)
    with _lapack.single_threaded():
        assert torch.get_num_threads() == 1
    assert torch.get_num_threads() == 2
    torch.set_num_threads(1)
    a = torch.randn(6, 64, 64, dtype=torch.complex128, generator=torch.Generator().manual_seed(0))
    gram = a @ a.mH
    top = torch.linalg.eigvalsh(gram)[:, -1]
    level = top * torch.tensor([1.01, 0.99] * 3)  # above λ_max: definite; below: not
    shifted = torch.eye(64) * level[:, None, None] - gram
    assert _lapack.cholesky_fails(shifted.clone()).tolist() == [False, True] * 3
    torch.testing.assert_close(_lapack.eigvalsh(gram), torch.linalg.eigvalsh(gram))
    torch.testing.assert_close(_lapack.svdvals(a), torch.linalg.svdvals(a))


@pytest.mark.parametrize("k,size,s", [((5, 5), (8, 8), 1), ((3, 3), (12, 12), 1), ((3, 3), (8, 8), 2)])
def test_direct_and_series_gram_sources_agree(k, size, s):
    spec = conv_spec(_weight(6, 4, *k, seed=12), s, 1, 1, allow_batch=True)
    lay = _taps.layout(spec, size)
    freq = torch.arange(lay.n_freq)
    for left in (True, False):
        dim = 6 if left else 4 * s * s
        direct = _taps.DirectGram(spec, left, dim).matrices(lay, freq, 0)
        series = _taps.gram_series(spec, lay, left).matrices(lay, freq, 0)
        torch.testing.assert_close(torch.linalg.eigvalsh(direct), torch.linalg.eigvalsh(series), rtol=0, atol=1e-11)
        torch.testing.assert_close(_taps.DirectGram(spec, left, dim).traces(lay)[0].double(),
                                   _taps.gram_series(spec, lay, left).traces(lay)[0], rtol=1e-12, atol=0)
