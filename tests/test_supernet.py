"""Search network: mixing modes, shapes, edge order, resolutions against a real forward pass."""
import pytest
import torch
from torch import nn

from rankscope.errors import ConfigError
from rankscope.ops import PRIMITIVES_DARTS, PRIMITIVES_MSR
from rankscope.specnorm import SpecNormConfig
from rankscope.supernet import (MixedOp, SearchNetwork, SupernetConfig, cell_resolutions, edge_list,
                                reduction_indices)

NO_SN = SpecNormConfig(enabled=False)


def tiny(**kw) -> SupernetConfig:
    base = dict(C=4, layers=3, image_size=8, specnorm=NO_SN)
    return SupernetConfig(**{**base, **kw})


def test_edge_list_and_reductions():
    assert edge_list(4) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2), (2, 3),
                            (3, 0), (3, 1), (3, 2), (3, 3), (3, 4)]
    assert reduction_indices(8) == (2, 5) and reduction_indices(3) == (1, 2)
    assert cell_resolutions(SupernetConfig(layers=8, image_size=32)) == \
        [(32, 32)] * 3 + [(16, 16)] * 3 + [(8, 8)] * 2


@pytest.mark.parametrize("prims", [PRIMITIVES_MSR, PRIMITIVES_DARTS], ids=["msr", "darts"])
@pytest.mark.parametrize("mixing", ["sum", "rank_softmax", "alpha"])
def test_forward_backward_every_mixing_mode(prims, mixing):
    torch.manual_seed(0)
    sn = SpecNormConfig() if mixing == "sum" else NO_SN  # darts: FactorizedReduce convs normalised too
    net = SearchNetwork(tiny(primitives=prims, mixing=mixing, specnorm=sn, num_classes=7))
    x = torch.randn(2, 3, 8, 8)
    kw = {}
    if mixing == "alpha":
        alpha = [(1e-3 * torch.randn(14, len(prims))).requires_grad_() for _ in range(2)]
        kw = dict(weights_normal=alpha[0].softmax(-1), weights_reduce=alpha[1].softmax(-1))
    y = net(x, **kw)
    assert y.shape == (2, 7)
    y.logsumexp(-1).sum().backward()
    grads = [p.grad for p in net.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    if mixing == "alpha":
        assert all(a.grad is not None and a.grad.abs().sum() > 0 for a in alpha)


def test_mixing_weights_are_used_and_checked():
    torch.manual_seed(0)
    net = SearchNetwork(tiny(mixing="alpha")).eval()
    x = torch.randn(2, 3, 8, 8)
    ones = torch.ones(14, 4)
    summed = SearchNetwork(tiny())
    summed.load_state_dict(net.state_dict())
    # alpha mode with all-ones weights is exactly the plain sum of eq. 2.
    torch.testing.assert_close(net(x, ones, ones), summed.eval()(x))
    with pytest.raises(ValueError, match="shape"):
        net(x, torch.ones(14, 3), ones)
    with pytest.raises(ValueError, match="mixing"):
        summed(x, ones, ones)
    with pytest.raises(ValueError, match="rank_softmax"):
        summed.set_rank_weights(normal=ones, reduce=ones)


def test_rank_softmax_uniform_until_set_then_softmax_of_minus_r():
    torch.manual_seed(0)
    rank = SearchNetwork(tiny(mixing="rank_softmax")).eval()
    alpha = SearchNetwork(tiny(mixing="alpha")).eval()
    alpha.load_state_dict(rank.state_dict(), strict=False)  # rank buffers are extra
    x = torch.randn(2, 3, 8, 8)
    uniform = torch.full((14, 4), 0.25)
    torch.testing.assert_close(rank(x), alpha(x, uniform, uniform))
    R_n, R_r = 100 * torch.rand(14, 4), 100 * torch.rand(14, 4)
    rank.set_rank_weights(normal=R_n, reduce=R_r)
    assert "rank_normal" in rank.state_dict()
    torch.testing.assert_close(rank(x), alpha(x, (-R_n).softmax(-1), (-R_r).softmax(-1)))
    with pytest.raises(ValueError, match="shape"):
        rank.set_rank_weights(normal=R_n[:3], reduce=R_r)


def test_resolutions_match_a_real_forward_pass():
    """candidate_convs() and last_convs() resolutions equal the input sizes hooks record."""
    net = SearchNetwork(tiny(C=4, layers=4, image_size=10, primitives=PRIMITIVES_DARTS))
    seen = {}
    hooks = [conv.register_forward_pre_hook(lambda m, a: seen.__setitem__(m, tuple(a[0].shape[-2:])))
             for _, conv, _ in net.candidate_convs()]
    net(torch.randn(1, 3, 10, 10))
    for h in hooks:
        h.remove()
    convs = list(net.candidate_convs())
    assert len(seen) == len(convs) > 0
    assert all(seen[conv] == size for _, conv, size in convs)
    records = list(net.last_convs())
    assert len(records) == 4 * 14 * 4  # four conv ops on every edge of every cell
    assert all(seen[r.conv] == r.resolution for r in records)
    # Reduction cell 1 (input 10x10): stride-2 edges and intermediate-node edges both see 5x5.
    red = [r for r in records if r.cell == 1]
    assert {r.resolution for r in red} == {(5, 5)} and red[0].cell_type == "reduce"
    assert {r.resolution for r in records if r.cell == 3} == {(3, 3)}  # odd sizes round up
    r = records[-1]
    assert (r.cell, r.edge, r.input, r.node, r.op) == (3, 13, 4, 3, "dil_conv_5x5")
    assert r.conv.kernel_size == (1, 1) and isinstance(r.conv, nn.Conv2d)


def test_structure_affine_free_bns_and_parameter_groups():
    net = SearchNetwork(tiny(primitives=PRIMITIVES_DARTS))
    cell = net.cells[1]
    assert cell.reduction and [e.stride for e in cell.edges] == [2 if i < 2 else 1 for _, i in edge_list(4)]
    for edge in cell.edges:
        for m in edge.modules():
            if isinstance(m, nn.BatchNorm2d):
                assert not m.affine
    pool = cell.edges[0].ops[PRIMITIVES_DARTS.index("max_pool_3x3")]
    assert isinstance(pool[1], nn.BatchNorm2d)
    assert type(net.cells[2].preprocess0).__name__ == "FactorizedReduce"
    groups = net.parameter_groups()
    ids = [id(p) for g in groups.values() for p in g]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in net.parameters()}
    assert net.cell_types == ("normal", "reduce", "reduce")


def test_config_errors():
    with pytest.raises(ConfigError, match="mixing"):
        SupernetConfig(mixing="softmax")
    with pytest.raises(ConfigError, match="primitives"):
        SupernetConfig(primitives=("sep_conv_3x3", "conv_9x9"))
    with pytest.raises(ConfigError, match="even"):
        SupernetConfig(C=5)


def test_mixed_op_plain_sum():
    torch.manual_seed(0)
    op = MixedOp(4, 1, PRIMITIVES_MSR).eval()
    x = torch.randn(1, 4, 6, 6)
    torch.testing.assert_close(op(x), sum(o(x) for o in op.ops))
