"""Selection (paper eqs. 6-9) on hand-made tables, and stable-rank tables of a tiny supernet."""
import numpy as np
import pandas as pd
import pytest
import torch

from rankscope.ops import PRIMITIVES_DARTS, PRIMITIVES_MSR
from rankscope.selection import (AVG_COLUMNS, TABLE_COLUMNS, average_table, genotype_from_alpha,
                                 rank_matrix, select_genotype, stable_rank_table)
from rankscope.specnorm import SpecNormConfig
from rankscope.supernet import SearchNetwork, SupernetConfig, edge_list

OPS4 = list(PRIMITIVES_MSR)
EDGES = edge_list(4)


def avg_from(matrices: dict[str, np.ndarray], ops=OPS4) -> pd.DataFrame:
    """An average table from (14, K) matrices per cell type."""
    rows = [(t, e, i, j, op, float(m[e, k]))
            for t, m in matrices.items() for e, (j, i) in enumerate(EDGES) for k, op in enumerate(ops)]
    return pd.DataFrame(rows, columns=AVG_COLUMNS)


def test_min_rule_picks_lowest_op_and_two_best_edges():
    rng = np.random.default_rng(0)
    R = 100 + rng.random((14, 4))
    # Node 0 (edges 0, 1): both inputs kept; edge 1's best op is dil_conv_3x3 (column 2).
    R[1, 2] = 10
    # Node 2 (edges 5..8, inputs 0..3): inputs 3 and 1 have the lowest minima, 3 first.
    R[8, 0], R[6, 3] = 1, 2
    g = select_genotype(avg_from({"normal": R, "reduce": R}), rule="min", primitives=OPS4)
    assert g.normal[0:2] == (("dil_conv_3x3", 1), (OPS4[int(R[0].argmin())], 0))
    assert g.normal[4:6] == (("sep_conv_3x3", 3), ("dil_conv_5x5", 1))
    assert g.normal_concat == (2, 3, 4, 5) and g.reduce == g.normal


def test_max_rule_is_the_mirror_image():
    rng = np.random.default_rng(1)
    R = rng.random((14, 4))
    g_max = select_genotype(avg_from({"normal": R, "reduce": R}), rule="max", primitives=OPS4)
    g_min = select_genotype(avg_from({"normal": -R, "reduce": -R}), rule="min", primitives=OPS4)
    assert g_max == g_min
    for k, (op, i) in enumerate(g_max.normal):
        node = k // 2
        e = node * (node + 3) // 2 + i  # first edge of node j is j(j+3)/2
        assert op == OPS4[int(R[e].argmax())]


def test_ties_prefer_earlier_op_then_lower_input():
    R = np.ones((14, 4))  # everything tied
    g = select_genotype(avg_from({"normal": R, "reduce": R}), primitives=OPS4)
    assert g.normal == tuple((OPS4[0], i) for _ in range(4) for i in (0, 1))
    # The primitives order, not the table order, decides op ties.
    g2 = select_genotype(avg_from({"normal": R, "reduce": R}), primitives=OPS4[::-1])
    assert {op for op, _ in g2.normal} == {OPS4[-1]}
    # Tie between inputs 2 and 3 for node 2's second place: the lower input wins.
    R = np.full((14, 4), 5.0)
    R[5, 1], R[7, 0], R[8, 0] = 1, 2, 2
    g = select_genotype(avg_from({"normal": R, "reduce": R}), primitives=OPS4)
    assert g.normal[4:6] == (("sep_conv_5x5", 0), ("sep_conv_3x3", 2))


def test_average_over_cells_and_missing_pairs():
    rows = []
    for cell, t, scale in ((0, "normal", 1.0), (1, "reduce", 1.0), (2, "normal", 3.0)):
        for e, (j, i) in enumerate(EDGES):
            for k, op in enumerate(OPS4):
                rows.append((cell, t, e, i, j, op, 8, scale * (e + k)))
    table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    avg = average_table(table)
    assert list(avg.columns) == AVG_COLUMNS and len(avg) == 2 * 14 * 4
    M = rank_matrix(avg, "normal", OPS4)
    assert M.shape == (14, 4) and M[3, 2] == pytest.approx(2.0 * (3 + 2))
    with pytest.raises(ValueError, match="misses"):
        select_genotype(avg.iloc[1:], primitives=OPS4)
    with pytest.raises(ValueError, match="rule"):
        select_genotype(avg, rule="median")
    with pytest.raises(ValueError, match="not in primitives"):
        select_genotype(avg, primitives=OPS4[:2])


def test_genotype_from_alpha_never_picks_none_and_keeps_two_strongest():
    prims = list(PRIMITIVES_DARTS)
    rng = np.random.default_rng(2)
    alpha = rng.normal(size=(14, 8)) * 0.1
    alpha[:, prims.index("none")] = 10.0  # none dominates every edge
    alpha[2, prims.index("max_pool_3x3")] = 3.0  # node 1: input 0 strongest
    alpha[4, prims.index("skip_connect")] = 2.0  # node 1: input 2 second
    g = genotype_from_alpha(torch.tensor(alpha), alpha, prims)
    assert "none" not in g.ops()
    assert g.normal[2:4] == (("max_pool_3x3", 0), ("skip_connect", 2))
    # Strength is the softmax weight: a sharper edge beats a larger raw alpha on a flat edge.
    alpha = np.zeros((14, 8))
    alpha[0, :] = 5.0
    alpha[0, prims.index("sep_conv_3x3")] = 5.5  # raw max 5.5 but softmax weight ~0.2
    alpha[1, prims.index("dil_conv_3x3")] = 1.0  # softmax weight ~0.28
    g = genotype_from_alpha(alpha, alpha, prims)
    assert g.normal[0] == ("dil_conv_3x3", 1)
    with pytest.raises(ValueError, match="edges"):
        genotype_from_alpha(alpha[:, :4], alpha, prims)


def test_rank_softmax_weights_from_rank_matrix():
    net = SearchNetwork(SupernetConfig(C=4, layers=3, image_size=8, mixing="rank_softmax",
                                       specnorm=SpecNormConfig(enabled=False)))
    avg = average_table(stable_rank_table(net, measure="matrix"))
    net.set_rank_weights(normal=rank_matrix(avg, "normal", OPS4), reduce=rank_matrix(avg, "reduce", OPS4))
    assert net.rank_normal.shape == (14, 4) and torch.isfinite(net(torch.randn(2, 3, 8, 8))).all()


@pytest.fixture(scope="module")
def tiny_net():
    torch.manual_seed(0)
    return SearchNetwork(SupernetConfig(C=4, layers=3, image_size=8))


def test_table_layout_and_measures(tiny_net):
    from rankscope import spectra
    op = stable_rank_table(tiny_net, measure="operator")
    mat = stable_rank_table(tiny_net, measure="matrix")
    assert list(op.columns) == TABLE_COLUMNS and len(op) == 3 * 14 * 4
    assert set(op["cell_type"]) == {"normal", "reduce"}
    # 1x1 conv: operator stable rank = n^2 x matrix stable rank.
    np.testing.assert_allclose(op["stable_rank"], mat["stable_rank"] * op["resolution"] ** 2, rtol=1e-4)
    # ... and it is the spectra module's exact value at the edge's true resolution.
    rec = list(tiny_net.last_convs())[-1]
    w = rec.conv.parametrizations.weight.original.detach()
    exact = float(spectra.conv_stable_rank(w, rec.resolution, stride=1, dilation=1, groups=1))
    assert op["stable_rank"].iloc[-1] == pytest.approx(exact, rel=1e-6)
    # Selection runs on a real table and yields a valid genotype.
    select_genotype(average_table(op), primitives=PRIMITIVES_MSR)
    with pytest.raises(ValueError, match="measure"):
        stable_rank_table(tiny_net, measure="frobenius")


def test_reduction_bug_scales_intermediate_edges_of_reduction_cells_by_four(tiny_net):
    good = stable_rank_table(tiny_net, measure="operator")
    bug = stable_rank_table(tiny_net, measure="operator", reduction_bug=True)
    affected = (good["cell_type"] == "reduce") & (good["input"] >= 2)
    assert affected.sum() == 2 * 6 * 4  # two reduction cells, 6 edges leave intermediate nodes
    ratio = bug["stable_rank"] / good["stable_rank"]
    np.testing.assert_allclose(ratio[affected], 4.0, rtol=1e-5)
    np.testing.assert_allclose(ratio[~affected], 1.0, rtol=1e-6)
