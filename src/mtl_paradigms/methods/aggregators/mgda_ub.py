"""MGDA-UB ``"mgda_ub"``: MGDA on the gradients of the shared representation
(Sener & Koltun, 2018)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods._checks import require_bound
from mtl_paradigms.methods.aggregators.mgda import MGDA
from mtl_paradigms.methods.base import check_matrix

Normalization = Literal["none", "l2", "loss", "loss+"]


class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun, 2018): MGDA on the gradients of the shared *representation*.

    The trainer computes each task's gradient with respect to the encoder's output ``z`` (one
    backward through the heads only, ``representation = True``), the min-norm weights ``w`` are
    found on those, and the weighted loss ``sum_t w_t L_t`` is back-propagated through the whole
    network (``weights_heads``): the shared parameters receive ``sum_t w_t grad L_t``.

    ``normalization`` rescales each gradient before the weights are computed (the weights are
    then applied to the raw losses, as in the reference): ``"l2"`` by ``|g_t|``, ``"loss"`` by
    ``L_t``, ``"loss+"`` by ``L_t |g_t|``, ``"none"`` not at all (default).

    Scale: the weights lie on the simplex (sum to one) -- the mean scale of
    :mod:`mtl_paradigms.methods.base`, as in the reference code.
    """

    name = "mgda_ub"
    representation = True
    weights_heads = True

    def __init__(self, normalization: Normalization = "none", iterations: int = 300) -> None:
        super().__init__(iterations=iterations)
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(
                f"mgda_ub: normalization must be 'none', 'l2', 'loss' or 'loss+', "
                f"got {normalization!r}"
            )
        self.normalization = normalization
        self._losses: Tensor | None = None

    def observe(self, losses: Tensor) -> None:
        self._losses = losses.detach()

    def task_weights(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        tiny = torch.finfo(grads.dtype).tiny
        scale = torch.ones(grads.shape[:-1], dtype=grads.dtype, device=grads.device)
        if self.normalization in ("l2", "loss+"):
            scale = scale * grads.norm(dim=-1)
        if self.normalization in ("loss", "loss+"):
            losses = require_bound(self._losses, self.name).to(grads.dtype)
            scale = scale * losses
        normalised = grads / scale.clamp_min(tiny).unsqueeze(-1)
        return super().task_weights(normalised)
