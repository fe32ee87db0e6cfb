"""Benchmark of rankscope.spectra against a plain numpy implementation of Sedghi et al. (2019).

    .venv/bin/python benchmarks/spectra_bench.py [--threads 1] [--repeat 3] [--skip-numpy-resnet]

Prints wall and CPU times (best of --repeat), speed-up ratios against the numpy reference measured
in the same run, and the max relative error of every path (all singular values, σ₁, stable rank)
against that reference; not a test. The thread count is fixed for torch, MKL and OpenBLAS alike
before they are imported, so the numpy reference and rankscope run under the same conditions. The
machine is shared: the load average is printed with the numbers.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from typing import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1, help="BLAS/LAPACK/torch threads (default 1)")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (default 3)")
    parser.add_argument("--skip-numpy-resnet", action="store_true", help="skip the slow numpy ResNet run")
    parser.add_argument("--only-speed", action="store_true", help="skip the padding-gap and power tables")
    return parser.parse_args()


ARGS = _args() if __name__ == "__main__" else None
if ARGS is not None:  # must precede the numpy/torch imports to take effect
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(ARGS.threads)
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
import torch  # noqa: E402

from rankscope.spectra import (conv_frobenius_norm, conv_singular_values, conv_spectral_norm,  # noqa: E402
                               conv_stable_rank, power_iteration_fn, zero_padded_spectral_norm)
from rankscope.spectra._checks import conv_spec  # noqa: E402
from rankscope.spectra.fourier import frequency_matrices, spectrum_from_matrices  # noqa: E402

# (c_in, c_out, kernel, stride, input size) of every conv in ResNet-18 at 224×224 (He et al. 2016).
RESNET18 = [(3, 64, 7, 2, 224)] + [(64, 64, 3, 1, 56)] * 4 + [
    (64, 128, 3, 2, 56), (64, 128, 1, 2, 56)] + [(128, 128, 3, 1, 28)] * 3 + [
    (128, 256, 3, 2, 28), (128, 256, 1, 2, 28)] + [(256, 256, 3, 1, 14)] * 3 + [
    (256, 512, 3, 2, 14), (256, 512, 1, 2, 14)] + [(512, 512, 3, 1, 7)] * 3
SMALL = [(16, 32, 3), (64, 16, 3), (128, 8, 5), (256, 8, 3)]  # (c, n, k)


def numpy_singular_values(w: np.ndarray, n: int, stride: int = 1) -> np.ndarray:
    """Reference: full 2-D FFT of the (polyphase) kernel, one numpy SVD per frequency, sorted."""
    c_out, c_in, k, _ = w.shape
    grid = np.zeros((c_out, c_in, n, n), dtype=w.dtype)
    grid[:, :, :k, :k] = w
    q = n // stride
    grid = grid.reshape(c_out, c_in, q, stride, q, stride).transpose(0, 1, 3, 5, 2, 4)
    spec = np.fft.fft2(grid, axes=(-2, -1))  # (co, ci, s, s, q, q)
    mats = spec.transpose(4, 5, 0, 1, 2, 3).reshape(q * q, c_out, c_in * stride * stride)
    return np.sort(np.linalg.svd(mats, compute_uv=False).ravel())[::-1]


def best_time(fn: Callable[[], object], repeat: int) -> tuple[float, object]:
    """Best wall time of ``repeat`` runs (the CPU time of the same runs is in ``LAST_CPU``)."""
    best, out = float("inf"), None
    LAST_CPU[0] = float("inf")
    for _ in range(repeat):
        start, cpu = time.perf_counter(), time.process_time()
        out = fn()
        best = min(best, time.perf_counter() - start)
        LAST_CPU[0] = min(LAST_CPU[0], time.process_time() - cpu)
    return best, out


LAST_CPU = [0.0]


def rel_error(got: np.ndarray, ref: np.ndarray) -> float:
    """max |got − ref| / max(ref, 1e-8·σ₁): relative, except for (numerically) zero values."""
    floor = 1e-8 * ref[0]
    return float(np.max(np.abs(got - ref) / np.maximum(ref, floor)))


def _stable_rank(sv: np.ndarray) -> float:
    return float(np.square(sv).sum() / sv[0] ** 2)


def small_cases(repeat: int) -> None:
    print("\n(c, n, k) square stride-1 layers, float64; numpy = full fft2 + stacked np.linalg.svd;"
          " 'old' = rfft2 half-spectrum + torch svdvals (the straightforward path); times best of"
          f" {repeat}, wall (CPU)")
    print(f"{'c':>4} {'n':>3} {'k':>2} {'numpy s':>14} {'old s':>7} {'all σ s':>14} {'ratio':>6}"
          f" {'max rel err':>11} {'σ₁ s':>14} {'ratio':>6} {'σ₁ rel err':>10}")
    for c, n, k in SMALL:
        w = torch.randn(c, c, k, k, dtype=torch.float64, generator=torch.Generator().manual_seed(c))
        t_np, ref = best_time(lambda: numpy_singular_values(w.numpy(), n), repeat)
        c_np = LAST_CPU[0]
        spec = conv_spec(w, 1, 1, 1, allow_batch=True)
        t_old, _ = best_time(lambda: spectrum_from_matrices(*frequency_matrices(spec, (n, n))), repeat)
        t_pt, got = best_time(lambda: conv_singular_values(w, n), repeat)
        c_pt = LAST_CPU[0]
        t_top, top = best_time(lambda: conv_spectral_norm(w, n), repeat)
        c_top = LAST_CPU[0]
        err, err_top = rel_error(got.numpy(), ref), abs(float(top) / ref[0] - 1)
        print(f"{c:>4} {n:>3} {k:>2} {t_np:>6.3f} ({c_np:5.3f}) {t_old:>7.3f} {t_pt:>6.3f} ({c_pt:5.3f})"
              f" {t_np / t_pt:>6.1f} {err:>11.1e} {t_top:>6.3f} ({c_top:5.3f}) {t_np / t_top:>6.1f}"
              f" {err_top:>10.1e}")


def _resnet_weights(dtype: torch.dtype) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(co, ci, k, k, dtype=torch.float64, generator=gen).to(dtype) * (2 / (ci * k * k)) ** 0.5
            for ci, co, k, _, _ in RESNET18]


def resnet(repeat: int, skip_numpy: bool) -> None:
    print(f"\nResNet-18 at 224×224, 20 conv layers (random weights), best of {repeat}, wall (CPU) s;"
          " errors against the numpy float64 reference")
    refs = None
    if not skip_numpy:
        start, cpu = time.perf_counter(), time.process_time()
        refs = [numpy_singular_values(w.numpy(), n, s) for w, (_, _, _, s, n)
                in zip(_resnet_weights(torch.float64), RESNET18)]
        t_np, c_np = time.perf_counter() - start, time.process_time() - cpu
        print(f"  numpy reference float64, all singular values: {t_np:6.2f} ({c_np:6.2f})")
    for dtype in (torch.float32, torch.float64):
        layers = list(zip(_resnet_weights(dtype), RESNET18))
        t_all, sv = best_time(lambda: [conv_singular_values(w, n, stride=s) for w, (_, _, _, s, n) in layers], repeat)
        c_all = LAST_CPU[0]
        t_sr, sr = best_time(lambda: [conv_stable_rank(w, n, stride=s) for w, (_, _, _, s, n) in layers], repeat)
        c_sr = LAST_CPU[0]
        count = sum(v.numel() for v in sv)
        line = (f"  {str(dtype):>14}: all {count} singular values {t_all:6.2f} ({c_all:6.2f});"
                f" stable ranks (largest-σ path) {t_sr:6.2f} ({c_sr:6.2f})")
        if refs is not None:
            err = max(rel_error(v.double().numpy(), r) for v, r in zip(sv, refs))
            err_sr = max(abs(float(x) / _stable_rank(r) - 1) for x, r in zip(sr, refs))
            line += f"; max rel err all σ {err:.1e}, stable rank {err_sr:.1e}"
            if dtype == torch.float64:
                line += f"; ratio vs numpy {t_np / t_all:.1f}"
        print(line)


# (label, c_in, c_out, k, dilation, groups, n): layers for the padding gap and power-iteration tables.
GAP_LAYERS = [("pointwise 1x1 16->16 @32", 16, 16, 1, 1, 1, 32),
              ("depthwise 3x3 c=16 @32", 16, 16, 3, 1, 16, 32),
              ("depthwise 5x5 dil 2 c=16 @32", 16, 16, 5, 2, 16, 32),
              ("3x3 16->16 @32", 16, 16, 3, 1, 1, 32),
              ("3x3 64->64 @16", 64, 64, 3, 1, 1, 16),
              ("3x3 64->64 @56 (ResNet-18 layer1)", 64, 64, 3, 1, 1, 56)]


def _gap_weight(c_in: int, c_out: int, k: int, groups: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(c_in * 1000 + k)
    return torch.randn(c_out, c_in // groups, k, k, dtype=torch.float64, generator=gen)


def padding_gap() -> None:
    print("\nCircular vs zero padding ('same' zero padding d*(k-1)//2), float64, random N(0,1) weights")
    print(f"{'layer':<36} {'s1 circ':>8} {'s1 zero':>8} {'F circ':>8} {'F zero':>8} {'SR circ':>9}"
          f" {'SR zero':>9} {'SR gap':>7}")
    for label, ci, co, k, d, g, n in GAP_LAYERS:
        w = _gap_weight(ci, co, k, g)
        geo = dict(dilation=d, groups=g)
        s_c, s_z = conv_spectral_norm(w, n, **geo), zero_padded_spectral_norm(w, n, padding="zeros", **geo)
        f_c = conv_frobenius_norm(w, n, padding="circular", **geo)
        f_z = conv_frobenius_norm(w, n, padding="zeros", **geo)
        r_c, r_z = (f_c / s_c) ** 2, (f_z / s_z) ** 2
        print(f"{label:<36} {s_c:8.3f} {s_z:8.3f} {f_c:8.1f} {f_z:8.1f} {r_c:9.2f} {r_z:9.2f}"
              f" {100 * (r_z / r_c - 1):6.1f}%")


def power_underestimate(seeds: int = 10) -> None:
    print(f"\nPower iteration (zero padding) relative under-estimate 1 - est/exact over {seeds} random starts")
    print(f"{'layer':<36} {'Z=5 mean':>9} {'Z=5 max':>9} {'Z=50 mean':>10} {'Z=50 max':>9}")
    for label, ci, co, k, d, g, n in GAP_LAYERS:
        w = _gap_weight(ci, co, k, g)
        pad = d * (k - 1) // 2
        exact = float(zero_padded_spectral_norm(w, n, padding=pad, dilation=d, groups=g))
        gaps = {5: [], 50: []}
        for seed in range(seeds):
            for z in gaps:
                est, _ = power_iteration_fn(w, (ci, n, n), padding=pad, dilation=d, groups=g, n_iter=z,
                                            generator=torch.Generator().manual_seed(seed))
                gaps[z].append(1 - float(est) / exact)
        g5, g50 = np.array(gaps[5]), np.array(gaps[50])
        print(f"{label:<36} {g5.mean():9.2e} {g5.max():9.2e} {g50.mean():10.2e} {g50.max():9.2e}")


def main() -> None:
    torch.set_num_threads(ARGS.threads)
    print(f"torch {torch.__version__}, numpy {np.__version__}, threads {ARGS.threads}, "
          f"cpus {os.cpu_count()}, load {os.getloadavg()[0]:.1f}")
    small_cases(ARGS.repeat)
    resnet(ARGS.repeat, ARGS.skip_numpy_resnet)
    if not ARGS.only_speed:
        padding_gap()
        power_underestimate()
    print(f"load at end {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
