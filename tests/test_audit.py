"""rankscope.audit: numbers against a dense oracle, layer discovery, assumptions, flags, errors."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rankscope.audit import audit_module, compare, layers_from_state_dict
from rankscope.audit.hparams import lookup, parse_layer_map
from rankscope.audit.metrics import plane_wave_start
from rankscope.errors import CheckpointError, ConfigError


class Small(nn.Module):
    """Every conv flavour the audit must handle, on a 12x12 input."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1, bias=False)
        self.down = nn.Conv2d(6, 8, 3, stride=2, padding=1)
        self.dw = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=8, bias=False)
        self.pw = nn.Conv2d(8, 8, 1, bias=False)
        self.grouped = nn.Conv2d(8, 4, (3, 1), padding=(1, 0), groups=2, bias=False)
        self.rect = nn.Conv2d(4, 4, 2, stride=2, bias=False)
        self.fc = nn.Linear(4 * 3 * 3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.rect(self.grouped(self.pw(self.dw(self.down(self.conv1(x))))))
        return self.fc(x.flatten(1))


def _dense(conv: nn.Conv2d, size: tuple[int, int], circular: bool) -> torch.Tensor:
    """Oracle: the operator as a float64 matrix, one column per basis image."""
    c_in = conv.in_channels
    n = c_in * size[0] * size[1]
    basis = torch.eye(n, dtype=torch.float64).reshape(n, c_in, *size)
    w = conv.weight.detach().double()
    geo = dict(stride=conv.stride, dilation=conv.dilation, groups=conv.groups)
    if circular:
        eh, ew = (d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size))
        out = F.conv2d(F.pad(basis, (0, ew, 0, eh), mode="circular"), w, **geo)
    else:
        out = F.conv2d(basis, w, padding=conv.padding, **geo)
    return out.reshape(n, -1).T


@pytest.fixture(scope="module")
def small() -> nn.Module:
    torch.manual_seed(0)
    return Small().double()


@pytest.fixture(scope="module")
def small_full(small):
    return audit_module(small, (3, 12, 12), full=True, n_iter=300, estimate=False)


def test_module_discovery_records_true_geometry(small_full):
    t = small_full.table.set_index("name")
    assert list(t.index) == ["conv1", "down", "dw", "pw", "grouped", "rect", "fc"]
    assert t.loc["down", "input_size"] == "12" and t.loc["down", "stride"] == "2"
    assert t.loc["dw", "input_size"] == "6" and t.loc["dw", "dilation"] == "2"
    assert t.loc["dw", "groups"] == 8 and t.loc["grouped", "groups"] == 2
    assert t.loc["rect", "output_size"] == "3"
    assert (t["assumed"] == "").all() and not t["padding_assumed"].any()
    assert (t["flag"] == "ok").all()


@pytest.mark.parametrize("name", ["conv1", "down", "dw", "pw", "grouped", "rect"])
def test_conv_rows_match_dense_oracle(small, small_full, name):
    conv = getattr(small, name)
    row = small_full.table.set_index("name").loc[name]
    size = (int(row["input_size"]),) * 2
    circ = _dense(conv, size, circular=True)
    zero = _dense(conv, size, circular=False)
    sv = torch.linalg.svdvals(circ)
    assert row["sigma_max_exact"] == pytest.approx(float(sv[0]), rel=1e-6)
    assert row["frobenius"] == pytest.approx(float(circ.norm()), rel=1e-9)
    assert row["frobenius_zero_pad"] == pytest.approx(float(zero.norm()), rel=1e-9)
    sigma_zero = float(torch.linalg.matrix_norm(zero, 2))
    assert row["sigma_max_power"] <= sigma_zero * (1 + 1e-9)
    assert row["sigma_max_power"] == pytest.approx(sigma_zero, rel=1e-4)
    assert row["stable_rank"] == pytest.approx(float((sv ** 2).sum() / sv[0] ** 2), rel=1e-6)
    assert row["n_singular_values"] == min(circ.shape)
    assert row["stable_rank_normalized"] == pytest.approx(row["stable_rank"] / min(circ.shape))
    mat = conv.weight.detach().reshape(conv.out_channels, -1)
    ms = torch.linalg.svdvals(mat)
    assert row["stable_rank_matrix"] == pytest.approx(float((ms ** 2).sum() / ms[0] ** 2), rel=1e-9)
    full = small_full.spectra[name]
    np.testing.assert_allclose(full, sv.numpy()[: len(full)], rtol=1e-6, atol=1e-9)


def test_linear_row_is_plain_matrix_svd(small, small_full):
    row = small_full.table.set_index("name").loc["fc"]
    sv = torch.linalg.svdvals(small.fc.weight.detach())
    assert row["sigma_max_exact"] == pytest.approx(float(sv[0]))
    assert row["stable_rank"] == pytest.approx(float((sv ** 2).sum() / sv[0] ** 2))
    assert row["stable_rank"] == row["stable_rank_matrix"] and row["n_singular_values"] == 5
    assert math.isnan(row["sigma_max_power"])


def test_fast_mode_equals_full_mode_numbers(small, small_full):
    fast = audit_module(small, (3, 12, 12), n_iter=300)
    cols = ["sigma_max_exact", "frobenius", "stable_rank", "stable_rank_matrix"]
    np.testing.assert_allclose(fast.table[cols].to_numpy(float),
                               small_full.table[cols].to_numpy(float), rtol=1e-9)
    assert fast.spectra == {} and fast.full_estimate_s is not None and fast.full_estimate_s >= 0


def test_warm_start_beats_random_start():
    torch.manual_seed(1)
    w = torch.randn(8, 8, 3, 3, dtype=torch.float64)
    conv = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False).double()
    conv.weight.data = w
    exact = float(torch.linalg.matrix_norm(_dense(conv, (16, 16), circular=False), 2))
    v0 = plane_wave_start(w, (16, 16), (2, 2), (1, 1), 1, (1, 1))
    op = lambda x: F.conv2d(x.reshape(1, 8, 16, 16), w, stride=2, padding=1)  # noqa: E731
    warm = float(op(v0).norm() / v0.norm())
    rand = torch.randn(1, 8, 16, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert warm > 0.8 * exact > float(op(rand).norm() / rand.norm())


def test_nan_inf_zero_weights_are_flagged_not_crashing():
    net = nn.Sequential(nn.Conv2d(2, 2, 3, padding=1), nn.Conv2d(2, 2, 3, padding=1),
                        nn.Conv2d(2, 2, 1), nn.Conv2d(2, 2, 1))
    with torch.no_grad():
        net[0].weight[0, 0, 0, 0] = float("nan")
        net[1].weight[1, 1, 1, 1] = float("inf")
        net[2].weight.zero_()
    res = audit_module(net, (2, 6, 6), estimate=False)
    assert res.table["flag"].tolist() == ["nan", "inf", "zero", "ok"]
    assert math.isnan(res.table.loc[0, "stable_rank"]) and "NAN" in res.table.loc[0, "note"]
    assert res.table.loc[2, "stable_rank"] == 0.0 and res.summary["flagged"] == 3
    assert "3 flagged" in res.summary_line()


def test_unsupported_geometry_is_a_note_not_a_crash():
    net = nn.Sequential(nn.Conv2d(2, 2, 3, stride=2, padding=1))
    row = audit_module(net, (2, 7, 7), estimate=False).table.iloc[0]
    assert math.isnan(row["sigma_max_exact"]) and "stride" in row["note"]
    assert row["sigma_max_power"] > 0  # the zero-padded layer is still measured


def test_module_without_convs_is_an_error():
    with pytest.raises(CheckpointError, match="no conv layers"):
        audit_module(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), (3, 2, 2))


def test_bad_input_shape_is_one_line_error(small):
    with pytest.raises(CheckpointError, match="forward pass"):
        audit_module(small, (5, 8, 8))


def test_state_dict_layers_mark_assumptions():
    sd = {"a.weight": torch.randn(8, 3, 3, 3), "a.bias": torch.randn(8),
          "bn.weight": torch.ones(8), "dw.weight": torch.randn(8, 1, 3, 3),
          "pw.weight": torch.randn(16, 8, 1, 1), "odd.weight": torch.randn(4, 4, 3, 3),
          "fc.weight": torch.randn(10, 16)}
    specs = {s.name: s for s in layers_from_state_dict(sd, input_size=16,
                                                       layer_map={"a": {"stride": 2}})}
    assert list(specs) == ["a", "dw", "pw", "odd", "fc"]
    assert specs["a"].stride == (2, 2) and "stride" not in specs["a"].assumed
    assert set(specs["a"].assumed) == {"input_size", "dilation", "padding"}
    assert specs["a"].input_size == (16, 16) and specs["dw"].input_size == (8, 8)
    assert specs["dw"].groups == 8 and "groups" in specs["dw"].assumed
    assert specs["pw"].groups == 1 and "groups" not in specs["pw"].assumed
    assert specs["odd"].groups == 1 and "groups" in specs["odd"].assumed
    assert specs["a"].padding == (1, 1) and specs["fc"].kind == "linear"


def test_layer_map_parsing(tmp_path):
    assert parse_layer_map("layer2.0.conv1=2, layer3.*.conv2=2") == {
        "layer2.0.conv1": {"stride": 2}, "layer3.*.conv2": {"stride": 2}}
    path = tmp_path / "map.json"
    path.write_text('{"conv1": {"stride": 2, "input_size": 224}, "layer*.0.conv2": 2}')
    lmap = parse_layer_map(str(path))
    assert lookup(lmap, "conv1") == {"stride": 2, "input_size": 224}
    assert lookup(lmap, "layer4.0.conv2") == {"stride": 2} and lookup(lmap, "fc") == {}
    for bad in ("conv1", "conv1=x", "conv1=0"):
        with pytest.raises(ConfigError):
            parse_layer_map(bad)
    path.write_text('{"conv1": {"strides": 2}}')
    with pytest.raises(ConfigError, match="unknown field"):
        parse_layer_map(str(path))


def test_compare_reports_per_layer_changes(small):
    a = audit_module(small, (3, 12, 12), estimate=False)
    twice = Small().double()
    twice.load_state_dict({k: 2 * v for k, v in small.state_dict().items()})
    b = audit_module(twice, (3, 12, 12), estimate=False)
    cmp = compare(a, b).set_index("name")
    np.testing.assert_allclose(cmp["sigma_max_exact_ratio"], 2.0, rtol=1e-9)
    np.testing.assert_allclose(cmp["stable_rank_ratio"], 1.0, rtol=1e-9)
    assert not cmp["shape_changed"].any()


def test_state_dict_geometry_with_layer_map_matches_resnet50_forward():
    from rankscope.audit.resnet import RESNET50_MAP
    from rankscope.audit.layers import discover_module_layers
    from rankscope.audit.resnet import resnet50

    net = resnet50(num_classes=10)
    exact = {s.name: s for s in discover_module_layers(net, (3, 64, 64))}
    lmap = {**RESNET50_MAP, "layer1.0.conv1": {"input_size": 16}}
    assumed = layers_from_state_dict(net.state_dict(), input_size=64, layer_map=lmap)
    assert [s.name for s in assumed] == list(exact)
    for spec in assumed:
        ref = exact[spec.name]
        assert (spec.input_size, spec.stride, spec.padding, spec.groups) == (
            ref.input_size, ref.stride, ref.padding, ref.groups), spec.name


@pytest.mark.parametrize("geo", [(4, 3, 3, 8, 1, 1, 1), (4, 3, 3, 8, 2, 1, 1), (6, 1, 3, 8, 1, 2, 6),
                                 (4, 2, 2, 6, 2, 1, 2)])
def test_private_fallback_matches_dense_oracle(geo):
    from rankscope.audit import _fallback

    c_out, cig, k, n, s, d, g = geo
    conv = nn.Conv2d(cig * g, c_out, k, stride=s, dilation=d, groups=g, bias=False).double()
    sv = torch.linalg.svdvals(_dense(conv, (n, n), circular=True))
    mine = _fallback.conv_singular_values(conv.weight.detach(), n, stride=s, dilation=d, groups=g)
    np.testing.assert_allclose(mine.numpy(), sv.numpy(), rtol=1e-9, atol=1e-12)
