"""The DARTS baseline: end-to-end runs in both orders, alpha's gradients, the unrolled step against
autograd (float64), derivation rules on hand-made alpha, exact resume, configuration."""
import json

import pandas as pd
import pytest
import torch
from click.testing import CliRunner
from torch.func import functional_call

from cli.search import search
from rankscope.engine import cross_entropy_loss, train_epoch
from rankscope.errors import ConfigError
from rankscope.genotype import from_dict
from rankscope.ops import PRIMITIVES_DARTS
from rankscope.search.config import PRESETS, resolve_config
from rankscope.search.darts import (Architect, ArchSettings, finite_difference_hvp, grads_or_zeros,
                                    init_alphas, mixed_forward, momentum_buffers, unrolled_weights)
from rankscope.search.methods import make_method
from rankscope.search.runner import SimulatedKill, build_loaders, run_search, supernet_config
from rankscope.selection import genotype_from_alpha
from rankscope.specnorm import SpecNormConfig
from rankscope.supernet import SearchNetwork, SupernetConfig

TINY = dict(method="darts", data="digits", train_limit=64, epochs=1, batch_size=16, layers=3,
            channels=4, crop_padding=1, flip=False, device="cpu")


def tiny(**kw):
    return resolve_config("quick", overrides={**TINY, **kw})


def _quiet(msg: str) -> None:
    pass


def _method(cfg):
    """A DartsMethod on the tiny supernet, with a bound weight SGD, and its loaders."""
    from rankscope.engine import make_sgd
    from rankscope.search.runner import optim_config
    torch.manual_seed(cfg.seed)
    arrays, train, val = build_loaders(cfg, torch.device("cpu"))
    net = SearchNetwork(supernet_config(cfg, arrays.channels, arrays.num_classes, arrays.image_size))
    method = make_method(cfg, net, torch.device("cpu"), train=train, val=val)
    optimizer = make_sgd(net.parameters(), optim_config(cfg))
    method.bind_optimizer(optimizer)
    return method, net, optimizer, train


@pytest.mark.parametrize("order,space", [("first", "darts"), ("second", "msr")])
def test_darts_search_end_to_end(tmp_path, order, space):
    summary = run_search(tiny(order=order, space=space), tmp_path, echo=_quiet)
    for name in ("config.json", "split.npz", "metrics.csv", "stable_ranks.csv", "genotypes.jsonl",
                 "checkpoint.pt", "genotype.json", "summary.json"):
        assert (tmp_path / name).is_file(), name
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["train_fraction"] == 0.5 and config["spectral_norm"] is False
    assert config["supernet"]["mixing"] == "alpha" and config["order"] == order
    record = json.loads((tmp_path / "genotypes.jsonl").read_text().splitlines()[0])
    prims = config["supernet"]["primitives"]
    for key in ("genotype", "genotype_rank_min", "genotype_rank_max"):
        g = from_dict(record[key])
        assert len(g.normal) == len(g.reduce) == 8 and g.ops() <= set(prims) - {"none"}
    for cell in ("normal", "reduce"):
        w = torch.tensor(record["alpha"][cell], dtype=torch.float64)
        assert w.shape == (14, len(prims)) and torch.allclose(w.sum(1), torch.ones(14, dtype=torch.float64))
    # the alpha genotype is the derivation from the recorded softmax(alpha) (log is a monotone map)
    logw = {c: torch.tensor(record["alpha"][c]).log() for c in ("normal", "reduce")}
    assert genotype_from_alpha(logw["normal"], logw["reduce"], prims).to_dict() == record["genotype"]
    assert json.loads((tmp_path / "genotype.json").read_text()) == record["genotype"]
    assert summary["method"] == "darts" and summary["device_hours"] > 0
    assert len(pd.read_csv(tmp_path / "stable_ranks.csv")) > 0


@pytest.mark.parametrize("order", ["first", "second"])
def test_alpha_is_separate_from_weights_and_step_restores_the_net(order):
    method, net, optimizer, train = _method(tiny(order=order))
    alphas = method.alphas
    weight_ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert not any(id(a) in weight_ids for a in alphas)
    assert [id(p) for p in method.model.parameters()] == [id(p) for p in net.parameters()]
    batch = next(train.epoch(0))
    state = {k: v.clone() for k, v in net.state_dict().items()}
    before = [a.detach().clone() for a in alphas]
    method.before_step(0, batch)
    # the architecture step moved alpha, left every weight and buffer bit-for-bit, advanced val
    assert any(not torch.equal(a, b) for a, b in zip(alphas, before))
    assert all(torch.equal(v, state[k]) for k, v in net.state_dict().items())
    assert method.val_batches.position == (0, 1)
    # a weight step neither touches alpha.grad nor alpha
    grads = [a.grad.clone() for a in alphas]
    values = [a.detach().clone() for a in alphas]
    train_epoch(method.model, [batch], optimizer, loss_fn=cross_entropy_loss(), grad_clip=5.0)
    assert all(torch.equal(a.grad, g) for a, g in zip(alphas, grads))
    assert all(torch.equal(a, v) for a, v in zip(alphas, values))
    assert any(not torch.equal(v, state[k]) for k, v in net.state_dict().items())


def test_first_order_gradient_comes_from_the_validation_batch_only():
    method, net, optimizer, train = _method(tiny())
    arch = method.architect
    it = train.epoch(0)
    b1, b2 = next(it), next(it)
    val = next(method.val_batches)
    g1 = arch.grads(b1, val, 0.025, optimizer)
    g2 = arch.grads(b2, val, 0.025, optimizer)
    x, y = val
    direct = torch.autograd.grad(cross_entropy_loss()(mixed_forward(net, method.alphas, x), y),
                                 method.alphas)
    for a, b, d in zip(g1, g2, direct):
        assert torch.equal(a, b) and torch.allclose(a, d, rtol=1e-5, atol=1e-9)


def _hand_alpha(picks: dict[int, dict[int, tuple[str, float]]], prims) -> torch.Tensor:
    """(14, K) alpha: `none` strongest everywhere (must be ignored), one chosen op per edge."""
    alpha = torch.zeros(14, len(prims))
    alpha[:, prims.index("none")] = 6.0
    e = 0
    for j in range(4):
        for i in range(j + 2):
            op, value = picks[j].get(i, ("sep_conv_3x3", 0.5))
            alpha[e, prims.index(op)] = value
            e += 1
    return alpha


def test_derivation_rules_on_hand_made_alpha():
    prims = list(PRIMITIVES_DARTS)
    picks = {0: {0: ("max_pool_3x3", 2.0), 1: ("skip_connect", 3.0)},
             1: {0: ("dil_conv_5x5", 1.0), 2: ("sep_conv_5x5", 4.0), 1: ("avg_pool_3x3", 1.5)},
             2: {3: ("dil_conv_3x3", 2.5), 1: ("sep_conv_3x3", 2.4)},
             3: {4: ("sep_conv_5x5", 1.0), 0: ("skip_connect", 1.0)}}  # tie: lower input first
    want = [("skip_connect", 1), ("max_pool_3x3", 0), ("sep_conv_5x5", 2), ("avg_pool_3x3", 1),
            ("dil_conv_3x3", 3), ("sep_conv_3x3", 1), ("skip_connect", 0), ("sep_conv_5x5", 4)]
    alpha = _hand_alpha(picks, prims)
    g = genotype_from_alpha(alpha, alpha, prims)
    assert list(g.normal) == want and list(g.reduce) == want
    # the same through a DARTS method in the eight-op space: alpha decides, stable ranks ride along
    method, net, _, _ = _method(tiny(space="darts"))
    with torch.no_grad():
        method.alphas[0].copy_(alpha)
        method.alphas[1].copy_(alpha)
    genos = method.genotypes(method.stable_rank_table())
    assert [tuple(e) for e in genos["genotype"]["normal"]] == want
    assert from_dict(genos["genotype_rank_min"]).ops() <= {"sep_conv_3x3", "sep_conv_5x5",
                                                           "dil_conv_3x3", "dil_conv_5x5"}


def _smooth(net: torch.nn.Module) -> torch.nn.Module:
    """ReLU -> SiLU: a smooth stand-in with the supernet's interface, where a central difference is
    exact to O(eps^2) (at ReLU kinks grad_alpha L jumps and no finite difference converges)."""
    for module in list(net.modules()):
        for name, child in list(module.named_children()):
            if isinstance(child, torch.nn.ReLU):
                setattr(module, name, torch.nn.SiLU())
    return net


def _tiny_double_net(smooth: bool = True):
    """Tiny float64 alpha-mixing supernet (train mode), random alpha and two random batches."""
    torch.manual_seed(3)
    cfg = SupernetConfig(in_channels=1, num_classes=5, C=4, layers=3, mixing="alpha", image_size=6,
                         specnorm=SpecNormConfig(enabled=False))
    net = SearchNetwork(cfg).double().train()
    if smooth:
        net = _smooth(net)
    alphas = [(0.5 * torch.randn(14, 4, dtype=torch.float64)).requires_grad_() for _ in range(2)]
    gen = torch.Generator().manual_seed(4)
    batch = lambda: (torch.randn(6, 1, 6, 6, generator=gen, dtype=torch.float64),  # noqa: E731
                     torch.randint(0, 5, (6,), generator=gen))
    return net, alphas, batch(), batch()


def _rel_err(a, b) -> float:
    return max(float((x - y).abs().max() / y.abs().max()) for x, y in zip(a, b))


@pytest.mark.parametrize("smooth,scale,tol", [(True, 0.01, 1e-4), (False, 1e-5, 1e-6)])
def test_finite_difference_hvp_matches_double_backward(smooth, scale, tol):
    """DARTS's eps on the smooth stand-in; on the ReLU supernet a step small enough to cross no kink."""
    net, alphas, (x, y), _ = _tiny_double_net(smooth)
    weights = list(net.parameters())
    loss = lambda: cross_entropy_loss()(mixed_forward(net, alphas, x), y)  # noqa: E731
    gen = torch.Generator().manual_seed(5)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in weights]
    g_w = torch.autograd.grad(loss(), weights, create_graph=True, allow_unused=True)
    dot = sum((g * d).sum() for g, d in zip(g_w, v) if g is not None)
    exact = torch.autograd.grad(dot, alphas)
    w0 = [p.detach().clone() for p in weights]
    fd = finite_difference_hvp(loss, weights, alphas, w0, v, scale)
    assert all(torch.equal(p, w) for p, w in zip(weights, w0))  # centre restored exactly
    err = _rel_err(fd, exact)
    print(f"finite-difference HVP (smooth={smooth}, scale={scale}) max relative error: {err:.2e}")
    assert err < tol
    # pt.darts's precedence bug, `/ 2.*eps`, multiplies by eps/2 instead: off by orders of magnitude
    eps = scale / torch.sqrt(sum((d ** 2).sum() for d in v))
    assert _rel_err([f * (2 * eps) * eps / 2 for f in fd], exact) > 0.9


@pytest.mark.parametrize("smooth,scale,tol", [(True, 0.01, 3e-4), (False, 1e-5, 1e-6)])
def test_second_order_gradient_matches_unrolled_autograd(smooth, scale, tol):
    net, alphas, train, val = _tiny_double_net(smooth)
    weights = list(net.parameters())
    settings = ArchSettings(order="second", w_momentum=0.9, w_weight_decay=3e-4, fd_scale=scale)
    arch = Architect(lambda x: mixed_forward(net, alphas, x), weights, alphas, settings, state_module=net)
    gen = torch.Generator().manual_seed(6)
    momentum = [0.1 * torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in weights]
    xi, ce = 0.05, cross_entropy_loss()
    w0 = [p.detach().clone() for p in weights]
    got = arch.second_order_grads(train, val, xi, momentum)
    assert all(torch.equal(p, w) for p, w in zip(weights, w0))  # weights restored exactly
    # reference: differentiate L_val(w'(alpha), alpha) through the unrolled SGD step by autograd
    names = [n for n, _ in net.named_parameters()]
    g = torch.autograd.grad(ce(mixed_forward(net, alphas, train[0]), train[1]), weights,
                            create_graph=True, allow_unused=True)
    g = [torch.zeros_like(w) if gi is None else gi for gi, w in zip(g, weights)]
    w_prime = [w.detach() - xi * (gi + 3e-4 * w.detach() + 0.9 * m) for w, gi, m in zip(weights, g, momentum)]
    mix = [torch.softmax(a, -1) for a in alphas]
    out = functional_call(net, dict(zip(names, w_prime)), (val[0],),
                          {"weights_normal": mix[0], "weights_reduce": mix[1]})
    ref = torch.autograd.grad(ce(out, val[1]), alphas)
    first = arch.first_order_grads(val)
    err = _rel_err(got, ref)
    print(f"second-order alpha gradient (smooth={smooth}, scale={scale}) max relative error: {err:.2e}")
    assert err < tol
    assert _rel_err(first, ref) > 100 * err  # the unrolled term matters at this xi


def test_unrolled_weights_are_the_sgd_step():
    torch.manual_seed(0)
    lin = torch.nn.Linear(3, 2).double()
    opt = torch.optim.SGD(lin.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-2)
    x = torch.randn(5, 3, dtype=torch.float64)
    params = list(lin.parameters())
    assert momentum_buffers(opt, params) == [None, None]
    for _ in range(2):
        opt.zero_grad()
        lin(x).pow(2).sum().backward()
        grads = [p.grad.clone() for p in params]
        pred = unrolled_weights([p.detach() for p in params], grads, momentum_buffers(opt, params),
                                0.1, 0.9, 1e-2)
        opt.step()
        assert all(torch.allclose(p, q, rtol=0, atol=1e-15) for p, q in zip(params, pred))


def test_darts_resume_after_kill_matches_uninterrupted(tmp_path):
    cfg = tiny(epochs=2)
    run_search(cfg, tmp_path / "a", echo=_quiet)
    with pytest.raises(SimulatedKill):
        run_search(cfg, tmp_path / "b", echo=_quiet, kill_at=(1, 1))
    run_search(None, tmp_path / "b", resume=True, echo=_quiet)
    for name in ("genotype.json", "genotypes.jsonl", "stable_ranks.csv"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text(), name
    cols = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "metrics.csv")[cols],
                                  pd.read_csv(tmp_path / "b" / "metrics.csv")[cols], check_exact=True)


def test_msr_search_writes_both_rank_genotypes(tmp_path):
    run_search(tiny(method="msr", select="max", sn_iters=1), tmp_path, echo=_quiet)
    record = json.loads((tmp_path / "genotypes.jsonl").read_text().splitlines()[0])
    read = lambda n: json.loads((tmp_path / n).read_text())  # noqa: E731
    assert read("genotype.json") == read("genotype_max.json") == record["genotype_max"]
    assert read("genotype_min.json") == record["genotype_min"]


def test_config_method_defaults_presets_and_validation():
    assert (tiny().train_fraction, tiny().spectral_norm) == (0.5, False)
    assert tiny(train_fraction=0.7, spectral_norm=True).train_fraction == 0.7
    assert tiny(spectral_norm=True).spectral_norm is True
    msr = resolve_config("quick")
    assert (msr.train_fraction, msr.spectral_norm) == (0.8, True)
    paper = resolve_config("darts-paper")
    assert (paper.method, paper.space, paper.batch_size, paper.train_fraction, paper.epochs,
            paper.data, paper.spectral_norm) == ("darts", "darts", 64, 0.5, 50, "cifar10", False)
    assert "darts-quick" in PRESETS
    assert (paper.arch_lr, paper.arch_beta1, paper.arch_beta2, paper.arch_weight_decay) == \
        (3e-4, 0.5, 0.999, 1e-3)
    for bad in (dict(order="third"), dict(arch_lr=0.0), dict(arch_beta1=1.0),
                dict(arch_weight_decay=-1.0), dict(mixing="rank_softmax")):
        with pytest.raises(ConfigError):
            tiny(**bad)
    out = CliRunner().invoke(search, ["--help"]).output
    assert "--order" in out and "--arch-lr" in out and "--arch-weight-decay" in out


def test_alpha_init_is_seeded_and_small():
    a, b = init_alphas((14, 8), seed=7), init_alphas((14, 8), seed=7)
    assert all(torch.equal(x, y) for x, y in zip(a, b)) and not torch.equal(a[0], a[1])
    assert all(x.requires_grad and x.abs().max() < 1e-2 for x in a)
    assert not torch.equal(init_alphas((14, 8), seed=8)[0], a[0])
    assert grads_or_zeros((a[0] ** 2).sum(), a)[1].abs().sum() == 0
