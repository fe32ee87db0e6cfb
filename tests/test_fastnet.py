"""The fast supernet against the reference: same outputs, gradients, state and genotype (float64)."""
import itertools

import pytest
import torch
import torch.nn.functional as F

from rankscope.errors import ConfigError
from rankscope.depthwise import _DepthwiseConv
from rankscope.fastnet import FastSearchNetwork, build_supernet, convert
from rankscope.ops import PRIMITIVES_DARTS, PRIMITIVES_MSR
from rankscope.specnorm import SpecNormConfig, spectral_norm_modules
from rankscope.specnorm_fast import build_groups, normalised_weights
from rankscope.supernet import SearchNetwork, SupernetConfig

SPACES = {"msr": PRIMITIVES_MSR, "darts": PRIMITIVES_DARTS}


def pair(space="msr", mixing="sum", sn=True, **kw):
    """A reference net and a fast net with the same state, float64."""
    torch.manual_seed(0)
    cfg = SupernetConfig(C=4, layers=3, nodes=2, image_size=8, primitives=SPACES[space],
                         mixing=mixing, specnorm=SpecNormConfig(enabled=sn), **kw)
    ref = SearchNetwork(cfg).double()
    fast = FastSearchNetwork(cfg).double()
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def mixing_kwargs(net, mixing):
    k, e = len(net.config.primitives), net.config.num_edges
    if mixing == "rank_softmax":
        g = torch.Generator().manual_seed(1)
        R = 3 * torch.rand(2, e, k, generator=g)
        net.set_rank_weights(normal=R[0], reduce=R[1])
        return {}
    if mixing == "alpha":
        g = torch.Generator().manual_seed(2)
        a = torch.randn(2, e, k, generator=g, dtype=torch.float64).softmax(-1)
        return dict(weights_normal=a[0], weights_reduce=a[1])
    return {}


def assert_same_state(a, b, rtol=1e-10, atol=1e-12):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize("space,mixing,sn", [
    (s, m, sn) for s, m, sn in itertools.product(SPACES, ("sum", "rank_softmax", "alpha"), (True, False))])
def test_same_outputs_gradients_and_state(space, mixing, sn):
    ref, fast = pair(space, mixing, sn)
    kw_r, kw_f = mixing_kwargs(ref, mixing), mixing_kwargs(fast, mixing)
    x = torch.randn(3, 3, 8, 8, dtype=torch.float64)
    for step in range(2):  # the second step starts from the first's warm power-iteration state
        y_r, y_f = ref(x, **kw_r), fast(x, **kw_f)
        torch.testing.assert_close(y_f, y_r, rtol=1e-10, atol=1e-12)
        y_r.square().sum().backward()
        y_f.square().sum().backward()
        g_f = dict(fast.named_parameters())
        for name, p in ref.named_parameters():
            torch.testing.assert_close(g_f[name].grad, p.grad, rtol=1e-9, atol=1e-12, msg=name)
        assert_same_state(ref, fast)  # BN running stats, v, sigma
    if mixing == "alpha":  # gradients reach the mixing weights identically
        a_r = kw_r["weights_normal"].clone().requires_grad_()
        a_f = a_r.detach().clone().requires_grad_()
        ref(x, a_r, kw_r["weights_reduce"]).sum().backward()
        fast(x, a_f, kw_f["weights_reduce"]).sum().backward()
        torch.testing.assert_close(a_f.grad, a_r.grad, rtol=1e-9, atol=1e-12)
    ref.eval(), fast.eval()
    torch.testing.assert_close(fast(x, **kw_f), ref(x, **kw_r), rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("method,warm", [("power", True), ("power", False), ("exact", True)])
def test_batched_spectral_norm_matches_reference(method, warm):
    """Normalised weights, v and sigma of every conv equal the reference parametrization's."""
    torch.manual_seed(3)
    cfg = SupernetConfig(C=4, layers=3, nodes=3, image_size=8, primitives=PRIMITIVES_DARTS,
                         specnorm=SpecNormConfig(method=method, warm_start=warm, n_iter=3))
    ref = SearchNetwork(cfg).double()
    fast = FastSearchNetwork(cfg).double()
    fast.load_state_dict(ref.state_dict())
    groups = build_groups(fast)
    assert sum(len(g.members) for g in groups) == len(list(spectral_norm_modules(ref)))
    assert len(groups) < 30  # hundreds of convs in a few dozen batched calls
    weights = normalised_weights(groups, training=True)
    if not warm:  # cold starts draw random vectors: only the estimate's quality is comparable
        return
    for (_, c_r, s_r), (_, c_f, s_f) in zip(spectral_norm_modules(ref), spectral_norm_modules(fast)):
        torch.testing.assert_close(weights[id(c_f)], c_r.weight, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(s_f.sigma, s_r.sigma, rtol=1e-9, atol=1e-12)
        torch.testing.assert_close(s_f.v, s_r.v, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("k,d,s,h", [(3, 1, 1, 6), (5, 1, 1, 5), (3, 2, 1, 4), (5, 2, 1, 6),
                                     (3, 1, 2, 7), (5, 1, 2, 6), (3, 2, 2, 5), (5, 2, 2, 2)])
def test_depthwise_backward_matches_conv2d(k, d, s, h):
    torch.manual_seed(4)
    p = d * (k - 1) // 2
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
        for cl in (False, True):
            x = torch.randn(2, 3, h, h, dtype=dtype)
            x = x.contiguous(memory_format=torch.channels_last) if cl else x
            x.requires_grad_()
            w = torch.randn(3, 1, k, k, dtype=dtype, requires_grad=True)
            y = F.conv2d(x, w, None, s, p, d, 3)
            g = torch.randn_like(y)
            ref = torch.autograd.grad(y, (x, w), g)
            out = torch.autograd.grad(_DepthwiseConv.apply(x, w, (s, s), (p, p), (d, d)), (x, w), g)
            for a, b in zip(out, ref):
                torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_state_dict_round_trip_both_ways_and_factory():
    ref, fast = pair("darts", "rank_softmax")
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    fast(x)  # advance BN stats and power iterations on the fast side
    back = convert(fast, "reference")
    assert type(back) is SearchNetwork
    assert_same_state(back, fast, rtol=0, atol=0)
    again = convert(back, "fast")
    assert isinstance(again, FastSearchNetwork)
    assert_same_state(again, back, rtol=0, atol=0)
    torch.testing.assert_close(again.eval()(x), back.eval()(x), rtol=1e-10, atol=1e-12)
    assert [r.conv.kernel_size for r in again.last_convs()] == [r.conv.kernel_size for r in back.last_convs()]
    assert isinstance(build_supernet(ref.config), FastSearchNetwork)
    with pytest.raises(ConfigError, match="impl"):
        build_supernet(ref.config, "turbo")


def test_reference_specnorm_switch_gives_the_same_numbers():
    ref, fast = pair()
    slow = FastSearchNetwork(ref.config, batched_specnorm=False).double()
    slow.load_state_dict(ref.state_dict())
    x = torch.randn(2, 3, 8, 8, dtype=torch.float64)
    torch.testing.assert_close(slow(x), fast(x), rtol=1e-10, atol=1e-12)
    assert_same_state(slow, fast)


def test_tiny_search_same_genotype(tmp_path):
    from rankscope.search.config import resolve_config
    from rankscope.search.runner import run_search
    summaries = {}
    for impl in ("reference", "fast"):
        cfg = resolve_config("quick", overrides=dict(epochs=1, train_limit=120, layers=3, channels=4,
                                                     batch_size=32, impl=impl))
        summaries[impl] = run_search(cfg, tmp_path / impl, echo=lambda s: None)
    assert summaries["fast"]["genotype"] == summaries["reference"]["genotype"]
    loss = [summaries[i]["final_metrics"]["train_loss"] for i in ("reference", "fast")]
    assert loss[0] == pytest.approx(loss[1], rel=2e-3)  # float32 summation order over an epoch
