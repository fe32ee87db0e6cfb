"""End-to-end search on a tiny subset of the embedded digits (CPU, seconds), resume, and the CLI."""
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from cli.main import main
from rankscope.errors import ConfigError
from rankscope.genotype import from_dict
from rankscope.search.config import SearchConfig, resolve_config
from rankscope.search.runner import SimulatedKill, choose_epoch, run_search

TINY = dict(data="digits", train_limit=120, epochs=3, batch_size=32, layers=3, channels=4,
            crop_padding=1, flip=False, device="cpu", sn_iters=2)


def tiny(**kw) -> SearchConfig:
    return resolve_config("quick", overrides={**TINY, **kw})


def _quiet(msg: str) -> None:
    pass


def test_search_writes_every_artifact(tmp_path):
    summary = run_search(tiny(), tmp_path, echo=_quiet)
    for name in ("config.json", "split.npz", "metrics.csv", "stable_ranks.csv", "genotypes.jsonl",
                 "checkpoint.pt", "genotype.json", "genotype_min.json", "genotype_max.json",
                 "summary.json"):
        assert (tmp_path / name).is_file(), name
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert {"train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"} <= set(metrics.columns)
    ranks = pd.read_csv(tmp_path / "stable_ranks.csv")
    # 3 cells (1 normal, 2 reduce) x 14 edges x 4 ops per epoch
    assert len(ranks) == 3 * 3 * 14 * 4 and set(ranks["epoch"]) == {1, 2, 3}
    assert (ranks["stable_rank"] >= 1.0 - 1e-6).all()
    genos = [json.loads(line) for line in (tmp_path / "genotypes.jsonl").read_text().splitlines()]
    assert [g["epoch"] for g in genos] == [1, 2, 3]
    chosen = json.loads((tmp_path / "genotype.json").read_text())
    best = int(metrics["val_loss"].idxmin()) + 1
    assert summary["chosen_epoch"] == best and chosen == genos[best - 1]["genotype"]
    g = from_dict(chosen)
    assert g.ops() <= {"sep_conv_3x3", "sep_conv_5x5", "dil_conv_3x3", "dil_conv_5x5"}
    assert summary["device_hours"] > 0


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    cfg = tiny()
    run_search(cfg, tmp_path / "a", echo=_quiet)
    with pytest.raises(SimulatedKill):
        run_search(cfg, tmp_path / "b", echo=_quiet, kill_at=(1, 2))
    assert len(pd.read_csv(tmp_path / "b" / "metrics.csv")) == 1
    run_search(None, tmp_path / "b", resume=True, echo=_quiet)
    for name in ("genotype.json", "genotypes.jsonl"):
        assert (tmp_path / "a" / name).read_text() == (tmp_path / "b" / name).read_text()
    cols = ["epoch", "lr", "train_loss", "train_acc", "val_loss", "val_acc"]
    a = pd.read_csv(tmp_path / "a" / "metrics.csv")[cols]
    b = pd.read_csv(tmp_path / "b" / "metrics.csv")[cols]
    pd.testing.assert_frame_equal(a, b, check_exact=True)
    ra = pd.read_csv(tmp_path / "a" / "stable_ranks.csv")
    rb = pd.read_csv(tmp_path / "b" / "stable_ranks.csv")
    pd.testing.assert_frame_equal(ra, rb, check_exact=True)


def test_choose_rules():
    m = [{"val_loss": 3.0}, {"val_loss": 1.0}, {"val_loss": 1.0}, {"val_loss": 2.0}]
    assert choose_epoch(tiny(epochs=4), m) == 2
    assert choose_epoch(tiny(epochs=4, choose="last"), m) == 4
    assert choose_epoch(tiny(epochs=4, choose="3"), m) == 3


def test_bad_config_values():
    with pytest.raises(ConfigError, match="unknown preset"):
        resolve_config("nope")
    with pytest.raises(ConfigError, match="mixing must be one of"):
        tiny(mixing="softmax")
    with pytest.raises(ConfigError, match="unknown SearchConfig field"):
        resolve_config("quick", overrides={"epoch": 3})
    with pytest.raises(ConfigError, match="choose must be"):
        tiny(choose="99")


def test_cli_search_and_errors(tmp_path):
    runner = CliRunner()
    args = ["search", "--out", str(tmp_path / "run")]
    for k, v in TINY.items():
        flag = "--" + k.replace("_", "-")
        args += [flag if v is not False else "--no-" + k.replace("_", "-")] + ([] if isinstance(v, bool) else [str(v)])
    args[args.index("--epochs") + 1] = "1"
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "chose epoch 1" in res.output and (tmp_path / "run" / "genotype.json").is_file()
    res = runner.invoke(main, ["search", "--data", str(tmp_path / "missing.npz"), "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and res.output.startswith("Error:") and len(res.output.strip().splitlines()) == 1
    res = runner.invoke(main, ["search", "--resume", str(tmp_path / "nothing")])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_real_cifar_subset_path():
    """CI exercises the real-data path with the shared CIFAR-10 subset when it is present."""
    npz = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cifar10-10k.npz"
    if not npz.exists():
        pytest.skip("../shared/data/cifar10-10k.npz not present")
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        cfg = tiny(data=str(npz), train_limit=100, epochs=1, crop_padding=4, flip=True)
        summary = run_search(cfg, d, echo=_quiet)
        assert summary["chosen_epoch"] == 1
        ranks = pd.read_csv(Path(d) / "stable_ranks.csv")
        # 32x32 images, 3 cells: normal at 32, the two reductions' last convs at 16 and 8.
        assert sorted(ranks["resolution"].unique()) == [8, 16, 32]
        assert len(ranks) == 3 * 14 * 4


def test_resume_refuses_foreign_run_dirs(tmp_path):
    from rankscope.io import write_json

    write_json(tmp_path / "config.json", {"network": {}, "epochs": 1})
    with pytest.raises(ConfigError, match="it is a train run"):
        run_search(None, tmp_path, resume=True, echo=_quiet)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="no config.json"):
        run_search(None, tmp_path / "empty", resume=True, echo=_quiet)


def test_corrupt_checkpoint_is_one_line_error(tmp_path):
    from rankscope.errors import CheckpointError
    from rankscope.io import load_checkpoint

    (tmp_path / "c.pt").write_text("garbage")
    with pytest.raises(CheckpointError, match=r"^cannot load .* \(Unsupported operand \d+\)$"):
        load_checkpoint(tmp_path / "c.pt")
