"""Accuracy of the spectral-norm estimates a search can use, against the exact zero-padded norm.

    .venv/bin/python benchmarks/specnorm_accuracy.py [--convs 6] [--seed 0]

For the conv kinds of the paper-size supernet (depthwise 3x3/5x5, dilation 1/2, stride 1/2 at the
resolutions where they occur; 1x1 pointwise), with PyTorch's default init, it prints the relative
error (sigma_est - sigma) / sigma of: power iteration with Z = 1, 2, 5 from a cold (random) start;
warm-started after k = 1, 10, 50 earlier steps of Z iterations while the weight drifts by a relative
1e-3 per step (a stand-in for SGD); and the exact circular-padding FFT norm (``method="exact"``).
sigma is the exact norm of the zero-padded operator (Lanczos, ``zero_padded_spectral_norm``).
Power iteration under-estimates (errors <= 0); the circular norm can be either side.
"""
from __future__ import annotations

import argparse

import torch
from torch import nn

from rankscope.spectra import conv_spectral_norm, power_iteration_fn, zero_padded_spectral_norm
from rankscope.specnorm import circular_size

# name -> (C, kernel, dilation, stride, input size)
KINDS = {
    "dw 3x3 @32": (16, 3, 1, 1, 32), "dw 5x5 @32": (16, 5, 1, 1, 32),
    "dw 3x3 d2 @32": (16, 3, 2, 1, 32), "dw 5x5 d2 @32": (16, 5, 2, 1, 32),
    "dw 5x5 s2 @32": (16, 5, 1, 2, 32), "dw 5x5 d2 @8": (64, 5, 2, 1, 8),
    "pw 1x1 C=16": (16, 1, 1, 1, 32),
}
ZS, KS = (1, 2, 5), (1, 10, 50)


def make_conv(c: int, k: int, d: int, s: int) -> nn.Conv2d:
    groups = 1 if k == 1 else c
    return nn.Conv2d(c, c, k, stride=s, padding=d * (k - 1) // 2, dilation=d, groups=groups,
                     bias=False).double()


def estimate(w, conv, size, z, v0=None, gen=None):
    """(sigma estimate, vector) after z power iterations from v0 (or a random start)."""
    return power_iteration_fn(w, (w.shape[0] if conv.groups > 1 else w.shape[1], size, size),
                              stride=conv.stride, padding=conv.padding, dilation=conv.dilation,
                              groups=conv.groups, n_iter=z, v0=v0, generator=gen)


def _exact(w: torch.Tensor, conv: nn.Conv2d, size: int) -> float:
    return float(zero_padded_spectral_norm(w, size, stride=conv.stride, dilation=conv.dilation,
                                           groups=conv.groups, padding=conv.padding))


def errors_for(conv: nn.Conv2d, size: int, gen: torch.Generator) -> dict[str, float]:
    """Relative errors of every estimate for one conv (keys: 'cold Z=..', 'warm k=.. Z=..', 'fft')."""
    w0 = conv.weight.detach()
    drift = [w0]
    for _ in range(max(KS)):  # the weight's trajectory: relative 1e-3 Gaussian drift per step
        w = drift[-1]
        drift.append(w + 1e-3 * w.norm() / w.numel() ** 0.5 * torch.randn(w.shape, generator=gen,
                                                                              dtype=w.dtype))
    exact = [_exact(w, conv, size) for w in [drift[0]] + [drift[k] for k in KS]]
    out = {}
    for z in ZS:
        out[f"cold Z={z}"] = float(estimate(w0, conv, size, z, gen=gen)[0]) / exact[0] - 1
        for i, k in enumerate(KS):
            v = None
            for w in drift[:k]:  # k earlier steps of Z iterations, then the measured one
                v = estimate(w, conv, size, z, v0=v, gen=gen)[1]
            out[f"warm k={k} Z={z}"] = float(estimate(drift[k], conv, size, z, v0=v)[0]) / exact[i + 1] - 1
    torus = circular_size(conv.kernel_size, (size, size), conv.stride, conv.dilation)
    fft = float(conv_spectral_norm(w0, torus, stride=conv.stride, dilation=conv.dilation,
                                   groups=conv.groups))
    out["fft (circular)"] = fft / exact[0] - 1
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--convs", type=int, default=6, help="random convs per kind")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    gen = torch.Generator().manual_seed(args.seed)
    columns = [f"cold Z={z}" for z in ZS] + [f"warm k={k} Z={z}" for z in ZS for k in KS] + \
        ["fft (circular)"]
    print("relative error of sigma: median / worst over", args.convs, "convs per kind (%)")
    print(f"{'estimate':16s}" + "".join(f"{name:>16s}" for name in KINDS))
    table = {name: [errors_for(make_conv(c, k, d, s), n, gen) for _ in range(args.convs)]
             for name, (c, k, d, s, n) in KINDS.items()}
    for col in columns:
        cells = []
        for name in KINDS:
            vals = torch.tensor([r[col] for r in table[name]]) * 100
            worst = vals[vals.abs().argmax()]
            cells.append(f"{float(vals.median()):+7.2f}/{float(worst):+7.2f}")
        print(f"{col:16s}" + "".join(f"{c:>16s}" for c in cells), flush=True)


if __name__ == "__main__":
    main()
