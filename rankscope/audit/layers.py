"""Layer discovery: which conv/linear layers a network has and how each one really computes.

Two sources:

* an ``nn.Module`` plus an example input shape: one forward pass with hooks records every
  ``nn.Conv2d``'s true input size next to its stride, padding, dilation and groups (exact);
* a bare state dict: the kernel size is read from the weight's shape, the rest comes from the user's
  layer map or is *assumed*, and every assumed field is listed in :attr:`LayerSpec.assumed`.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterable, Sequence

import torch
from torch import nn
from torch.nn.utils import parametrize

from rankscope.audit.hparams import LayerMap, lookup
from rankscope.errors import CheckpointError

Pair = tuple[int, int]
_WEIGHT_SUFFIXES = (".parametrizations.weight.original", ".weight_orig", ".weight")


@dataclasses.dataclass
class LayerSpec:
    """One layer to audit. ``input_size`` is (h, w) of the layer's input, None if unknown."""

    name: str
    kind: str  # "conv2d" or "linear"
    weight: torch.Tensor
    input_size: Pair | None = None
    stride: Pair = (1, 1)
    padding: Pair = (0, 0)
    dilation: Pair = (1, 1)
    groups: int = 1
    padding_mode: str = "zeros"
    assumed: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def in_channels(self) -> int:
        """Input channels of the operator (``weight.shape[1] * groups`` for a conv)."""
        return self.weight.shape[1] * (self.groups if self.kind == "conv2d" else 1)

    @property
    def out_size(self) -> Pair | None:
        """Output (h, w) of a conv with the layer's own zero padding."""
        if self.kind != "conv2d" or self.input_size is None:
            return None
        k = self.weight.shape[-2:]
        return tuple((n + 2 * p - d * (kk - 1) - 1) // s + 1  # type: ignore[return-value]
                     for n, p, d, kk, s in zip(self.input_size, self.padding, self.dilation, k,
                                               self.stride))


def _pair(v: Any) -> Pair:
    return (int(v), int(v)) if isinstance(v, int) else (int(v[0]), int(v[1]))


# --------------------------------------------------------------------------- nn.Module + hooks

def discover_module_layers(model: nn.Module, input_shape: Sequence[int], *,
                           forward_kwargs: dict[str, Any] | None = None) -> list[LayerSpec]:
    """Run one forward pass on zeros of shape ``(1, *input_shape)`` and describe each layer.

    Every ``nn.Conv2d`` and ``nn.Linear`` (subclasses included) becomes a :class:`LayerSpec` in
    ``named_modules`` order; a layer the forward pass never reaches keeps ``input_size=None``.
    ``forward_kwargs`` are passed to the forward (e.g. a search network's mixing weights).
    Weights are read as the layer computes them (after any parametrization, in eval mode).
    """
    seen: dict[str, list[Pair]] = {}
    handles = [mod.register_forward_hook(_size_hook(name, seen))
               for name, mod in model.named_modules() if isinstance(mod, nn.Conv2d)]
    was_training = model.training
    model.eval()  # parametrizations (e.g. spectral norm) must not update buffers here
    try:
        with torch.no_grad():
            _dry_run(model, input_shape, forward_kwargs or {})
            return [_module_spec(name, mod, seen) for name, mod in model.named_modules()
                    if isinstance(mod, (nn.Conv2d, nn.Linear))]
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _module_spec(name: str, mod: nn.Module, seen: dict[str, list[Pair]]) -> LayerSpec:
    if isinstance(mod, nn.Conv2d):
        return _conv_spec(name, mod, seen.get(name, []))
    return LayerSpec(name=name, kind="linear", weight=mod.weight.detach().clone())


def _size_hook(name: str, seen: dict[str, list[Pair]]):
    def hook(module: nn.Module, inputs: tuple, output: Any) -> None:
        seen.setdefault(name, []).append(tuple(inputs[0].shape[-2:]))
    return hook


def _dry_run(model: nn.Module, input_shape: Sequence[int], kwargs: dict[str, Any]) -> None:
    """One forward pass on zeros (the caller sets eval mode and no_grad)."""
    param = next(iter(model.parameters()), None)
    device = param.device if param is not None else torch.device("cpu")
    dtype = param.dtype if param is not None and param.is_floating_point() else torch.float32
    try:
        x = torch.zeros(1, *input_shape, device=device, dtype=dtype)
        model(x, **{k: v.to(device) if torch.is_tensor(v) else v for k, v in kwargs.items()})
    except Exception as exc:  # a wrong input shape is the user's to fix: one line, no traceback
        msg = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"forward pass with input shape {tuple(input_shape)} failed: "
                              f"{msg[:200]}") from None


def _conv_spec(name: str, mod: nn.Conv2d, sizes: list[Pair]) -> LayerSpec:
    notes: list[str] = []
    if not sizes:
        notes.append("not reached by the forward pass")
    elif len(set(sizes)) > 1:
        notes.append(f"called {len(sizes)} times at sizes {sorted(set(sizes))}; first one used")
    dilation = _pair(mod.dilation)
    padding = _module_padding(mod, dilation, notes)
    if mod.padding_mode != "zeros":
        notes.append(f"padding_mode={mod.padding_mode}")
    if parametrize.is_parametrized(mod, "weight"):
        notes.append("parametrized weight, as computed in eval mode")
    return LayerSpec(name=name, kind="conv2d", weight=mod.weight.detach().clone(),
                     input_size=sizes[0] if sizes else None, stride=_pair(mod.stride),
                     padding=padding, dilation=dilation, groups=int(mod.groups),
                     padding_mode=mod.padding_mode, notes=tuple(notes))


def _module_padding(mod: nn.Conv2d, dilation: Pair, notes: list[str]) -> Pair:
    """Integer (top, left) padding; string paddings ``valid``/``same`` are resolved."""
    if isinstance(mod.padding, str):
        if mod.padding == "valid":
            return (0, 0)
        totals = [d * (k - 1) for d, k in zip(dilation, mod.kernel_size)]
        if any(t % 2 for t in totals):
            notes.append("padding='same' is asymmetric for this kernel")
        return (totals[0] // 2, totals[1] // 2)
    return _pair(mod.padding)


# --------------------------------------------------------------------------- bare state dict

def weight_entries(state_dict: dict[str, torch.Tensor]) -> Iterable[tuple[str, torch.Tensor]]:
    """(layer name, weight) for every 2-D or 4-D weight tensor, in state-dict order."""
    for key, tensor in state_dict.items():
        name = _layer_name(key)
        if name is not None and tensor.ndim in (2, 4) and tensor.is_floating_point():
            yield name, tensor


def _layer_name(key: str) -> str | None:
    if key == "weight":
        return ""
    for suffix in _WEIGHT_SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)]
    return None


def layers_from_state_dict(state_dict: dict[str, torch.Tensor], *, input_size: int | Pair,
                           layer_map: LayerMap | None = None) -> list[LayerSpec]:
    """Describe each conv/linear weight of a bare state dict; unknown fields are assumed, and named.

    Defaults (each listed in ``assumed`` unless the layer map gives it): stride 1, dilation 1, "same"
    padding ``dilation*(k-1)//2``, groups 1 -- except a conv with one input channel per group whose
    output count equals the previous conv's (the depthwise pattern), which is assumed depthwise;
    groups=1 is not marked when the weight's input channels equal the previous conv's outputs (or
    for the first conv).  Input size: the output size of the most recent conv that produced as many
    channels as this conv reads (the network input, ``input_size``, for the first), which follows
    plain chains and residual branches but cannot see pooling layers.
    """
    layer_map = layer_map or {}
    specs: list[LayerSpec] = []
    prev_out: int | None = None
    sizes: dict[int, Pair] = {}
    base = _pair(input_size)
    for name, w in weight_entries(state_dict):
        if w.ndim == 2:
            specs.append(LayerSpec(name=name, kind="linear", weight=w))
            continue
        spec = _conv_from_weight(name, w, lookup(layer_map, name), prev_out, sizes, base)
        specs.append(spec)
        prev_out = int(w.shape[0])
        if spec.out_size is not None and min(spec.out_size) >= 1:
            sizes[prev_out] = spec.out_size
    return specs


def _conv_from_weight(name: str, w: torch.Tensor, given: dict[str, Any], prev_out: int | None,
                      sizes: dict[int, Pair], base: Pair) -> LayerSpec:
    assumed: list[str] = []

    def field(key: str, default: Any) -> Any:
        if key in given:
            return given[key]
        assumed.append(key)
        return default

    groups = given.get("groups")
    if groups is None:
        groups, certain = _infer_groups(w, prev_out)
        if not certain:
            assumed.append("groups")
    size = _pair(field("input_size", sizes.get(int(w.shape[1]) * int(groups), base)))
    stride = _pair(field("stride", 1))
    dilation = _pair(field("dilation", 1))
    kernel = tuple(w.shape[-2:])
    padding = _pair(field("padding", tuple(d * (k - 1) // 2 for d, k in zip(dilation, kernel))))
    return LayerSpec(name=name, kind="conv2d", weight=w, input_size=size, stride=stride,
                     padding=padding, dilation=dilation, groups=int(groups), assumed=tuple(assumed))


def _infer_groups(w: torch.Tensor, prev_out: int | None) -> tuple[int, bool]:
    """(groups, certain) from the weight shape and the previous conv's output channels."""
    c_out, c_in_per_group = int(w.shape[0]), int(w.shape[1])
    if prev_out is None or c_in_per_group == prev_out:
        return 1, True
    if c_in_per_group == 1 and c_out == prev_out:
        return c_out, False  # depthwise pattern: inferred, hence marked as assumed
    return 1, False
