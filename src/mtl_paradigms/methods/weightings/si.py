"""SI ``"si"``: the scale-invariant loss ``(1/T) sum_t log L_t``."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods._checks import check_positive
from mtl_paradigms.methods.base import Weighting


class SI(Weighting):
    """Scale-invariant loss: ``combine = (1/T) sum_t log L_t`` (as screened by Gama & Grassi).

    Its gradient is ``(1/T) sum_t grad L_t / L_t``, so its weights are ``1/(T L_t)`` (detached):
    the gradient is *exactly* UW-O's (Elich et al., 2024), and a constant factor ``alpha_t`` on
    ``L_t`` only adds the constant ``log alpha_t`` to the loss, leaving the gradient unchanged.
    Only the reported value differs from UW-O (``mean log L`` instead of 1). ``min_loss`` guards
    the logarithm and the division for a loss that reaches zero. Mean scale: at ``L_t = 1`` the
    weights are ``1/T``.
    """

    name = "si"

    def __init__(self, min_loss: float = 1e-12) -> None:
        self.min_loss = check_positive("si", "min_loss", min_loss)

    def weights(self, losses: Tensor) -> Tensor:
        num_tasks = losses.shape[-1]
        return (1.0 / (num_tasks * losses.detach().clamp_min(self.min_loss))).detach()

    def combine(self, losses: Tensor) -> Tensor:
        return torch.log(losses.clamp_min(self.min_loss)).mean(dim=-1)
