"""DDP with 2 CPU processes (gloo) launched by torchrun: exact gradient agreement, and a real run.

What must hold, and what need not:

* DDP averages the ranks' gradients. Each rank's gradient is that of the mean loss over its half of
  the global batch, so the average equals the single-process gradient of the whole batch only if
  a sample's loss does not depend on which other samples share its batch. BatchNorm in training
  mode breaks that (each rank normalises with its own half's statistics). It holds exactly when
  both halves are the same images: the statistics of [A; A] are those of A, so the single-process
  loss on [A; A] equals each rank's loss on A as a function of the weights, and so do gradients,
  clipping, momentum and weight decay. ``test_ddp_steps_match_single_process`` checks weights
  after three SGD steps that way (BN running means agree too; running variances do not, since the
  unbiased correction uses n/(n-1) per rank against 2n/(2n-1) in one process).
* For a real run (distinct halves) the training numbers differ from a single process, but the
  reported test numbers are global: the all-reduced test metrics must equal evaluating the saved
  checkpoint in one process on the whole test split.

One torchrun launch does both (< 60 s on 2 cores).
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
TORCHRUN = Path(sys.executable).with_name("torchrun")
STEPS, HALF = 3, 6  # SGD steps; images per rank per step


def _tiny_net():
    from rankscope.genotype import PUBLISHED
    from rankscope.network import NetworkConfig, build_network

    torch.manual_seed(0)
    cfg = NetworkConfig(genotype=PUBLISHED["darts-v2"].to_dict(), C=4, layers=3, num_classes=5,
                        in_channels=1, auxiliary=True, drop_path_prob=0.0)
    return build_network(cfg)


def _half_batches() -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(HALF, 1, 8, 8, generator=g), torch.randint(0, 5, (HALF,), generator=g))
            for _ in range(STEPS)]


def _train_steps(model, batches) -> None:
    from rankscope.engine import OptimConfig, cross_entropy_loss, make_sgd, train_epoch

    net = model.module if hasattr(model, "module") else model
    opt = make_sgd(net.parameters(), OptimConfig(lr=0.1, weight_decay=3e-4))
    train_epoch(model, batches, opt, loss_fn=cross_entropy_loss(aux_weight=0.4), grad_clip=5.0)


def _worker(out: Path) -> None:
    """Runs on each rank under torchrun."""
    torch.set_num_threads(1)
    from rankscope.train import distributed as D
    from rankscope.train.config import resolve_config
    from rankscope.train.runner import run_train

    env = D.setup(torch.device("cpu"))
    model = D.wrap_model(_tiny_net(), env, torch.device("cpu"), sync_bn=False, find_unused=False)
    _train_steps(model, _half_batches())  # both ranks: the same half A
    if env.is_main:
        torch.save(model.module.state_dict(), out / "ddp_steps.pt")
    cfg = resolve_config("quick", overrides=dict(
        genotype="darts-v2", dataset="digits", train_limit=96, test_limit=51, layers=3, channels=4,
        epochs=2, batch_size=32, cutout=2, device="cpu", seed=3))
    run_train(cfg, out / "run", echo=print)
    D.teardown(env)  # run_train found the group initialised and left it to us


@pytest.fixture(scope="module")
def ddp_out(tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("ddp")
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    cmd = [str(TORCHRUN), "--standalone", "--nproc_per_node", "2", __file__, str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=150)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return out, proc.stdout


def test_ddp_steps_match_single_process(ddp_out):
    out, _ = ddp_out
    torch.set_num_threads(1)
    net = _tiny_net()
    _train_steps(net, [(torch.cat([x, x]), torch.cat([y, y])) for x, y in _half_batches()])
    ddp = torch.load(out / "ddp_steps.pt", weights_only=True)
    single = net.state_dict()
    moved = 0
    for name, p in net.named_parameters():
        torch.testing.assert_close(ddp[name], p.detach(), rtol=1e-4, atol=1e-6, msg=name)
        moved += int(not torch.equal(p.detach(), _tiny_net().state_dict()[name]))
    assert moved > 0  # the steps changed the weights
    for name in single:
        if name.endswith("running_mean"):
            torch.testing.assert_close(ddp[name], single[name], rtol=1e-4, atol=1e-6, msg=name)


def test_ddp_run_reports_global_test_metrics(ddp_out):
    from rankscope.data import TensorLoader, class_balanced_subset, load_arrays
    from rankscope.engine import cross_entropy_loss, evaluate
    from rankscope.io import load_checkpoint
    from rankscope.network import NetworkConfig, build_network

    out, stdout = ddp_out
    run = out / "run"
    for name in ("config.json", "metrics.csv", "checkpoint.pt", "best.pt", "summary.json"):
        assert (run / name).is_file(), name
    assert stdout.count("epoch 2/2") == 1  # only rank 0 prints
    summary = json.loads((run / "summary.json").read_text())
    assert summary["world_size"] == 2
    metrics = pd.read_csv(run / "metrics.csv")
    assert list(metrics["epoch"]) == [1, 2] and metrics["train_loss"].notna().all()
    # The reported (all-reduced) test numbers are those of the saved model on the whole test split.
    ckpt = load_checkpoint(run / "checkpoint.pt", kind="train")
    effective = ckpt["config"]["effective"]
    assert (effective["world_size"], effective["global_batch"]) == (2, 32)
    net = build_network(NetworkConfig(**ckpt["config"]["network"]))
    net.load_state_dict(ckpt["state_dict"])
    arrays = load_arrays("digits")
    te = class_balanced_subset(arrays.y_test, 51, 3)
    loader = TensorLoader(arrays.x_test[te], arrays.y_test[te], batch_size=32, shuffle=False,
                          augment=None, mean=arrays.mean, std=arrays.std, seed=3)
    stats = evaluate(net, loader.epoch(0), loss_fn=cross_entropy_loss(), prefix="test")
    assert stats["test_n"] == 51
    last = metrics.iloc[-1]
    assert last["test_loss"] == pytest.approx(stats["test_loss"], rel=1e-5)
    assert last["test_top1_err"] == pytest.approx(100 * (1 - stats["test_acc"]), abs=1e-6)



def test_env_detection_and_single_process_helpers():
    from rankscope.errors import ConfigError
    from rankscope.train import distributed as D

    assert D.env_from_environ({}) == D.DistEnv()
    env = D.env_from_environ({"WORLD_SIZE": "4", "RANK": "3", "LOCAL_RANK": "1"})
    assert (env.rank, env.local_rank, env.world_size, env.distributed, env.is_main) == (3, 1, 4, True, False)
    with pytest.raises(ConfigError):
        D.env_from_environ({"WORLD_SIZE": "2", "RANK": "2"})
    single = D.DistEnv()
    stats = {"x_loss": 0.5, "x_acc": 0.25, "x_top5": 1.0, "x_n": 8}
    assert D.global_metrics(stats, "x", single, torch.device("cpu")) == stats
    assert D.on_main(lambda: 7, single) == 7


if __name__ == "__main__":
    _worker(Path(sys.argv[1]))
