"""The ``spectrum`` click command, invoked directly (independent of the other CLI commands)."""
from __future__ import annotations

import torch
from click.testing import CliRunner

from cli.spectrum import spectrum


def _run(*args: str):
    return CliRunner().invoke(spectrum, list(args))


def test_spectrum_prints_all_quantities():
    result = _run("--c-in", "4", "--c-out", "6", "--input-size", "8", "--top", "3")
    assert result.exit_code == 0, result.output
    for key in ("sigma_max exact (circular)", "Z=5", "Z=50", "Frobenius", "stable rank, operator",
                "normalised", "reshaped", "top 3 singular values"):
        assert key in result.output


def test_spectrum_loads_weights(tmp_path):
    path = tmp_path / "w.pt"
    torch.save(torch.randn(4, 2, 3, 3), path)
    result = _run("--weights", str(path), "--input-size", "8", "--stride", "2", "--groups", "2")
    assert result.exit_code == 0, result.output
    assert "(4, 2, 3, 3) on 4x8x8" in result.output


def test_spectrum_bad_input_is_value_error(tmp_path):
    result = _run("--input-size", "7", "--stride", "2")
    assert isinstance(result.exception, ValueError) and "does not divide" in str(result.exception)
    path = tmp_path / "bad.pt"
    torch.save({"not": "a tensor"}, path)
    result = _run("--weights", str(path))
    assert isinstance(result.exception, ValueError) and "4-D" in str(result.exception)
    assert isinstance(_run("--groups", "3").exception, ValueError)
