"""UW-O ``"uwo"``: uncertainty weighting with the optimal variances, ``1/sg[L_t]``."""

from __future__ import annotations

from torch import Tensor

from mtl_paradigms.methods.base import Weighting


class UWO(Weighting):
    """UW-O (Elich et al. 2024): weights ``1/(T * sg[L_t])``, the optimum of uncertainty weighting.

    The combined loss ``(1/T) sum_t L_t / sg[L_t]`` has gradient ``(1/T) sum_t grad L_t / L_t``,
    which is unchanged when any ``L_t`` is multiplied by a positive constant: UW-O is fully
    scale-invariant. ``min_loss`` guards the division for a loss that reaches zero.
    """

    name = "uwo"

    def __init__(self, min_loss: float = 1e-12) -> None:
        if min_loss <= 0:
            raise ValueError(f"uwo: min_loss must be positive, got {min_loss}")
        self.min_loss = float(min_loss)

    def weights(self, losses: Tensor) -> Tensor:
        num_tasks = losses.shape[-1]
        return (1.0 / (num_tasks * losses.detach().clamp_min(self.min_loss))).detach()
