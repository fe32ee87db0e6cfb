"""`rankscope train` on CPU in seconds: artifacts, resume, CLI errors, the ImageNet folder path."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from click.testing import CliRunner

from cli.main import main

from rankscope.complexity import count_parameters
from rankscope.errors import ConfigError
from rankscope.genotype import PUBLISHED
from rankscope.io import load_checkpoint
from rankscope.network import NetworkConfig, build_network
from rankscope.train.config import PRESETS, resolve_config
from rankscope.train.runner import SimulatedKill, drop_path_at, run_train

TINY = dict(dataset="digits", train_limit=96, test_limit=40, layers=3, channels=4, epochs=3,
            batch_size=32, cutout=2, drop_path_prob=0.3, device="cpu")
ARTIFACTS = ("config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the machine is shared
    yield
    torch.set_num_threads(threads)


def _quiet(msg: str) -> None:
    pass


def tiny(genotype: str = "darts-v2", **kw):
    return resolve_config("quick", overrides={**TINY, "genotype": genotype, **kw})


def test_run_from_genotype_file_writes_every_artifact(tmp_path):
    geno = tmp_path / "genotype.json"
    geno.write_text(PUBLISHED["darts-v2"].to_json())  # skip, pools and convs: every op kind
    lines: list[str] = []
    summary = run_train(tiny(str(geno), amp=True, channels_last=True), tmp_path / "run",
                        echo=lines.append)
    run = tmp_path / "run"
    for name in ARTIFACTS:
        assert (run / name).is_file(), name
    assert any("ignored on cpu" in line for line in lines)
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2, 3]
    assert metrics["drop_path_prob"].tolist() == pytest.approx([0.0, 0.1, 0.2])
    for col in ("lr", "train_loss", "train_top1_err", "train_top5_err", "test_loss", "test_top1_err",
                "test_top5_err", "seconds", "img_per_s"):
        assert metrics[col].notna().all(), col
    # The audit tool's path: rebuild the network from a checkpoint's config["network"].
    best = load_checkpoint(run / "best.pt", kind="train")
    assert best["genotype"] == PUBLISHED["darts-v2"].to_dict()
    net = build_network(NetworkConfig(**best["config"]["network"]))
    net.load_state_dict(best["state_dict"])
    assert best["metrics"]["test_top1_err"] == pytest.approx(metrics["test_top1_err"].min())
    assert summary["params"] == count_parameters(net) and summary["multiply_adds"] > 0
    assert summary["test_top1_err"] == pytest.approx(metrics["test_top1_err"].iloc[-1])
    assert json.loads((run / "summary.json").read_text())["device"] == "cpu"
    config = json.loads((run / "config.json").read_text())
    assert config["network"]["layers"] == 3 and config["effective"]["global_batch"] == 32


def test_resume_after_kill_matches_uninterrupted(tmp_path):
    cfg = tiny("msr-darts")
    run_train(cfg, tmp_path / "a", echo=_quiet)
    with pytest.raises(SimulatedKill):
        run_train(cfg, tmp_path / "b", echo=_quiet, kill_at=(1, 1))
    assert len(pd.read_csv(tmp_path / "b" / "metrics.csv")) == 1
    run_train(None, tmp_path / "b", resume=True, echo=_quiet)
    cols = ["epoch", "lr", "drop_path_prob", "train_loss", "train_top1_err", "test_loss",
            "test_top1_err", "test_top5_err"]
    a, b = (pd.read_csv(tmp_path / d / "metrics.csv")[cols] for d in "ab")
    pd.testing.assert_frame_equal(a, b)
    sa, sb = (load_checkpoint(tmp_path / d / "checkpoint.pt")["state_dict"] for d in "ab")
    for name in sa:
        assert torch.equal(sa[name], sb[name]), name


def test_eval_every_and_drop_path_ramp(tmp_path):
    run_train(tiny(epochs=3, eval_every=2), tmp_path, echo=_quiet)
    metrics = pd.read_csv(tmp_path / "metrics.csv")
    assert metrics["test_loss"].isna().tolist() == [True, False, False]  # epochs 2 and last
    cfg = tiny(epochs=4, drop_path_prob=0.2)
    assert [drop_path_at(cfg, e) for e in range(4)] == pytest.approx([0.0, 0.05, 0.1, 0.15])


def test_presets_and_bad_values():
    paper = resolve_config("cifar-paper")
    assert (paper.layers, paper.channels, paper.epochs, paper.batch_size, paper.lr, paper.lr_min,
            paper.weight_decay, paper.grad_clip, paper.auxiliary_weight, paper.cutout,
            paper.drop_path_prob) == (20, 36, 600, 96, 0.025, 0.0, 3e-4, 5.0, 0.4, 16, 0.2)
    assert resolve_config("cifar-toy").layers == 8
    imnet = resolve_config("imagenet-paper", overrides={"data_dir": "/x"})
    assert (imnet.layers, imnet.channels, imnet.epochs, imnet.warmup_epochs, imnet.label_smoothing,
            imnet.weight_decay, imnet.lr_scale_with_world, imnet.batch_scale_with_world) == \
        (14, 48, 250, 10, 0.1, 3e-5, True, True)
    assert set(PRESETS) == {"cifar-paper", "cifar-toy", "imagenet-paper", "quick"}
    bad = [("nope", {}), ("quick", {"layers": 2}), ("quick", {"amp_dtype": "fp8"}),
           ("quick", {"drop_path_prob": 1.0}), ("quick", {"epochs": 0}), ("imagenet-paper", {}),
           ("quick", {"warmup_epochs": 9})]
    for preset, kw in bad:
        with pytest.raises(ConfigError) as err:
            resolve_config(preset, overrides=kw)
        assert "\n" not in str(err.value)


def _run_cli(*args: str):
    return CliRunner().invoke(main, ["train", *args])


def test_cli_runs_and_errors_are_one_line(tmp_path):
    text = PUBLISHED["msr-darts"].to_darts_text()
    res = _run_cli("--genotype", text, "--dataset", "digits", "--train-limit", "64", "--test-limit",
                   "30", "--layers", "3", "--channels", "4", "--epochs", "1", "--batch-size", "32",
                   "--device", "cpu", "--no-auxiliary", "--out", str(tmp_path / "ok"))
    assert res.exit_code == 0, res.output
    assert "test error" in res.output and (tmp_path / "ok" / "summary.json").is_file()
    resumed = _run_cli("--resume", str(tmp_path / "ok"))  # already finished: nothing to train
    assert resumed.exit_code == 0 and "test error" in resumed.output
    cases = [(["--genotype", "no-such-cell"], "genotype"),
             (["--dataset", str(tmp_path / "missing.npz")], "missing.npz"),
             (["--preset", "quick", "--layers", "2"], "layers"),
             (["--resume", str(tmp_path / "nowhere")], "nowhere")]
    for args, word in cases:
        res = _run_cli(*args, "--device", "cpu", "--out", str(tmp_path / "bad")) if "--resume" \
            not in args else _run_cli(*args)
        assert res.exit_code != 0, args
        error_lines = [line for line in res.output.splitlines() if line.strip()]
        assert len(error_lines) == 1 and word in error_lines[0], res.output
    assert not (tmp_path / "bad").exists()  # inputs are checked before the run directory is made


def _jpeg_folder(root: Path, classes: int = 3, train: int = 4, val: int = 2) -> None:
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, count in (("train", train), ("val", val)):
        for c in range(classes):
            folder = root / split / f"n{c:08d}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 256, (36 + i, 44, 3), dtype=np.uint8)
                pixels[..., c] = 255  # a class signal
                Image.fromarray(pixels).save(folder / f"img{i}.JPEG", quality=80)


def test_imagenet_folder_end_to_end(tmp_path):
    _jpeg_folder(tmp_path / "imnet")
    cfg = resolve_config("imagenet-paper", overrides=dict(
        data_dir=str(tmp_path / "imnet"), image_size=32, layers=3, channels=4, epochs=1,
        warmup_epochs=0, batch_size=4, workers=0, device="cpu"))
    summary = run_train(cfg, tmp_path / "run", echo=_quiet)
    for name in ARTIFACTS:
        assert (tmp_path / "run" / name).is_file(), name
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["network"]["dataset"] == "imagenet" and config["network"]["num_classes"] == 3
    assert summary["image_size"] == 32 and np.isfinite(summary["test_loss"])
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    assert len(metrics) == 1 and metrics["train_loss"].notna().all()


def test_precision_choices_without_a_gpu():
    import warnings

    from rankscope.train.runner import precision

    notes: list[str] = []
    assert precision(tiny(amp=True), torch.device("cpu"), notes.append) == (None, None, False)
    assert notes and "CUDA only" in notes[0]
    cuda = torch.device("cuda")  # only the decision is checked; nothing runs on the device
    assert precision(tiny(amp=True, channels_last=True), cuda, _quiet)[::2] == (torch.bfloat16, True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler warns when CUDA is absent
        dtype, scaler, _ = precision(tiny(amp=True, amp_dtype="fp16"), cuda, _quiet)
    assert dtype == torch.float16 and scaler is not None
    assert precision(tiny(), cuda, _quiet)[:2] == (None, None)
