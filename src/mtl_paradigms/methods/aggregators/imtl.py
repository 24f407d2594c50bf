"""IMTL ``"imtl"``: impartial MTL, the hybrid of IMTL-L and IMTL-G (Liu et al., 2021)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.aggregators.imtl_g import IMTLG
from mtl_paradigms.methods.weightings.imtl_l import IMTLL


class IMTL(IMTLG):
    """IMTL (Liu et al., 2021): IMTL-L's loss scaling and IMTL-G's gradient balancing together.

    Each loss is scaled to ``e^{s_t} L_t - s_t`` with learnable ``s`` (``bind``; ``init`` at the
    start); the shared parameters move along the IMTL-G combination of the scaled losses'
    gradients, while the heads and ``s`` receive the gradient of the mean scaled loss
    ``(1/T) sum_t (e^{s_t} L_t - s_t)`` (the reference sums, a factor ``T``). ``s`` settles at
    ``-log L_t``, which makes the shared update invariant to constant loss scales.
    """

    name = "imtl"

    def __init__(self, init: float = 0.0) -> None:
        self.init = float(init)
        self._loss_part = IMTLL(init)  # the scales, their parameter and checkpoint state

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        return self._loss_part.bind(num_tasks, device)

    def transform_losses(self, losses: Tensor) -> Tensor:
        return self._loss_part.scaled_losses(losses)

    def state_dict(self) -> dict[str, object]:
        return self._loss_part.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._loss_part.load_state_dict(state)
