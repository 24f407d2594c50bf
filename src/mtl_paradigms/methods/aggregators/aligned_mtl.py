"""Aligned-MTL ``"aligned_mtl"``: aligning the principal components of the gradient
matrix (Senushkin et al., 2023)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods.base import WeightedAggregator, check_matrix, gramian

ScaleMode = Literal["min", "median", "rmse"]


class AlignedMTL(WeightedAggregator):
    """Aligned-MTL (Senushkin et al., 2023, "Independent component alignment for MTL").

    With the Gram matrix ``G G^T = V diag(lambda) V^T``, the balance transformation is
    ``B = sqrt(sigma) V diag(lambda^{-1/2}) V^T`` and the *aligned* gradients are the rows of
    ``B G``: mutually orthogonal with equal squared norms ``sigma`` (the aligned system has
    condition number one). ``sigma`` is fixed by ``scale_mode``: ``"min"`` (the paper's
    default) takes the smallest kept eigenvalue ``lambda_min``, so no aligned gradient is
    longer than the singular value ``sqrt(lambda_min)`` of ``G``; ``"median"`` takes the (lower)
    median and ``"rmse"`` the mean of the kept eigenvalues.

    Eigenvalues ``<= rtol * lambda_max`` are dropped (their directions get weight zero and
    ``lambda_min`` is the smallest kept one); ``rtol=None`` means ``100 * T * eps`` of the
    dtype. In the rank-deficient case the aligned gradients span the kept subspace and are no
    longer orthogonal, but two same-direction gradients are left unchanged.

    Scale: the direction is the **mean** of the aligned gradients (mean convention of
    :mod:`mtl_paradigms.methods.base`); the reference code sums them, a factor ``T``.
    ``task_weights`` returns ``1^T B / T``, so that ``d = sum_t w_t g_t``; these weights do
    not sum to one in general (AlignedMTL also rescales the update).
    """

    name = "aligned_mtl"

    def __init__(self, scale_mode: ScaleMode = "min", rtol: float | None = None) -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(
                f"aligned_mtl: scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}"
            )
        if rtol is not None and not (0.0 <= rtol < 1.0):
            raise ValueError(f"aligned_mtl: rtol must be in [0, 1) or None, got {rtol!r}")
        self.scale_mode = scale_mode
        self.rtol = rtol

    def balance_matrix(self, grads: Tensor) -> Tensor:
        """The symmetric ``(*batch, T, T)`` matrix ``B`` with aligned gradients ``B G``."""
        check_matrix(grads)
        gram = gramian(grads)
        num_tasks = grads.shape[-2]
        eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
        rtol = 100 * num_tasks * torch.finfo(grads.dtype).eps if self.rtol is None else self.rtol
        lam_max = eigvals[..., -1:]
        keep = (eigvals > rtol * lam_max) & (lam_max > 0)
        if self.scale_mode == "min":
            sigma = torch.where(keep, eigvals, torch.inf).amin(dim=-1, keepdim=True)
        elif self.scale_mode == "median":
            sigma = torch.nanmedian(
                torch.where(keep, eigvals, torch.nan), dim=-1, keepdim=True
            ).values
        else:
            count = keep.sum(dim=-1, keepdim=True).clamp_min(1)
            sigma = torch.where(keep, eigvals, 0.0).sum(dim=-1, keepdim=True) / count
        # All eigenvalues dropped (zero gradients): no direction is kept at all.
        sigma = torch.where(keep.any(dim=-1, keepdim=True), sigma, 0.0)
        tiny = torch.finfo(grads.dtype).tiny
        factor = torch.where(keep, (sigma / eigvals.clamp_min(tiny)).sqrt(), 0.0)
        return (eigvecs * factor.unsqueeze(-2)) @ eigvecs.transpose(-1, -2)

    def aligned_gradients(self, grads: Tensor) -> Tensor:
        """The aligned gradients ``B G``, shape ``(*batch, T, D)``."""
        return self.balance_matrix(grads) @ grads

    def task_weights(self, grads: Tensor) -> Tensor:
        """Weights ``w = 1^T B / T`` on the original gradients, shape ``(*batch, T)``."""
        return self.balance_matrix(grads).mean(dim=-2)
