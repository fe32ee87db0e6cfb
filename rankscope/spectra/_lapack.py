"""Batched small dense LAPACK calls for the spectra engine, single-threaded, on the fastest backend.

Measured on this project's 2-core AMD EPYC machine (docs/spectra.md, "Performance"): for the
64–512-sized complex matrices of conv spectra, numpy/scipy's OpenBLAS LAPACK is 1.3–1.5× faster
than torch's MKL for ``heevd``/``gesdd`` and 1.6–2.8× for ``potrf``; and both libraries run these
small problems 4–7× *slower* with 2 threads on a loaded machine than with 1. So, outside autograd,
``eigvalsh`` / ``svdvals`` / the Cholesky test go to numpy/scipy under ``single_threaded()``
(threadpoolctl limits OpenBLAS, ``torch.set_num_threads`` limits torch); tensors that need
gradients stay on torch. References: LAPACK Users' Guide (Anderson et al., 3rd ed., 1999) for
``xHEEVD``, ``xGESDD`` and ``xPOTRF``.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional

import numpy as np
import torch
from scipy.linalg.lapack import get_lapack_funcs
from torch import Tensor

THREADS: Optional[int] = 1   # threads for these calls; None leaves torch and OpenBLAS as they are
TORCH_ONLY = False           # True: always use torch (e.g. to compare backends)
_controller = None


def _blas_limit(n: int):
    """threadpoolctl's limit on OpenBLAS (a scikit-learn dependency); a no-op if it is missing."""
    global _controller
    try:
        if _controller is None:
            from threadpoolctl import ThreadpoolController
            _controller = ThreadpoolController()
        return _controller.limit(limits=n, user_api="blas")
    except ImportError:  # pragma: no cover - threadpoolctl ships with scikit-learn
        return _nothing()


@contextmanager
def _nothing() -> Iterator[None]:
    yield


@contextmanager
def single_threaded(n: Optional[int] = THREADS) -> Iterator[None]:
    """Run the block with n torch threads and n OpenBLAS threads; restore both afterwards."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    if before != n:
        torch.set_num_threads(n)
    try:
        with _blas_limit(n):
            yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


def _numpy_ok(x: Tensor) -> bool:
    return not TORCH_ONLY and not (x.requires_grad and torch.is_grad_enabled()) and x.device.type == "cpu"


def eigvalsh(x: Tensor) -> Tensor:
    """Eigenvalues (ascending) of a batch of Hermitian matrices (…, d, d), lower triangle used."""
    if not _numpy_ok(x):
        return torch.linalg.eigvalsh(x)
    return torch.from_numpy(np.linalg.eigvalsh(x.detach().contiguous().numpy()))


def svdvals(x: Tensor) -> Tensor:
    """Singular values (descending) of a batch of matrices (…, r, c)."""
    if not _numpy_ok(x) or x.numel() == 0:
        return torch.linalg.svdvals(x)
    return torch.from_numpy(np.linalg.svd(x.detach().contiguous().numpy(), compute_uv=False))


def cholesky_fails(x: Tensor, min_scipy_dim: int = 48) -> Tensor:
    """For a batch (B, d, d) of Hermitian matrices: True where Cholesky breaks down (x not
    numerically positive definite). x is overwritten. Small d: torch's batched call is cheaper
    than per-matrix scipy calls."""
    if not _numpy_ok(x) or x.shape[-1] < min_scipy_dim:
        return torch.linalg.cholesky_ex(x).info != 0
    arr = x.detach().contiguous().numpy()
    (potrf,) = get_lapack_funcs(("potrf",), (arr,))
    # Each C-ordered Hermitian matrix, read in Fortran order, is its conjugate: same definiteness.
    return torch.tensor([potrf(a.T, lower=1, overwrite_a=1, clean=0)[1] != 0 for a in arr], dtype=torch.bool)
