"""Input normalisation and validation shared by the spectra modules.

Every problem a user can cause raises ``ValueError`` with a one-line message naming it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Union

import torch
from torch import Tensor, nn

Pair = tuple[int, int]
IntOrPair = Union[int, tuple[int, int]]
PaddingSpec = Union[str, int, tuple[int, int], None]


@dataclass(frozen=True)
class ConvSpec:
    """A conv operator: weight (B, c_out, c_in/groups, kh, kw) plus geometry.

    ``batched`` records whether the caller passed a 5-D stack of weights (results keep the
    leading dim) or a single 4-D weight (results are squeezed).
    """

    weight: Tensor
    stride: Pair
    dilation: Pair
    groups: int
    batched: bool

    @property
    def c_out(self) -> int:
        return self.weight.shape[1]

    @property
    def c_in(self) -> int:
        return self.weight.shape[2] * self.groups

    @property
    def kernel(self) -> Pair:
        return (self.weight.shape[3], self.weight.shape[4])

    @property
    def extent(self) -> Pair:
        """Size of the dilated kernel, d*(k-1)+1 per axis."""
        return tuple(d * (k - 1) + 1 for d, k in zip(self.dilation, self.kernel))  # type: ignore


def as_pair(value: IntOrPair, name: str) -> Pair:
    """Turn an int or a 2-sequence of positive ints into a pair; ValueError otherwise."""
    if isinstance(value, bool):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    try:
        pair = tuple(int(v) for v in value)  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}") from None
    if len(pair) != 2 or any(v < 1 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair of them, got {value!r}")
    return pair  # type: ignore[return-value]


def check_weight(weight: Tensor, *, allow_batch: bool = False) -> Tensor:
    """Check dtype, rank and finiteness of a conv weight; returns it as 5-D (B, co, ci/g, kh, kw)."""
    if not isinstance(weight, Tensor):
        raise ValueError(f"weight must be a torch.Tensor or nn.Conv2d, got {type(weight).__name__}")
    if weight.dtype not in (torch.float32, torch.float64):
        raise ValueError(f"weight dtype must be float32 or float64, got {weight.dtype}")
    dims = (4, 5) if allow_batch else (4,)
    if weight.dim() not in dims:
        want = "4-D (c_out, c_in/groups, kh, kw)" + (" or 5-D (batch, ...)" if allow_batch else "")
        raise ValueError(f"weight must be {want}, got shape {tuple(weight.shape)}")
    if weight.numel() == 0:
        raise ValueError(f"weight is empty, shape {tuple(weight.shape)}")
    if not bool(torch.isfinite(weight).all()):
        raise ValueError("weight contains NaN or Inf values")
    return weight if weight.dim() == 5 else weight.unsqueeze(0)


def conv_spec(weight: Union[Tensor, nn.Conv2d], stride: IntOrPair | None, dilation: IntOrPair | None,
              groups: int | None, *, allow_batch: bool = False) -> ConvSpec:
    """Build a ConvSpec from a weight tensor or an ``nn.Conv2d`` (whose own geometry is the default).

    Explicit arguments that contradict a module's own geometry are an error, not silently used.
    """
    if isinstance(weight, nn.Conv2d):
        own = {"stride": weight.stride, "dilation": weight.dilation, "groups": weight.groups}
        given = {"stride": stride, "dilation": dilation, "groups": groups}
        for key, val in given.items():
            if val is not None and (as_pair(val, key) if key != "groups" else val) != own[key]:
                raise ValueError(f"{key}={val!r} contradicts the module's own {key}={own[key]!r}")
        stride, dilation, groups, weight = own["stride"], own["dilation"], own["groups"], weight.weight
    w5 = check_weight(weight, allow_batch=allow_batch)
    groups = 1 if groups is None else groups
    if isinstance(groups, bool) or not isinstance(groups, int) or groups < 1:
        raise ValueError(f"groups must be a positive int, got {groups!r}")
    if w5.shape[1] % groups:
        raise ValueError(f"groups={groups} does not divide c_out={w5.shape[1]}")
    return ConvSpec(w5, as_pair(1 if stride is None else stride, "stride"),
                    as_pair(1 if dilation is None else dilation, "dilation"), groups, weight.dim() == 5)


def check_circular_size(spec: ConvSpec, input_size: IntOrPair) -> Pair:
    """Input size (h, w) valid for the circular operator: stride divides it, kernel fits in it."""
    size = as_pair(input_size, "input_size")
    for axis, n, s, e in zip("hw", size, spec.stride, spec.extent):
        if n < e:
            raise ValueError(f"input size {n} ({axis}) is smaller than the dilated kernel extent {e}")
        if n % s:
            raise ValueError(f"stride {s} does not divide input size {n} ({axis})")
    return size


def zero_padding_amount(spec: ConvSpec, padding: PaddingSpec) -> Pair:
    """Zero-padding amount per axis: ``"zeros"`` means d*(k-1)//2 ("same" for odd kernels)."""
    if padding == "zeros":
        return tuple(d * (k - 1) // 2 for d, k in zip(spec.dilation, spec.kernel))  # type: ignore
    if isinstance(padding, str):
        raise ValueError(f"padding must be 'circular', 'zeros', an int or a pair, got {padding!r}")
    pad = (padding, padding) if isinstance(padding, int) else tuple(padding)  # type: ignore[arg-type]
    if len(pad) != 2 or any((not isinstance(p, int)) or p < 0 for p in pad):
        raise ValueError(f"padding amount must be a non-negative int or pair, got {padding!r}")
    return pad  # type: ignore[return-value]


def zero_output_size(spec: ConvSpec, size: Pair, pad: Pair) -> Pair:
    """Output size of F.conv2d with zero padding; ValueError when the kernel does not fit."""
    out = []
    for axis, n, p, s, e in zip("hw", size, pad, spec.stride, spec.extent):
        if n + 2 * p < e:
            raise ValueError(f"padded input size {n + 2 * p} ({axis}) is smaller than the dilated "
                             f"kernel extent {e}")
        out.append((n + 2 * p - e) // s + 1)
    return (out[0], out[1])


def module_padding(conv: nn.Conv2d) -> PaddingSpec:
    """The padding an ``nn.Conv2d`` really applies, in this package's padding vocabulary."""
    extent = [d * (k - 1) + 1 for d, k in zip(conv.dilation, conv.kernel_size)]
    if conv.padding_mode == "circular":
        if isinstance(conv.padding, str) or any(2 * p != e - 1 for p, e in zip(conv.padding, extent)):
            raise ValueError("circular padding is only supported as 2*padding == dilated kernel extent - 1")
        return "circular"
    if conv.padding_mode != "zeros":
        raise ValueError(f"padding_mode {conv.padding_mode!r} is not supported (use zeros or circular)")
    if isinstance(conv.padding, str):
        if conv.padding == "valid":
            return 0
        if any(e % 2 == 0 for e in extent):
            raise ValueError("padding='same' with an even dilated kernel extent is asymmetric; not supported")
        return "zeros"  # 'same' (stride 1, odd extent) pads d*(k-1)//2 on each side
    return tuple(conv.padding)  # type: ignore[return-value]
