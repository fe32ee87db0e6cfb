"""Time ``rankscope audit`` on a ResNet-50-size checkpoint, fast path against the full spectra.

Builds a randomly initialised torchvision-layout ResNet-50 (no torchvision needed), saves its state
dict, and audits it at 224x224: (1) through ``--model`` (exact geometry from a forward pass) and
(2) as a bare state dict with a layer map, both on the default fast path (stable ranks from the
exact largest singular value), then (3, baseline) with the full spectra. Prints wall seconds and
the ratio of each run to the baseline measured in the same run.

    python benchmarks/audit_resnet50.py [--threads 1] [--skip-full]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


def _time(path: Path, threads: int, **kwargs) -> tuple[float, str]:
    from rankscope.audit import audit_checkpoint

    start = time.perf_counter()
    res = audit_checkpoint(path, input_size=224, threads=threads, progress=None, **kwargs)
    return time.perf_counter() - start, res.summary_line()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--skip-full", action="store_true", help="skip the full-spectra baseline")
    args = parser.parse_args()
    from rankscope.audit.resnet import RESNET50_MAP, resnet50

    torch.manual_seed(0)
    model = "rankscope.audit.resnet:resnet50"
    runs = [("--model, fast", dict(model=model)),
            ("state dict + layer map, fast", dict(layer_map=RESNET50_MAP))]
    if not args.skip_full:
        runs.append(("--model, full spectra (baseline)", dict(model=model, full=True)))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.pth"
        torch.save(resnet50().state_dict(), path)
        print(f"checkpoint: {path.stat().st_size / 2**20:.0f} MiB, threads {args.threads}")
        times = {}
        for label, kwargs in runs:
            times[label], summary = _time(path, args.threads, **kwargs)
            print(f"{label}: {times[label]:.1f} s wall; {summary}")
    if not args.skip_full:
        base = times[runs[-1][0]]
        for label, _ in runs[:-1]:
            print(f"ratio full / ({label}): {base / times[label]:.2f}x")


if __name__ == "__main__":
    main()
