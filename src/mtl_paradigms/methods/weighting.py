"""Loss weightings (methods that only see the losses)."""

from __future__ import annotations

from collections.abc import Sequence

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


class FixedWeights(Weighting):
    """Scalarisation with constant weights. Weights are used as given (no normalisation):
    under the mean convention, ``weights = [1/T] * T`` is EW."""

    name = "fixed"

    def __init__(self, weights: Sequence[float]) -> None:
        if len(weights) == 0:
            raise ValueError("fixed weights: need one weight per task, got none")
        if any(w < 0 for w in weights):
            raise ValueError(f"fixed weights must be non-negative, got {list(weights)}")
        self.task_weights = [float(w) for w in weights]

    def weights(self, losses: Tensor) -> Tensor:
        if losses.shape[-1] != len(self.task_weights):
            raise ValueError(
                f"fixed weights: {len(self.task_weights)} weights for {losses.shape[-1]} tasks"
            )
        # (a copy to a GPU that does not wait for it: no host sync per step)
        w = torch.tensor(self.task_weights, dtype=losses.dtype)
        w = w.to(losses.device, non_blocking=True)
        return w.expand_as(losses)


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
