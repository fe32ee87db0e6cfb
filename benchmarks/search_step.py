"""Images/s of a search step (forward, backward, SGD step): reference vs fast supernet.

    .venv/bin/python benchmarks/search_step.py --threads 1,2 --repeat 3 --sizes quick,paper

One run prints, on the same machine: img/s (wall clock and per CPU-second) for both implementations
at the ``quick`` size (digits 8x8, 5 cells, C=8, batch 64) and the paper size (32x32, 8 cells, C=16,
batches 64 and 32), with and without spectral normalisation, the fast/reference ratios, the share
of a step spent in spectral normalisation (1 - t_without / t_with), the peak memory of a paper-size
step at batch 64 (fresh subprocess per implementation: CPU max-RSS growth over the step, CUDA
``max_memory_allocated``) and the projected time of a paper-scale search (50 epochs x 40k images).
Each figure is the best of ``--repeat`` timed steps after one warm-up step.  Record the load
(printed) with the figures: the machine is shared.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from rankscope.fastnet import build_supernet
from rankscope.specnorm import SpecNormConfig
from rankscope.supernet import SupernetConfig

SIZES = {  # name -> (in_channels, image_size, layers, C, batches)
    "quick": (1, 8, 5, 8, (64,)),
    "paper": (3, 32, 8, 16, (64, 32)),
}
IMPLS = ("reference", "fast")
SEARCH_IMAGES = 50 * 40_000  # paper-scale search: 50 epochs over 40k training images


@dataclass
class Timing:
    wall: float  # best seconds per step
    cpu: float   # process CPU seconds of that step (all threads)


def config_for(size: str, sn: bool) -> SupernetConfig:
    c_in, image, layers, C, _ = SIZES[size]
    return SupernetConfig(in_channels=c_in, C=C, layers=layers, image_size=image,
                          specnorm=SpecNormConfig(enabled=sn))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(size: str, sn: bool, impl: str, batch: int, device: torch.device):
    """A closure running one training step of a fresh supernet on fixed random data."""
    torch.manual_seed(0)
    cfg = config_for(size, sn)
    net = build_supernet(cfg, impl).to(device)
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    x = torch.randn(batch, cfg.in_channels, cfg.image_size, cfg.image_size, device=device)
    y = torch.randint(0, cfg.num_classes, (batch,), device=device)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()
        opt.step()
    return step


def time_step(step, repeat: int, device: torch.device) -> Timing:
    step()  # warm-up: allocator, oneDNN primitive caches
    best = Timing(float("inf"), float("inf"))
    for _ in range(repeat):
        _sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        _sync(device)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        if wall < best.wall:
            best = Timing(wall, cpu)
    return best


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_memory_child(impl: str, device: torch.device) -> dict:
    """Peak memory of one paper-size step at batch 64 (run in a fresh process)."""
    step = make_step("paper", True, impl, 64, device)
    if device.type == "cuda":
        step()
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
        step()
        return {"impl": impl, "peak_bytes": torch.cuda.max_memory_allocated(device) - base,
                "kind": "cuda max_memory_allocated over the step"}
    base = _rss_bytes()  # model, optimizer and data allocated; no step run yet in this process
    step()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"impl": impl, "peak_bytes": peak - base, "kind": "max-RSS growth over the first step"}


def peak_memory(impl: str, device: torch.device, threads: int) -> dict:
    cmd = [sys.executable, __file__, "--memory-child", impl, "--threads", str(threads),
           "--device", device.type]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def bench_size(size: str, repeat: int, device: torch.device) -> list[dict]:
    rows = []
    for batch in SIZES[size][4]:
        for sn in (True, False):
            for impl in IMPLS:
                t = time_step(make_step(size, sn, impl, batch, device), repeat, device)
                rows.append(dict(size=size, batch=batch, sn=sn, impl=impl, wall=t.wall, cpu=t.cpu,
                                 img_s=batch / t.wall, img_cpu_s=batch / t.cpu))
                print(f"  {size:5s} B={batch:3d} sn={'on ' if sn else 'off'} {impl:9s} "
                      f"{batch / t.wall:8.1f} img/s  ({t.wall:6.3f} s wall, {t.cpu:6.3f} s CPU, "
                      f"{batch / t.cpu:7.1f} img/CPU-s)", flush=True)
    return rows


def summarise(rows: list[dict], device: torch.device) -> None:
    """Ratios fast/reference, spectral-norm shares and the projected search time."""
    index = {(r["size"], r["batch"], r["sn"], r["impl"]): r for r in rows}
    for (size, batch, sn, impl), r in index.items():
        if impl != "fast":
            continue
        ref = index[(size, batch, sn, "reference")]
        line = (f"  {size:5s} B={batch:3d} sn={'on ' if sn else 'off'} fast/reference "
                f"{r['img_s'] / ref['img_s']:.2f}x wall, {r['img_cpu_s'] / ref['img_cpu_s']:.2f}x CPU")
        if sn:
            shares = []
            for name in IMPLS:
                on, off = index[(size, batch, True, name)], index[(size, batch, False, name)]
                shares.append(f"{name} {100 * max(0.0, 1 - off['cpu'] / on['cpu']):.0f}%")
            hours = SEARCH_IMAGES / r["img_s"] / 3600
            line += f" | spec-norm share of a step (CPU): {', '.join(shares)}"
            if size == "paper":
                line += f" | projected paper-scale search: {hours:.1f} h on {device.type}"
        print(line)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", default="1,2", help="comma-separated torch thread counts")
    ap.add_argument("--repeat", type=int, default=3, help="timed steps per case (best is kept)")
    ap.add_argument("--sizes", default="quick,paper", help="comma-separated: quick, paper")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--no-memory", action="store_true", help="skip the peak-memory measurement")
    ap.add_argument("--memory-child", choices=IMPLS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    threads = [int(t) for t in args.threads.split(",")]
    if args.memory_child:
        torch.set_num_threads(threads[0])
        print(json.dumps(peak_memory_child(args.memory_child, device)))
        return
    print(f"torch {torch.__version__}, device {device}, cores {os.cpu_count()}, "
          f"load average at start {os.getloadavg()}")
    for n in threads:
        torch.set_num_threads(n)
        print(f"threads={n}")
        rows = [r for size in args.sizes.split(",") for r in bench_size(size, args.repeat, device)]
        summarise(rows, device)
    if not args.no_memory and "paper" in args.sizes:
        for impl in IMPLS:
            m = peak_memory(impl, device, threads[0])
            print(f"peak memory, paper step B=64 with spec-norm, {impl}: "
                  f"{m['peak_bytes'] / 2**20:.0f} MiB ({m['kind']})")
    print(f"load average at end {os.getloadavg()}")


if __name__ == "__main__":
    main()
