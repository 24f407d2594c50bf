"""DWA ``"dwa"``: dynamic weight average (Liu et al., 2019); uses the ``epoch_end`` hook."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods._checks import check_positive
from mtl_paradigms.methods.base import Weighting


class DWA(Weighting):
    """Dynamic weight average (Liu, Johns and Davison, 2019, "End-to-end multi-task learning
    with attention").

    With ``L_t(e)`` the mean training loss of task ``t`` in epoch ``e`` (given to
    :meth:`epoch_end` by the trainer), the weights during epoch ``e`` are

    ``w_t = softmax_t(r_t / temperature)``, ``r_t = L_t(e-1) / L_t(e-2)``,

    and ``1/T`` each until two epochs are known. The paper's weights are ``T * softmax``
    (summing to ``T``); here they are divided by ``T`` to sit on the mean scale, so they sum
    to 1 (EW: ``1/T``). The weights are constant within an epoch. The last two epoch losses
    are the state and survive a checkpoint. ``min_loss`` guards the ratio's denominator.
    """

    name = "dwa"

    def __init__(self, temperature: float = 2.0, min_loss: float = 1e-12) -> None:
        self.temperature = check_positive("dwa", "temperature", temperature)
        self.min_loss = check_positive("dwa", "min_loss", min_loss)
        self._history: list[Tensor] = []

    def epoch_end(self, mean_losses: Tensor) -> None:
        """Record the ``(T,)`` mean training loss of the epoch that just ended."""
        mean_losses = torch.as_tensor(mean_losses).detach()
        if mean_losses.ndim != 1 or mean_losses.numel() == 0:
            raise ValueError(
                f"dwa: epoch_end expects mean losses of shape (T,), got {tuple(mean_losses.shape)}"
            )
        if self._history and self._history[-1].shape != mean_losses.shape:
            raise ValueError(
                f"dwa: epoch_end got {mean_losses.numel()} tasks, "
                f"earlier epochs had {self._history[-1].numel()}"
            )
        self._history = [*self._history, mean_losses.to("cpu", torch.float64).clone()][-2:]

    def current_weights(self, num_tasks: int) -> Tensor:
        """The ``(T,)`` weights for the current epoch (float64, CPU)."""
        if len(self._history) < 2:
            return torch.full((num_tasks,), 1.0 / num_tasks, dtype=torch.float64)
        before, last = self._history
        if last.numel() != num_tasks:
            raise ValueError(f"dwa: history has {last.numel()} tasks, losses have {num_tasks}")
        ratio = last / before.clamp_min(self.min_loss)
        return torch.softmax(ratio / self.temperature, dim=-1)

    def weights(self, losses: Tensor) -> Tensor:
        w = self.current_weights(losses.shape[-1])
        return w.to(dtype=losses.dtype, device=losses.device).expand_as(losses).detach()

    def state_dict(self) -> dict[str, object]:
        return {"history": [h.clone() for h in self._history]}

    def load_state_dict(self, state: dict[str, object]) -> None:
        history = state["history"]
        self._history = [torch.as_tensor(h, dtype=torch.float64).clone() for h in history][-2:]  # type: ignore[union-attr]
