"""``rankscope spectrum``: exact spectrum, norms and stable ranks of one conv layer."""
from __future__ import annotations

from pathlib import Path
from typing import Optional

import click


def _load_weight(path: Path):
    """A 4-D float tensor saved with torch.save, loaded without unpickling arbitrary objects."""
    import torch

    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or unsafe files: one clear line instead of a traceback
        raise ValueError(f"cannot load {path} as a tensor file: {str(exc).splitlines()[0]}") from None
    if not isinstance(obj, torch.Tensor) or obj.dim() != 4:
        shape = tuple(obj.shape) if isinstance(obj, torch.Tensor) else type(obj).__name__
        raise ValueError(f"{path} must hold one 4-D weight tensor (c_out, c_in/groups, kh, kw), got {shape}")
    return obj.float() if obj.dtype not in (torch.float32, torch.float64) else obj


def _random_weight(c_in: int, c_out: int, kernel: int, groups: int, seed: int):
    import torch

    if min(c_in, c_out, kernel) < 1:
        raise ValueError("--c-in, --c-out and --kernel must be positive")
    if groups < 1 or c_in % groups or c_out % groups:
        raise ValueError(f"--groups {groups} must divide --c-in {c_in} and --c-out {c_out}")
    gen = torch.Generator().manual_seed(seed)
    # Kaiming-uniform-like scale, as nn.Conv2d initialises; the stable rank does not depend on it.
    bound = (1.0 / (c_in // groups * kernel * kernel)) ** 0.5
    return (torch.rand(c_out, c_in // groups, kernel, kernel, generator=gen) * 2 - 1) * bound


@click.command()
@click.option("--c-in", type=int, default=16, show_default=True, help="Input channels.")
@click.option("--c-out", type=int, default=16, show_default=True, help="Output channels.")
@click.option("--kernel", type=int, default=3, show_default=True, help="Square kernel size.")
@click.option("--input-size", type=int, default=32, show_default=True, help="Input height = width.")
@click.option("--stride", type=int, default=1, show_default=True)
@click.option("--dilation", type=int, default=1, show_default=True)
@click.option("--groups", type=int, default=1, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the random weight.")
@click.option("--weights", type=click.Path(exists=True, dir_okay=False, path_type=Path), default=None,
              help="A .pt file holding a 4-D weight tensor (overrides --c-in/--c-out/--kernel).")
@click.option("--top", type=int, default=10, show_default=True, help="How many singular values to list.")
def spectrum(c_in: int, c_out: int, kernel: int, input_size: int, stride: int, dilation: int,
             groups: int, seed: int, weights: Optional[Path], top: int) -> None:
    """Exact singular values (circular padding), power-iteration estimates (zero padding), norms and
    stable ranks of one conv layer: a seeded random one, or --weights FILE.pt."""
    import torch

    from rankscope import spectra

    weight = _load_weight(weights) if weights else _random_weight(c_in, c_out, kernel, groups, seed)
    weight = weight.to(torch.float64)
    geo = dict(stride=stride, dilation=dilation, groups=groups)
    sv = spectra.conv_singular_values(weight, input_size, **geo)
    c_in_total = weight.shape[1] * groups
    zero = (dilation * (weight.shape[2] - 1)) // 2  # "same" zero padding
    z5, _ = spectra.power_iteration_fn(weight, (c_in_total, input_size, input_size), padding=zero,
                                       n_iter=5, generator=torch.Generator().manual_seed(seed), **geo)
    z50, _ = spectra.power_iteration_fn(weight, (c_in_total, input_size, input_size), padding=zero,
                                        n_iter=50, generator=torch.Generator().manual_seed(seed), **geo)
    rows = [
        ("operator", f"{tuple(weight.shape)} on {c_in_total}x{input_size}x{input_size}, "
                     f"stride {stride}, dilation {dilation}, groups {groups}"),
        ("sigma_max exact (circular)", f"{float(sv[0]):.6g}"),
        (f"sigma_max exact (zero pad {zero}, Lanczos)",
         f"{float(spectra.zero_padded_spectral_norm(weight, input_size, padding=zero, **geo)):.6g}"),
        (f"sigma_max power iteration Z=5 (zero pad {zero})", f"{float(z5):.6g}"),
        (f"sigma_max power iteration Z=50 (zero pad {zero})", f"{float(z50):.6g}"),
        ("Frobenius norm (circular)", f"{float(spectra.conv_frobenius_norm(weight, input_size, **geo)):.6g}"),
        ("stable rank, operator (circular)", f"{float(spectra.stable_rank(sv)):.6g}"),
        ("stable rank, normalised by min(rows, cols)",
         f"{float(spectra.normalized_stable_rank(weight, input_size, **geo)):.6g}"),
        ("stable rank, reshaped c_out x (c_in*k*k) matrix",
         f"{float(spectra.matrix_stable_rank(weight)):.6g}"),
        (f"top {min(top, sv.numel())} singular values",
         " ".join(f"{float(v):.5g}" for v in sv[: max(top, 0)])),
    ]
    width = max(len(name) for name, _ in rows)
    for name, value in rows:
        click.echo(f"{name:<{width}}  {value}")
