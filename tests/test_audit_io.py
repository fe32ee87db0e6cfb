"""rankscope.audit loading: every input format, the malicious-pickle refusal, broken files."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

from rankscope.audit import audit_checkpoint, audit_module, load_source
from rankscope.errors import CheckpointError


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, stride=2, padding=1), nn.ReLU(),
                         nn.Conv2d(8, 8, 3, padding=1, groups=8), nn.Flatten(), nn.Linear(512, 4))


STRIDES = "3=2"  # the only strided conv; everything else matches the defaults


class Marker:
    """Unpickling this calls open(path, 'w'): creates a file, standing in for arbitrary code."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


@pytest.fixture(scope="module")
def reference():
    return audit_module(_net(), (3, 16, 16), estimate=False).table.set_index("name")


def _check(result, reference, prefix: str = "") -> None:
    t = result.table.set_index("name")
    assert list(t.index) == [prefix + n for n in ("0", "3", "5", "7")] or list(t.index) == list(
        reference.index)
    cols = ["sigma_max_exact", "frobenius", "stable_rank", "stable_rank_matrix"]
    np.testing.assert_allclose(t[cols].to_numpy(float), reference[cols].to_numpy(float), rtol=1e-5)


def _save(obj, path) -> str:
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("fmt", ["pt", "pth", "bin", "ddp", "lightning", "nested", "safetensors"])
def test_every_format_gives_the_same_numbers(tmp_path, reference, fmt):
    sd = _net().state_dict()
    if fmt in ("pt", "pth", "bin"):
        path = _save(sd, tmp_path / f"w.{fmt}")
    elif fmt == "ddp":
        path = _save({f"module.{k}": v for k, v in sd.items()}, tmp_path / "ddp.pt")
    elif fmt == "lightning":
        path = _save({"epoch": 3, "global_step": 30, "pytorch-lightning_version": "2.4.0",
                      "state_dict": {f"model.{k}": v for k, v in sd.items()},
                      "optimizer_states": [], "hyper_parameters": {"lr": 0.1}},
                     tmp_path / "last.ckpt")
    elif fmt == "nested":
        path = _save({"model": sd, "epoch": 1}, tmp_path / "nested.pth")
    else:
        from safetensors.torch import save_file

        path = str(tmp_path / "w.safetensors")
        save_file({k: v.contiguous() for k, v in sd.items()}, path)
    res = audit_checkpoint(path, input_size=16, layer_map=STRIDES, estimate=False)
    _check(res, reference)
    t = res.table.set_index("name")
    assert t.loc["3", "stride"] == "2" and "stride" not in t.loc["3", "assumed"]
    assert t.loc["5", "input_size"] == "8" and "input_size" in t.loc["5", "assumed"]
    assert "padding" in t.loc["0", "assumed"] and t.loc["0", "padding_assumed"]
    assert t.loc["5", "groups"] == 8 and "groups" in t.loc["5", "assumed"]
    assert t.loc["7", "assumed"] == ""
    assert any("assumed" in n for n in res.notes)


def test_model_factory_gives_exact_geometry(tmp_path, reference, monkeypatch):
    import types
    import sys

    mod = types.ModuleType("audit_test_factory")
    mod.build = _net
    monkeypatch.setitem(sys.modules, "audit_test_factory", mod)
    path = _save(_net().state_dict(), tmp_path / "w.pt")
    res = audit_checkpoint(path, input_size=16, model="audit_test_factory:build", estimate=False)
    _check(res, reference)
    assert (res.table["assumed"] == "").all()


def test_rankscope_train_checkpoint_is_rebuilt(tmp_path):
    from rankscope.genotype import PUBLISHED
    from rankscope.io import save_checkpoint
    from rankscope.network import NetworkConfig, build_network

    cfg = NetworkConfig(genotype=PUBLISHED["msr-darts"].to_dict(), C=4, layers=3, auxiliary=False)
    torch.manual_seed(0)
    net = build_network(cfg)
    path = tmp_path / "train.pt"
    save_checkpoint(path, kind="train", config={"network": dataclasses.asdict(cfg)},
                    state_dict=net.state_dict(), epoch=1, genotype=cfg.genotype)
    res = audit_checkpoint(path, estimate=False)
    direct = audit_module(net, (3, 32, 32), estimate=False)
    assert (res.table["assumed"] == "").all() and "rebuilt" in res.notes[0]
    np.testing.assert_allclose(res.table["stable_rank"].to_numpy(float),
                               direct.table["stable_rank"].to_numpy(float), rtol=1e-6)
    sizes = set(res.table.loc[res.table["kind"] == "conv2d", "input_size"])
    assert sizes == {"32", "16", "8"}  # reductions halve the resolution twice


def test_train_checkpoint_uses_the_recorded_input_size(tmp_path):
    """Regression: an 8x8 digits run was audited at the CIFAR default of 32x32."""
    from rankscope.genotype import PUBLISHED
    from rankscope.io import save_checkpoint
    from rankscope.network import NetworkConfig, build_network

    cfg = NetworkConfig(genotype=PUBLISHED["msr-darts"].to_dict(), C=4, layers=3, in_channels=1,
                        auxiliary=False)
    path = tmp_path / "digits.pt"
    save_checkpoint(path, kind="train", state_dict=build_network(cfg).state_dict(), epoch=1,
                    config={"network": dataclasses.asdict(cfg), "effective": {"input_shape": [1, 8, 8]}})
    res = audit_checkpoint(path, estimate=False)
    assert set(res.table.loc[res.table["kind"] == "conv2d", "input_size"]) == {"8", "4", "2"}


def test_malicious_pickle_is_refused_and_never_executed(tmp_path):
    marker = tmp_path / "PWNED"
    path = _save({"conv.weight": torch.randn(2, 2, 3, 3), "payload": Marker(str(marker))},
                 tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as err:
        audit_checkpoint(path)
    msg = str(err.value)
    assert "--trust" in msg and "\n" not in msg and "open" in msg
    assert not marker.exists()
    # An explicit --trust runs the file's code, as documented, and then audits the tensors.
    res = audit_checkpoint(path, trust=True, input_size=8, estimate=False)
    assert marker.exists() and res.table["name"].tolist() == ["conv"]


def test_malicious_legacy_pickle_is_refused(tmp_path):
    import pickle

    marker = tmp_path / "PWNED"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as fh:
        pickle.dump({"w": torch.zeros(1), "x": Marker(str(marker))}, fh)
    with pytest.raises(CheckpointError, match="--trust"):
        load_source(path)
    assert not marker.exists()


@pytest.mark.parametrize("case", ["missing", "directory", "garbage", "truncated", "empty", "no_conv",
                                  "bad_safetensors", "list"])
def test_broken_inputs_give_one_line_errors(tmp_path, case):
    path = tmp_path / "x.pt"
    if case == "missing":
        match = "does not exist"
    elif case == "directory":
        path = tmp_path
        match = "not a file"
    elif case == "garbage":
        path.write_bytes(b"\x00not a checkpoint at all" * 20)
        match = "corrupt"
    elif case == "truncated":
        torch.save(_net().state_dict(), path)
        path.write_bytes(path.read_bytes()[:300])
        match = "corrupt"
    elif case == "empty":
        torch.save({}, path)
        match = "no weight tensors"
    elif case == "no_conv":
        torch.save(nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3)).state_dict(), path)
        match = "no conv layers"
    elif case == "bad_safetensors":
        path = tmp_path / "x.safetensors"
        path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}")
        match = "safetensors"
    else:
        torch.save([torch.zeros(3)], path)
        match = "not a dict"
    with pytest.raises(CheckpointError, match=match) as err:
        audit_checkpoint(path, estimate=False)
    assert "\n" not in str(err.value)


def test_nan_weights_in_a_file_give_a_flagged_row(tmp_path):
    sd = _net().state_dict()
    sd["3.weight"][0, 0, 0, 0] = float("nan")
    path = _save(sd, tmp_path / "nan.pt")
    t = audit_checkpoint(path, input_size=16, estimate=False).table.set_index("name")
    assert t.loc["3", "flag"] == "nan" and t.loc["0", "flag"] == "ok"


def test_rankscope_search_checkpoint_is_rebuilt(tmp_path):
    from rankscope.io import save_checkpoint
    from rankscope.supernet import SearchNetwork, SupernetConfig

    cfg = SupernetConfig(C=4, layers=3, nodes=2, primitives=("dil_conv_3x3",), image_size=8)
    torch.manual_seed(0)
    net = SearchNetwork(cfg)
    path = tmp_path / "search.pt"
    save_checkpoint(path, kind="search", config={"supernet": dataclasses.asdict(cfg)},
                    state_dict=net.state_dict(), epoch=0)
    res = audit_checkpoint(path, estimate=False)
    t = res.table
    assert "rebuilt search network" in res.notes[0] and (t["assumed"] == "").all()
    assert (t["flag"] == "ok").all() and set(t.loc[t["kind"] == "conv2d", "input_size"]) == {"8", "4", "2"}
    assert t["note"].str.contains("parametrized").any()
