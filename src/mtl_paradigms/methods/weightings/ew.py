"""EW ``"ew"``: equal weighting, the reference of the scale convention."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Aggregator, Weighting, check_matrix


class EW(Weighting, Aggregator):
    """Equal weighting: weights ``1/T``; as an aggregator, the mean task gradient.

    It is both a :class:`Weighting` and an :class:`Aggregator` so the two training paths can be
    checked against each other: back-propagating ``mean_t L_t`` and aggregating per-task gradients
    with the mean give the same update.
    """

    name = "ew"
    requires_grads = False

    def weights(self, losses: Tensor) -> Tensor:
        return torch.full_like(losses, 1.0 / losses.shape[-1]).detach()

    def __call__(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        return grads.mean(dim=-2)
