"""Power iteration, noise sensitivity and bad-input handling of rankscope.spectra."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.spectra import (conv_frobenius_norm, conv_singular_values, conv_spectral_norm,
                               conv_stable_rank, dense_conv_operator, linear_noise_sensitivity,
                               matrix_stable_rank, noise_sensitivity, power_iteration,
                               power_iteration_fn, separable_singular_values, stable_rank,
                               zero_padded_spectral_norm)


LAYERS = [
    dict(c_in=4, c_out=6, k=3, stride=1, padding=1, dilation=1, groups=1),
    dict(c_in=4, c_out=4, k=3, stride=2, padding=1, dilation=1, groups=2),
    dict(c_in=4, c_out=4, k=5, stride=1, padding=4, dilation=2, groups=4),
    dict(c_in=3, c_out=5, k=2, stride=2, padding=0, dilation=1, groups=1),
]


def _conv(spec, seed=0):
    torch.manual_seed(seed)
    return nn.Conv2d(spec["c_in"], spec["c_out"], spec["k"], stride=spec["stride"], bias=False,
                     padding=spec["padding"], dilation=spec["dilation"], groups=spec["groups"]).double()


@pytest.mark.parametrize("spec", LAYERS)
def test_power_iteration_below_exact_and_converges(spec):
    conv = _conv(spec)
    shape = (spec["c_in"], 6, 5)
    exact = float(torch.linalg.matrix_norm(dense_conv_operator(conv, shape[1:]).detach(), ord=2))
    previous = 0.0
    for z in (0, 1, 5, 50, 500, 5000):
        # same start every time, so the estimates form one power-iteration trajectory
        est, vec = power_iteration(conv, shape, n_iter=z, generator=torch.Generator().manual_seed(1))
        est = est.detach()
        assert float(est) <= exact * (1 + 1e-12)
        assert float(est) >= previous * (1 - 1e-12)  # Rayleigh quotient of AᵀA never decreases
        assert vec.shape == (1, *shape)
        previous = float(est)
    assert previous == pytest.approx(exact, rel=1e-6)


def test_power_iteration_warm_start_and_gradient():
    conv = _conv(LAYERS[0])
    shape = (4, 8, 8)
    dense = dense_conv_operator(conv, 8).detach()
    top = torch.linalg.svd(dense).Vh[0]
    est, _ = power_iteration(conv, shape, n_iter=1, v0=top)  # started at the top vector
    assert float(est.detach()) == pytest.approx(float(zero_padded_spectral_norm(conv, 8, padding=1)), rel=1e-8)
    # a warm start continues the trajectory: 10 + 10 iterations == 20 iterations
    start = torch.randn(1, *shape, dtype=torch.float64)
    _, v10 = power_iteration(conv, shape, n_iter=10, v0=start)
    est20, _ = power_iteration(conv, shape, n_iter=20, v0=start)
    torch.testing.assert_close(power_iteration(conv, shape, n_iter=10, v0=v10)[0], est20)
    est.backward()  # gradients flow through σ̃ into the weight
    assert conv.weight.grad is not None and float(conv.weight.grad.norm()) > 0
    w = conv.weight.detach().clone().requires_grad_(True)
    sigma, _ = power_iteration_fn(w, shape, padding=1, n_iter=300)
    sigma.backward()
    # dσ₁/dW = u vᵀ correlated: its norm is 1 when σ₁ is simple (‖u‖=‖v‖=1 over the operator)
    assert float(w.grad.norm()) > 0


def test_power_iteration_circular_module_uses_its_own_padding():
    conv = nn.Conv2d(3, 3, 3, padding=1, padding_mode="circular", bias=False).double()
    est, _ = power_iteration(conv, (3, 6, 6), n_iter=500)
    assert float(est.detach()) == pytest.approx(float(conv_spectral_norm(conv, 6).detach()), rel=1e-6)


def test_zero_weight_power_iteration_is_zero():
    est, vec = power_iteration_fn(torch.zeros(2, 2, 3, 3), (2, 5, 5), padding=1)
    assert float(est) == 0.0 and torch.isfinite(vec).all()


def test_noise_sensitivity_mc_matches_closed_form_and_bounds_stable_rank():
    torch.manual_seed(0)
    w = torch.randn(5, 4, 3, 3, dtype=torch.float64)
    op = lambda x: F.conv2d(x, w, padding=1)  # noqa: E731
    x = torch.randn(3, 4, 6, 6, dtype=torch.float64)
    x[0] = 0.01 * x[0] + dense_top_vector(w)  # near a top singular vector: ψ close to R
    fro = conv_frobenius_norm(w, 6, padding=1)
    rank = float(conv_stable_rank(w, 6, padding=1))
    for scale in (1.0, 1 / math.sqrt(4 * 36)):
        closed = linear_noise_sensitivity(op, x, fro, scale=scale)
        mc = noise_sensitivity(op, x, n_samples=400, scale=scale,
                               generator=torch.Generator().manual_seed(0))
        torch.testing.assert_close(mc, closed, rtol=0.03, atol=0)
        assert bool((closed >= scale**2 * rank * (1 - 1e-12)).all())
    assert float(linear_noise_sensitivity(op, x, fro)[0]) < 1.2 * rank


def dense_top_vector(w):
    dense = dense_conv_operator(w, 6, padding=1)
    return torch.linalg.svd(dense).Vh[0].view(4, 6, 6)


BAD = [
    (lambda: conv_singular_values(torch.randn(3, 3, 3), 8), "4-D"),
    (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 7, stride=2), "does not divide"),
    (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 4, dilation=2), "smaller than the dilated"),
    (lambda: conv_singular_values(torch.full((2, 2, 3, 3), float("nan")), 8), "NaN"),
    (lambda: conv_singular_values(torch.full((2, 2, 3, 3), float("inf")), 8), "NaN or Inf"),
    (lambda: conv_singular_values(torch.randn(3, 2, 3, 3), 8, groups=2), "groups=2 does not divide"),
    (lambda: conv_singular_values(torch.randn(2, 2, 3, 3).half(), 8), "dtype"),
    (lambda: conv_singular_values(torch.randn(2, 2, 3, 3), 8, stride=0), "stride"),
    (lambda: conv_stable_rank(torch.randn(2, 2, 3, 3), 8, method="magic"), "method"),
    (lambda: conv_stable_rank(torch.randn(2, 2, 5, 5), 2, padding=0), "smaller than the dilated"),
    (lambda: conv_frobenius_norm(torch.randn(2, 2, 3, 3), 8, padding="reflect"), "padding"),
    (lambda: power_iteration(nn.Conv2d(3, 2, 3), (4, 8, 8)), "channels"),
    (lambda: power_iteration_fn(torch.randn(2, 2, 3, 3), (2, 8, 8), n_iter=-1), "n_iter"),
    (lambda: stable_rank(torch.tensor([1.0, float("nan")])), "NaN"),
    (lambda: matrix_stable_rank(torch.randn(4, 4)), "4-D"),
    (lambda: separable_singular_values(torch.randn(4, 1, 3, 3), torch.randn(2, 3, 1, 1), 8), "pointwise"),
    (lambda: noise_sensitivity(lambda x: 0 * x, torch.randn(2, 3)), "zero"),
]


@pytest.mark.parametrize("call,match", BAD)
def test_bad_input_raises_one_line_value_error(call, match):
    with pytest.raises(ValueError, match=match) as info:
        call()
    assert "\n" not in str(info.value)
