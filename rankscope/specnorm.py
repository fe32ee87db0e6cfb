"""Spectral normalisation of the convs inside the candidate ops (paper 3.3, eqs. 4-5, Appendix A).

Before every training forward each conv weight W is replaced by ``W * C / sigma(W)``, where
``sigma(W)`` estimates the spectral norm of the conv *operator* (not of the reshaped kernel) at the
conv's true input resolution.  The estimate comes from ``n_iter`` power iterations (conv2d, then
conv_transpose2d with the same padding/stride/dilation/groups and the output_padding that restores the
input size; Behrmann et al. 2019).  The iteration vector lives in a registered buffer, so it is
warm-started between steps and saved in checkpoints.  The iterations run without gradients; the final
``sigma = ||conv(v)||`` for the unit vector v is recomputed with gradients, so gradients flow through
sigma exactly as in the reference ``W / sigma(W)`` once v has converged (envelope theorem).

Padding: the network's convs pad with zeros, so the power iteration converges to the norm of the
zero-padded operator.  ``method="exact"`` instead uses ``rankscope.spectra.conv_spectral_norm``, the
exact (differentiable) norm of the *circular*-padded operator (Sedghi et al.); the two agree for 1x1
convs and differ by boundary effects for k x k convs.  The circular operator needs the stride to
divide the input and the dilated kernel to fit in it; where it does not (e.g. a dilated 5x5, extent
9, on the 8x8 maps of the last cells) the smallest torus that satisfies both is used.

Eval mode runs no iteration: the weight is ``W * C / sigma_last`` with the estimate of the last
training forward (a buffer), deterministic, and the last normalised training weight while W is
unchanged.  The mechanism is ``torch.nn.utils.parametrize``: ``conv.weight`` is the normalised weight
and ``conv.parametrizations.weight.original`` the raw one (what stable-rank selection reads; stable rank
is scale-invariant).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from rankscope.errors import ConfigError

METHODS = ("power", "exact")
_INIT_ITERS = 10  # iterations at registration, so sigma is sensible before the first training step
_EPS = 1e-12

Size2 = tuple[int, int]


@dataclass(frozen=True)
class SpecNormConfig:
    """Options of the spectral normalisation: target norm C, iterations Z, estimator, warm start."""

    enabled: bool = True
    C: float = 1.0
    n_iter: int = 5
    method: str = "power"
    warm_start: bool = True

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ConfigError(f"specnorm method must be one of {', '.join(METHODS)}, got {self.method!r}")
        if not self.C > 0:
            raise ConfigError(f"specnorm C must be positive, got {self.C}")
        if self.n_iter < 0:
            raise ConfigError(f"specnorm n_iter must be >= 0, got {self.n_iter}")


def _pair(x: int | tuple[int, ...]) -> Size2:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def conv_output_size(conv: nn.Conv2d, size: Size2) -> Size2:
    """Spatial output size of ``conv`` for an input of spatial size ``size`` (PyTorch's formula)."""
    k, s, p, d = (_pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding),
                  _pair(conv.dilation))
    return tuple((size[i] + 2 * p[i] - d[i] * (k[i] - 1) - 1) // s[i] + 1 for i in range(2))


def _output_padding(conv: nn.Conv2d, size: Size2) -> Size2:
    """output_padding making conv_transpose2d return exactly ``size`` (needed for strided convs)."""
    k, s, p, d = (_pair(conv.kernel_size), _pair(conv.stride), _pair(conv.padding),
                  _pair(conv.dilation))
    out = conv_output_size(conv, size)
    return tuple(size[i] - ((out[i] - 1) * s[i] - 2 * p[i] + d[i] * (k[i] - 1) + 1) for i in range(2))


def is_matrix_conv(conv: nn.Conv2d) -> bool:
    """A 1x1, stride-1, unpadded, ungrouped conv: its operator is W (x) I, so ||op|| = ||W||_2."""
    return (_pair(conv.kernel_size) == (1, 1) and _pair(conv.stride) == (1, 1)
            and _pair(conv.padding) == (0, 0) and conv.groups == 1)


class ConvSpectralNorm(nn.Module):
    """Parametrization ``W -> W * C / sigma(W)`` for one conv at a fixed input resolution.

    Buffers: ``v`` the power-iteration vector (``(C_in,)`` on the matrix path, else
    ``(1, C_in, H, W)``), ``sigma`` the last estimate (scalar).
    """

    def __init__(self, conv: nn.Conv2d, input_size: Size2, config: SpecNormConfig):
        super().__init__()
        self.config = config
        self.input_size = _pair(input_size)
        self.matrix = is_matrix_conv(conv)
        # Conv hyper-parameters only: the weight arrives as the forward's argument.
        self.stride, self.padding = _pair(conv.stride), _pair(conv.padding)
        self.dilation, self.groups = _pair(conv.dilation), conv.groups
        self.output_padding = _output_padding(conv, self.input_size)
        w = conv.weight
        shape = (conv.in_channels,) if self.matrix else (1, conv.in_channels, *self.input_size)
        self.register_buffer("v", _unit(w.new_empty(shape).normal_()))
        self.register_buffer("sigma", w.new_ones(()))
        with torch.no_grad():  # also validates the geometry for method="exact" early
            self.sigma.copy_(self._sigma(w.detach(), max(_INIT_ITERS, config.n_iter), True))

    def extra_repr(self) -> str:
        path = "matrix" if self.matrix else f"operator@{self.input_size[0]}x{self.input_size[1]}"
        return f"C={self.config.C}, n_iter={self.config.n_iter}, method={self.config.method}, {path}"

    # -- the operator and its adjoint -------------------------------------------------------------
    def _op(self, v: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.matrix:
            return w.flatten(1) @ v  # (C_out,)
        return F.conv2d(v, w, None, self.stride, self.padding, self.dilation, self.groups)

    def _op_t(self, u: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.matrix:
            return w.flatten(1).t() @ u  # (C_in,)
        return F.conv_transpose2d(u, w, None, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)

    def _estimate(self, w: torch.Tensor, n_iter: int, warm: bool) -> torch.Tensor:
        """Z power iterations (no grad), then sigma = ||A v|| recomputed with grad through w."""
        with torch.no_grad():
            v = self.v if warm else _unit(torch.randn_like(self.v))
            for _ in range(n_iter):
                v = _unit(self._op_t(self._op(v, w), w))
            self.v.copy_(v)
        # Clone: the buffer is updated in place on the next call, the graph must keep this copy.
        return self._op(self.v.clone(), w).norm()

    def _exact(self, w: torch.Tensor) -> torch.Tensor:
        from rankscope.spectra import conv_spectral_norm  # lazy: only method="exact" needs it
        size = circular_size(w.shape[-2:], self.input_size, self.stride, self.dilation)
        return conv_spectral_norm(w, size, stride=self.stride, dilation=self.dilation,
                                  groups=self.groups)

    def _sigma(self, w: torch.Tensor, n_iter: int, warm: bool) -> torch.Tensor:
        return self._exact(w) if self.config.method == "exact" else self._estimate(w, n_iter, warm)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return w * (self.config.C / self.sigma.clamp_min(_EPS))  # no iteration: deterministic
        sigma = self._sigma(w, self.config.n_iter, self.config.warm_start)
        self.sigma.copy_(sigma.detach())
        return w * (self.config.C / sigma.clamp_min(_EPS))


def circular_size(kernel: Sequence[int], size: Size2, stride: Size2, dilation: Size2) -> Size2:
    """Smallest torus >= ``size`` on which the circular conv exists: the dilated kernel fits and
    the stride divides it (``size`` itself whenever possible)."""
    out = []
    for k, n, s, d in zip(kernel, size, stride, dilation):
        m = max(n, d * (k - 1) + 1)
        out.append(-(-m // s) * s)  # round up to a multiple of the stride
    return tuple(out)


def _unit(v: torch.Tensor) -> torch.Tensor:
    return v / v.norm().clamp_min(_EPS)


def apply_spectral_norm(net: nn.Module, config: SpecNormConfig,
                        convs: Iterable[tuple[nn.Conv2d, Size2]] | None = None
                        ) -> list[ConvSpectralNorm]:
    """Register ``ConvSpectralNorm`` on every conv of ``convs`` (default: ``net.candidate_convs()``,
    which yields ``(name, conv, input_size)``); returns the parametrizations, empty when disabled."""
    if not config.enabled:
        return []
    if convs is None:
        convs = [(conv, size) for _, conv, size in net.candidate_convs()]
    out = []
    for conv, size in convs:
        if parametrize.is_parametrized(conv, "weight"):
            raise ValueError("spectral normalisation is already applied to this conv")
        sn = ConvSpectralNorm(conv, size, config)
        # unsafe=True skips a check call (one more estimate): the output has W's shape and dtype.
        parametrize.register_parametrization(conv, "weight", sn, unsafe=True)
        out.append(sn)
    return out


def spectral_norm_modules(net: nn.Module) -> Iterator[tuple[str, nn.Conv2d, ConvSpectralNorm]]:
    """``(name, conv, parametrization)`` for every spectrally normalised conv of ``net``."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d) and parametrize.is_parametrized(module, "weight"):
            for p in module.parametrizations.weight:
                if isinstance(p, ConvSpectralNorm):
                    yield name, module, p


def raw_weight(conv: nn.Conv2d) -> torch.Tensor:
    """The un-normalised weight (no power iteration runs): what stable-rank measurement reads."""
    if parametrize.is_parametrized(conv, "weight"):
        return conv.parametrizations.weight.original
    return conv.weight
