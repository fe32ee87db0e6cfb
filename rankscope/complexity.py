"""Model size: parameter counts and multiply-adds, measured from the model itself.

Conventions (those of the DARTS / MSR-DARTS papers, checked against their published numbers in
REFERENCE.md section 2 by ``tests/test_network.py``):

* Parameters: every trainable tensor element, BN affine weights included, the auxiliary head
  excluded (any parameter whose qualified name contains ``"auxiliary"``).
* Multiply-adds: one per weight-times-activation product of the ``nn.Conv2d`` and ``nn.Linear``
  layers of one forward pass of a single image in eval mode (so the auxiliary head, which runs in
  training only, is not counted), i.e. for a conv ``H_out·W_out·C_out·(C_in/groups)·k_h·k_w`` and
  for a linear ``in_features·out_features``. Biases, BN, ReLU, pooling, additions and
  concatenations are not counted. ``count_batchnorm=True`` adds 2 per BN output element (scale and
  shift, as the ``thop`` profiler counts an affine BN in eval mode).

Published multiply-adds at 224×224 (ImageNet network, C=48, 14 cells) against this count:

* MSR-DARTS, 632 M published: 622.9 M conv+linear (-1.4 %); 632.4 M with ``count_batchnorm=True``
  (+0.07 %), so the MSR-DARTS authors evidently counted BN as thop does.
* DARTS V2, 574 M published: 529.9 M conv+linear (-7.7 %); 538.2 M with BN. No per-layer convention
  (BN, ReLU, pooling, strided convs at input resolution, ungrouped depthwise convs, auxiliary head)
  reproduces 574 M while keeping the 4.72 M parameters; others who measured the DARTS V2 network
  report the same gap (quark0/darts issue 46: 523 M conv+fc, 544.6 M with a counter that adds
  BN/ReLU/pooling). The 574 M is therefore taken as not reproducible from the published genotype.
"""
from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module, exclude_auxiliary: bool = True) -> int:
    """Number of parameter elements; the auxiliary head is left out by default (papers' convention)."""
    return sum(p.numel() for name, p in model.named_parameters()
               if not (exclude_auxiliary and "auxiliary" in name))


def _conv_madds(module: nn.Conv2d, output: torch.Tensor) -> int:
    """Multiply-adds of one image through ``module``; output is (B, C_out, H_out, W_out)."""
    per_output = (module.in_channels // module.groups) * module.kernel_size[0] * module.kernel_size[1]
    return int(output[0].numel()) * per_output


def _linear_madds(module: nn.Linear, output: torch.Tensor) -> int:
    """Multiply-adds of one sample: in_features per output element (any leading dims)."""
    return int(output.numel() // output.shape[0]) * module.in_features


def count_multiply_adds(model: nn.Module, input_size: int | tuple[int, int],
                        in_channels: int = 3, count_batchnorm: bool = False) -> int:
    """Multiply-adds of one forward of a (1, in_channels, H, W) image in eval mode.

    Measured with forward hooks on every Conv2d and Linear (and BatchNorm2d when
    ``count_batchnorm``, 2 per output element); the model's train/eval mode is restored
    afterwards. The input is created on the model's device and dtype.
    """
    h, w = (input_size, input_size) if isinstance(input_size, int) else input_size
    total = 0

    def hook(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        if isinstance(module, nn.Conv2d):
            total += _conv_madds(module, output)
        elif isinstance(module, nn.BatchNorm2d):
            total += 2 * int(output[0].numel())
        else:
            total += _linear_madds(module, output)

    kinds = (nn.Conv2d, nn.Linear, nn.BatchNorm2d) if count_batchnorm else (nn.Conv2d, nn.Linear)
    handles = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, kinds)]
    reference = next(model.parameters(), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None else torch.float32
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, in_channels, h, w, device=device, dtype=dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return total
