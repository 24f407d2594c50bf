"""IMTL-G ``"imtl_g"``: the gradient part of impartial MTL (Liu et al., 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.base import WeightedAggregator, check_matrix


class IMTLG(WeightedAggregator):
    """IMTL-G (Liu et al., 2021, "Towards impartial multi-task learning"), gradient part.

    Finds weights ``alpha`` with ``sum_t alpha_t = 1`` such that ``d = sum_t alpha_t g_t`` has
    the same projection onto every unit task gradient ``u_t = g_t / |g_t|``. With the rows
    ``D_t = g_1 - g_t`` and ``U_t = u_1 - u_t`` (``t = 2..T``), the closed form of the paper is
    ``alpha_{2..T} = g_1 U^T (D U^T)^{-1}`` and ``alpha_1 = 1 - sum_{t >= 2} alpha_t``.

    Scale: the weights sum to one, like EW's ``1/T`` weights, so ``d`` is already on the mean
    scale of :mod:`mtl_paradigms.methods.base` and is **not** divided by ``T``; with identical
    task gradients ``d`` equals their mean, and with two tasks of equal gradient norm the
    weights are ``(1/2, 1/2)``. (Reference code applies ``alpha`` without a factor too.)

    Degenerate cases: ``(D U^T)`` is inverted with the pseudo-inverse
    (:func:`torch.linalg.pinv`), so identical gradients give ``alpha = (1, 0, ..., 0)`` (the
    mean); a zero task gradient has ``u_t = 0``. The weights may be negative. The loss-scale
    part of IMTL (IMTL-L) is a separate weighting and is not included.
    """

    name = "imtl_g"

    def task_weights(self, grads: Tensor) -> Tensor:
        """The weights ``alpha``, shape ``(*batch, T)``, summing to one."""
        check_matrix(grads)
        num_tasks = grads.shape[-2]
        if num_tasks == 1:
            return torch.ones(grads.shape[:-1], dtype=grads.dtype, device=grads.device)
        norms = grads.norm(dim=-1, keepdim=True)
        units = torch.where(norms > 0, grads / norms.clamp_min(torch.finfo(grads.dtype).tiny), 0.0)
        diff_g = grads[..., :1, :] - grads[..., 1:, :]  # D, (*batch, T-1, D)
        diff_u = (units[..., :1, :] - units[..., 1:, :]).transpose(-1, -2)  # U^T, (*batch, D, T-1)
        rhs = grads[..., :1, :] @ diff_u  # g_1 U^T, (*batch, 1, T-1)
        rest = (rhs @ torch.linalg.pinv(diff_g @ diff_u)).squeeze(-2)  # (*batch, T-1)
        first = 1.0 - rest.sum(dim=-1, keepdim=True)
        return torch.cat([first, rest], dim=-1)
