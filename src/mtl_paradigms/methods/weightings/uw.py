"""UW ``"uw"``: uncertainty weighting with learnable log-variances (Kendall et al., 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Weighting


class UW(Weighting):
    """Uncertainty weighting (Kendall et al., 2018) with learnable log-scales ``s_t``.

    The combined loss is ``(1/T) sum_t (L_t exp(-s_t) + s_t)``: with ``sigma_t = exp(s_t)`` this is
    Elich et al.'s ``L_t / sigma_t + log sigma_t``, whose minimiser over ``sigma_t`` is
    ``sigma_t = L_t`` (UW-O plugs that optimum in). The weights ``exp(-s_t)/T`` are learnt by the
    trainer's optimizer together with the model (``bind`` returns ``s``); ``init`` is ``s_t`` at
    the start (0: weights ``1/T``, i.e. EW).
    """

    name = "uw"

    def __init__(self, init: float = 0.0) -> None:
        self.init = float(init)
        self._log_scale: torch.nn.Parameter | None = None

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        self._log_scale = torch.nn.Parameter(torch.full((num_tasks,), self.init, device=device))
        return [self._log_scale]

    @property
    def log_scale(self) -> torch.nn.Parameter:
        if self._log_scale is None:
            raise RuntimeError(f"{self.name}: call bind(num_tasks) before use (the trainer does)")
        return self._log_scale

    def weights(self, losses: Tensor) -> Tensor:
        return (
            (torch.exp(-self.log_scale.detach()) / losses.shape[-1])
            .to(losses.dtype)
            .expand_as(losses)
        )

    def combine(self, losses: Tensor) -> Tensor:
        s = self.log_scale.to(losses.dtype)
        return (losses * torch.exp(-s) + s).mean(dim=-1)

    def state_dict(self) -> dict[str, object]:
        return {"log_scale": self.log_scale.detach().clone()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            self.log_scale.copy_(state["log_scale"])  # type: ignore[arg-type]
