"""Spectral normalisation of the candidate-op convs (paper 3.3, Appendix A).

Reference quantities: the network's convs pad with zeros, so the norm the power iteration must reach
is that of the *zero-padded* operator, measured exactly from the spectra module's dense operator
matrix.  The spectra module's FFT norm (``conv_spectral_norm``) is that of the *circular*-padded
operator: it is the right reference for 1x1 convs (no padding, the two operators coincide) but for a
k x k conv it differs by boundary effects, so it is compared with the dense zero-padded value only
for 1x1 convs.
"""
import pytest
import torch
from torch import nn

from rankscope.errors import ConfigError
from rankscope.spectra import conv_spectral_norm, dense_conv_operator, power_iteration_fn
from rankscope.specnorm import (ConvSpectralNorm, SpecNormConfig, apply_spectral_norm, circular_size,
                                raw_weight, spectral_norm_modules)
from rankscope.supernet import SearchNetwork, SupernetConfig


def zero_padded_norm(conv: nn.Conv2d, weight: torch.Tensor, size) -> float:
    """Exact ||conv||_2 with the conv's own zero padding, from the dense operator matrix."""
    A = dense_conv_operator(weight.detach().double(), size, stride=conv.stride, dilation=conv.dilation,
                            groups=conv.groups, padding=conv.padding)
    return float(torch.linalg.matrix_norm(A, ord=2))


@pytest.fixture(scope="module")
def trained_net():
    """A tiny supernet after 8 training-mode forwards of 20 warm-started iterations per conv.

    Some zero-padded operators have clustered top singular values, so power iteration needs ~100
    iterations to get within 1 % (the search gets them over its first steps at Z = 5)."""
    torch.manual_seed(0)
    net = SearchNetwork(SupernetConfig(C=4, layers=3, nodes=2, image_size=8,
                                       specnorm=SpecNormConfig(n_iter=20)))
    with torch.no_grad():
        for _ in range(8):
            net(torch.randn(2, 3, 8, 8))
    return net


def test_every_candidate_conv_and_nothing_else_is_normalised(trained_net):
    normalised = {id(conv) for _, conv, _ in spectral_norm_modules(trained_net)}
    candidates = {id(conv) for _, conv, _ in trained_net.candidate_convs()}
    assert normalised == candidates and len(candidates) == 3 * 5 * 12  # 12 convs per MSR edge
    assert not any(id(m) in normalised for m in trained_net.stem.modules())
    assert not any(id(m) in normalised for m in trained_net.cells[0].preprocess1.modules())


def test_sigma_of_normalised_convs_within_one_percent_of_C(trained_net):
    sizes = {id(conv): size for _, conv, size in trained_net.candidate_convs()}
    n_1x1 = 0
    for name, conv, sn in spectral_norm_modules(trained_net):
        w = raw_weight(conv) / sn.sigma  # the normalised weight of the last step (C = 1)
        sigma = zero_padded_norm(conv, w, sizes[id(conv)])
        # Power iteration under-estimates sigma, so the normalised norm is >= C, and close to it.
        assert 1.0 - 1e-5 <= sigma <= 1.01, name
        if conv.kernel_size == (1, 1):  # no padding: circular and zero-padded operators coincide
            circ = float(conv_spectral_norm(w.detach().double(), sizes[id(conv)]))
            assert circ == pytest.approx(sigma, rel=1e-6)
            n_1x1 += 1
    assert n_1x1 == 3 * 5 * 6


def test_same_iterates_as_spectra_power_iteration():
    torch.manual_seed(1)
    conv = nn.Conv2d(3, 3, 3, stride=2, padding=2, dilation=2, groups=3, bias=False)
    sn = ConvSpectralNorm(conv, (7, 7), SpecNormConfig(n_iter=3))
    v0 = sn.v.clone()
    w = conv.weight.detach()
    sigma_ref, v_ref = power_iteration_fn(w, (3, 7, 7), stride=2, padding=2, dilation=2, groups=3,
                                          n_iter=3, v0=v0)
    torch.testing.assert_close(sn(w) * sigma_ref, w)  # W * C / sigma with C = 1
    torch.testing.assert_close(sn.v, v_ref)


def test_gradient_flows_through_sigma():
    """Compare with autograd of W / sigma(W), sigma exact from the dense operator, in float64."""
    torch.manual_seed(2)
    for conv, size in ((nn.Conv2d(2, 2, 3, padding=1, groups=2, bias=False), (4, 4)),
                       (nn.Conv2d(3, 2, 1, bias=False), (3, 3))):
        conv = conv.double()
        apply_spectral_norm(conv, SpecNormConfig(n_iter=200), [(conv, size)])
        G = torch.randn_like(conv.weight)
        (conv.weight * G).sum().backward()
        W = raw_weight(conv).detach().clone().requires_grad_()
        A = dense_conv_operator(W, size, groups=conv.groups, padding=conv.padding)
        (W / torch.linalg.matrix_norm(A, ord=2) * G).sum().backward()
        torch.testing.assert_close(raw_weight(conv).grad, W.grad, rtol=1e-6, atol=1e-9)
        # ... and differs from treating sigma as a constant.
        assert not torch.allclose(W.grad, G / torch.linalg.matrix_norm(A, ord=2).detach())


def test_eval_mode_is_deterministic_and_iteration_free(trained_net):
    net = trained_net.eval()
    try:
        state = {k: v.clone() for k, v in net.state_dict().items() if k.endswith((".v", ".sigma"))}
        x = torch.randn(2, 3, 8, 8)
        y1, y2 = net(x), net(x)
        assert torch.equal(y1, y2)
        after = net.state_dict()
        assert all(torch.equal(after[k], v) for k, v in state.items())
        _, conv, sn = next(spectral_norm_modules(net))
        torch.testing.assert_close(conv.weight, raw_weight(conv) / sn.sigma)
    finally:
        net.train()


def test_warm_start_state_is_checkpointed():
    torch.manual_seed(3)
    cfg = SupernetConfig(C=4, layers=3, nodes=2, image_size=8)
    a = SearchNetwork(cfg)
    a(torch.randn(2, 3, 8, 8))
    sd = a.state_dict()
    keys = [k for k in sd if "parametrizations.weight.0." in k]
    assert any(k.endswith(".v") for k in keys) and any(k.endswith(".sigma") for k in keys)
    torch.manual_seed(99)
    b = SearchNetwork(cfg)
    b.load_state_dict(sd)
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(a(x), b(x))  # same vectors -> same iterates -> same output
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in keys)


def test_exact_method_and_disabled():
    torch.manual_seed(4)
    conv = nn.Conv2d(4, 4, 1, bias=False)
    apply_spectral_norm(conv, SpecNormConfig(method="exact", C=2.0), [(conv, (4, 4))])
    assert float(conv_spectral_norm(conv.weight.detach(), 4)) == pytest.approx(2.0, rel=1e-5)
    conv.weight.sum().backward()  # gradients reach the raw weight through the exact sigma
    assert raw_weight(conv).grad is not None
    net = SearchNetwork(SupernetConfig(C=4, layers=3, image_size=8,
                                       specnorm=SpecNormConfig(enabled=False)))
    assert not list(spectral_norm_modules(net))
    # A dilated 5x5 (extent 9) on 4x4 maps and a stride 2 on 5x5 need a larger torus.
    assert circular_size((5, 5), (4, 4), (1, 1), (2, 2)) == (9, 9)
    assert circular_size((3, 3), (5, 5), (2, 2), (1, 1)) == (6, 6)
    assert circular_size((1, 1), (8, 8), (1, 1), (1, 1)) == (8, 8)
    with pytest.raises(ValueError, match="already"):
        apply_spectral_norm(conv, SpecNormConfig(), [(conv, (4, 4))])
    with pytest.raises(ConfigError, match="method"):
        SpecNormConfig(method="svd")


def test_exact_method_on_a_tiny_supernet():
    torch.manual_seed(5)
    net = SearchNetwork(SupernetConfig(C=4, layers=3, nodes=2, image_size=8,
                                       specnorm=SpecNormConfig(method="exact")))
    net(torch.randn(2, 3, 8, 8)).sum().backward()
    sizes = {id(conv): size for _, conv, size in net.candidate_convs()}
    for _, conv, sn in list(spectral_norm_modules(net))[::15]:
        w = raw_weight(conv).detach() / sn.sigma
        size = circular_size(conv.kernel_size, sizes[id(conv)], conv.stride, conv.dilation)
        circ = float(conv_spectral_norm(w, size, stride=conv.stride, dilation=conv.dilation,
                                        groups=conv.groups))
        assert circ == pytest.approx(1.0, rel=1e-5)
        assert raw_weight(conv).grad is not None
