"""Rebuild the network behind a checkpoint so that a forward pass can reveal every conv's setting.

* rankscope "train" checkpoints: ``config["network"]`` holds the :class:`~rankscope.network.NetworkConfig`
  fields; the evaluation network is rebuilt with :func:`~rankscope.network.build_network`.
* rankscope "search" checkpoints: ``config["supernet"]`` holds the
  :class:`~rankscope.supernet.SupernetConfig` fields (with a nested ``specnorm`` dict).
* any checkpoint plus ``--model pkg.module:factory``: the user names a zero-argument callable that
  returns the ``nn.Module`` (user-chosen code, imported on request, e.g. a torchvision constructor).

Each builder returns a :class:`Rebuilt`: the module with the checkpoint's weights loaded, the input
shape (C, H, W) of one example, and keyword arguments its ``forward`` needs.
"""
from __future__ import annotations

import dataclasses
import importlib
from typing import Any, Callable

import torch
from torch import nn

from rankscope.errors import CheckpointError

_IMAGE_SIZES = {"cifar": 32, "imagenet": 224}


@dataclasses.dataclass
class Rebuilt:
    """A network ready for :func:`rankscope.audit.layers.discover_module_layers`."""

    module: nn.Module
    input_shape: tuple[int, ...]
    forward_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    description: str = ""


def rebuild_rankscope(payload: dict, input_size: int | None = None) -> Rebuilt:
    """Rebuild a rankscope checkpoint's network and load its state dict (strict)."""
    kind, config = payload.get("kind"), payload.get("config") or {}
    if kind == "train" and isinstance(config.get("network"), dict):
        # Runs record the real input (e.g. 8x8 digits); older records fall back to the dataset kind.
        recorded = (config.get("effective") or {}).get("input_shape")
        built = _build_train(config["network"], input_size or (recorded[-1] if recorded else None))
    elif kind == "search" and isinstance(config.get("supernet"), dict):
        built = _build_search(config["supernet"], input_size)
    else:
        raise CheckpointError(f"rankscope {kind!r} checkpoint has no 'network'/'supernet' config "
                              "to rebuild its network from")
    load_weights(built.module, payload["state_dict"])
    return built


def _build_train(values: dict, input_size: int | None) -> Rebuilt:
    from rankscope.io import config_from_dict
    from rankscope.network import NetworkConfig, build_network

    config = config_from_dict(NetworkConfig, values)
    net = build_network(config)
    size = input_size or _IMAGE_SIZES.get(config.dataset, 32)
    return Rebuilt(net, (config.in_channels, size, size), {},
                   f"{config.dataset} network, C={config.C}, {config.layers} cells")


def _build_search(values: dict, input_size: int | None) -> Rebuilt:
    from rankscope.io import config_from_dict
    from rankscope.specnorm import SpecNormConfig
    from rankscope.supernet import SearchNetwork, SupernetConfig

    values = dict(values)
    if isinstance(values.get("specnorm"), dict):
        values["specnorm"] = config_from_dict(SpecNormConfig, values["specnorm"])
    config = config_from_dict(SupernetConfig, values)
    net = SearchNetwork(config)
    size = input_size or config.image_size
    kwargs: dict[str, Any] = {}
    if config.mixing == "alpha":  # forward needs mixing weights; uniform ones reveal the same shapes
        uniform = torch.full((config.num_edges, len(config.primitives)), 1.0 / len(config.primitives))
        kwargs = {"weights_normal": uniform, "weights_reduce": uniform}
    return Rebuilt(net, (config.in_channels, size, size), kwargs,
                   f"search network, C={config.C}, {config.layers} cells")


def build_factory(spec: str) -> nn.Module:
    """Import ``pkg.module:callable`` and call it without arguments; it must return an nn.Module."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise CheckpointError(f"--model {spec!r} must look like package.module:factory")
    try:
        factory: Callable[[], Any] = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise CheckpointError(f"--model {spec}: cannot import ({exc})") from None
    model = factory()
    if not isinstance(model, nn.Module):
        raise CheckpointError(f"--model {spec} returned a {type(model).__name__}, not an nn.Module")
    return model


def load_weights(module: nn.Module, state_dict: dict[str, torch.Tensor]) -> None:
    """``load_state_dict(strict=True)`` with a one-line error naming the first mismatches."""
    try:
        module.load_state_dict(state_dict, strict=True)
    except RuntimeError as exc:
        missing, unexpected = _mismatch(module, state_dict)
        detail = (f"missing {missing[:3]}, unexpected {unexpected[:3]}" if missing or unexpected
                  else str(exc).strip().splitlines()[0][:160] if str(exc).strip() else "shape mismatch")
        raise CheckpointError(f"weights do not fit the rebuilt network: {detail}") from None


def _mismatch(module: nn.Module, sd: dict) -> tuple[list[str], list[str]]:
    own = set(module.state_dict())
    return sorted(own - set(sd)), sorted(set(sd) - own)


def first_input_channels(module: nn.Module) -> int | None:
    """in_channels of the first conv in module order (to shape an example input)."""
    for mod in module.modules():
        if isinstance(mod, nn.Conv2d):
            return int(mod.in_channels)
    return None
