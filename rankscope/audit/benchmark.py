"""Time ``rankscope audit`` on a ResNet-50-size checkpoint (run: python -m rankscope.audit.benchmark).

Builds a randomly initialised torchvision-layout ResNet-50 (no torchvision needed), saves its
state dict, and audits it (1) through the CLI path with ``--model`` (exact geometry at 224x224) and
(2) as a bare state dict at the same input size.  Prints wall-clock seconds and the estimate for
the full spectra; ``--full`` also times the full spectra.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch


# What a bare torchvision ResNet-50 state dict does not say: the strided convs, and the stem's
# max-pool (invisible in the weights) halving the size before layer1.
RESNET50_MAP = {"conv1": {"stride": 2}, "layer1.0.conv1": {"input_size": 56},
                "layer[234].0.conv2": {"stride": 2}, "layer[234].0.downsample.0": {"stride": 2}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--full", action="store_true", help="also time the full spectra")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    from rankscope.audit import audit_checkpoint
    from rankscope.audit.resnet import resnet50

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "resnet50.pth"
        torch.save(resnet50().state_dict(), path)
        print(f"checkpoint: {path.stat().st_size / 2**20:.0f} MiB")
        runs = [("--model, fast", dict(model="rankscope.audit.resnet:resnet50")),
                ("state dict + layer map, fast", dict(layer_map=RESNET50_MAP))]
        if args.full:
            runs.append(("--model, full", dict(model="rankscope.audit.resnet:resnet50", full=True)))
        for label, kwargs in runs:
            start = time.perf_counter()
            res = audit_checkpoint(path, input_size=224, threads=args.threads, **kwargs)
            print(f"{label}: {time.perf_counter() - start:.1f} s wall; {res.summary_line()}")


if __name__ == "__main__":
    main()
