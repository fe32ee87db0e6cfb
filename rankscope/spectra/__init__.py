"""Exact spectra, norms and stable ranks of convolution operators; noise sensitivity.

Circular padding is exact by the 2-D DFT (Sedghi, Gupta & Long, ICLR 2019; strides by polyphase
decomposition, Senderovich et al. 2022); zero padding via closed-form Frobenius norms, Lanczos or
power iteration (Behrmann et al., ICML 2019). See docs/spectra.md for definitions and numbers.
"""
from .dense import dense_conv_operator
from .fourier import conv_singular_values, conv_spectral_norm
from .noise import linear_noise_sensitivity, noise_sensitivity
from .norms import conv_frobenius_norm, zero_padded_spectral_norm
from .power import power_iteration, power_iteration_fn
from .rank import (conv_stable_rank, matrix_stable_rank, normalized_stable_rank, operator_shape,
                   stable_rank)
from .separable import separable_singular_values, separable_spectral_norm

__all__ = [
    "conv_singular_values", "conv_spectral_norm", "conv_frobenius_norm", "zero_padded_spectral_norm",
    "power_iteration", "power_iteration_fn", "stable_rank", "conv_stable_rank",
    "normalized_stable_rank", "matrix_stable_rank", "operator_shape", "noise_sensitivity",
    "linear_noise_sensitivity", "separable_singular_values", "separable_spectral_norm",
    "dense_conv_operator",
]
