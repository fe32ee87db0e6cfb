"""`rankscope audit` through click's CliRunner: formats, --out, plots, spectra, A/B, errors."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from cli.main import main


def _invoke(*args: str):
    cmd = main if "audit" in main.commands else None
    if cmd is None:  # pragma: no cover - until the group registers the command
        from cli.audit import audit as cmd
        return CliRunner().invoke(cmd, list(args))
    return CliRunner().invoke(main, ["audit", *args])


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    d = tmp_path_factory.mktemp("ck")
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, stride=2, padding=1),
                        nn.Flatten(), nn.Linear(8 * 8 * 8, 3))
    torch.save(net.state_dict(), d / "a.pt")
    with torch.no_grad():
        net[2].weight.mul_(3.0)
        net[2].weight[:, :, 1, 1] += 1.0
    torch.save(net.state_dict(), d / "b.pt")
    return d


def test_default_table_and_summary(ckpts):
    res = _invoke(str(ckpts / "a.pt"), "--input-size", "16", "--stride-map", "2=2", "--quiet")
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert lines[0].split()[:3] == ["name", "kind", "shape"]
    assert any(line.split()[:1] == ["2"] and line.split()[4] == "2" for line in lines)
    assert "3 layers (2 conv, 1 linear)" in res.output and "full spectra" in res.output


@pytest.mark.parametrize("fmt", ["csv", "json", "markdown"])
def test_machine_formats(ckpts, tmp_path, fmt):
    out = tmp_path / f"r.{fmt}"
    res = _invoke(str(ckpts / "a.pt"), "--format", fmt, "--out", str(out), "--quiet")
    assert res.exit_code == 0, res.output
    text = out.read_text()
    if fmt == "json":
        data = json.loads(text)
        assert [r["name"] for r in data["layers"]] == ["0", "2", "4"]
        assert data["summary"]["layers"] == 3 and "assumed" in data["layers"][0]
    elif fmt == "csv":
        assert text.splitlines()[0].startswith("name,kind,shape,input_size")
        assert "sigma_max_power" in text and "stable_rank_matrix" in text
    else:
        assert text.startswith("| name | kind |") and text.count("\n") == 5


def test_two_checkpoints_plots_and_spectra(ckpts, tmp_path):
    plots, spectra = tmp_path / "plots", tmp_path / "spectra"
    res = _invoke(str(ckpts / "a.pt"), str(ckpts / "b.pt"), "--input-size", "16", "--quiet",
                  "--plot", str(plots), "--spectra", str(spectra), "--format", "csv")
    assert res.exit_code == 0, res.output
    assert "stable_rank_ratio" in res.output.splitlines()[0]
    names = sorted(p.name for p in plots.iterdir())
    assert names == ["a_a_layers.png", "a_a_spectra.png", "b_b_layers.png", "b_b_spectra.png",
                     "comparison.png"]
    with np.load(spectra / "a_a.npz") as npz:
        assert set(npz.files) == {"0", "2", "4"} and npz["0"].size == 3 * 16 * 16


def test_plot_in_fast_mode_has_selected_spectra(ckpts, tmp_path):
    res = _invoke(str(ckpts / "a.pt"), "--plot", str(tmp_path), "--quiet")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "a_layers.png").stat().st_size > 0 and (tmp_path / "a_spectra.png").exists()


def test_errors_are_one_line(tmp_path):
    res = _invoke(str(tmp_path / "missing.pt"))
    assert res.exit_code == 1 and res.output.strip().splitlines() == [
        f"Error: checkpoint {tmp_path / 'missing.pt'} does not exist"]
    evil = tmp_path / "evil.pt"
    torch.save({"c.weight": torch.zeros(1, 1, 3, 3), "x": _Evil(str(tmp_path / "MARK"))}, evil)
    res = _invoke(str(evil))
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "--trust" in res.output and not (tmp_path / "MARK").exists()
    bad = tmp_path / "map.json"
    bad.write_text("[1]")
    res = _invoke(str(evil), "--stride-map", str(bad))
    assert res.exit_code != 0 and "Traceback" not in res.output


class _Evil:
    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))
