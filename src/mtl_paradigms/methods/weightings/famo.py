"""FAMO ``"famo"``: fast adaptive multitask optimisation (Liu et al., 2023); uses the
losses of the same batch after the step (``needs_after_step_losses``)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods._checks import require_bound
from mtl_paradigms.methods.base import Weighting


class FAMO(Weighting):
    """FAMO (Liu et al., 2023): fast adaptive multitask optimisation.

    Task logits ``xi`` give ``z = softmax(xi)``; the weights on the losses are
    ``w_t = z_t / (c L_t)`` with ``c = sum_s z_s / L_s``, i.e. the gradient of
    ``sum_t z_t log L_t / c`` (``L_t`` shifted by ``min_loss`` against zero). They sum to one, so
    FAMO is on the mean scale of :mod:`mtl_paradigms.methods.base` as in the reference code.

    After the optimizer's step the trainer recomputes the same batch's losses
    (``needs_after_step_losses``); with ``delta_t = log L_t(before) - log L_t(after)`` the
    logits move by one Adam step (learning rate ``logit_lr``, weight decay ``gamma``) along
    ``-J_z^T delta``, ``J_z`` the softmax Jacobian: tasks whose loss fell least gain weight.
    The logits have their own optimizer, as in the paper; they are not in the trainer's.
    """

    name = "famo"
    needs_after_step_losses = True

    def __init__(self, gamma: float = 1e-3, logit_lr: float = 0.025, min_loss: float = 1e-8):
        if not gamma >= 0:
            raise ValueError(f"famo: gamma must be non-negative, got {gamma}")
        if not logit_lr > 0:
            raise ValueError(f"famo: logit_lr must be positive, got {logit_lr}")
        if not min_loss > 0:
            raise ValueError(f"famo: min_loss must be positive, got {min_loss}")
        self.gamma = float(gamma)
        self.logit_lr = float(logit_lr)
        self.min_loss = float(min_loss)
        self._logits: Tensor | None = None
        self._optimizer: torch.optim.Adam | None = None
        self._before: Tensor | None = None

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        self._logits = torch.zeros(num_tasks, device=device, requires_grad=True)
        self._optimizer = torch.optim.Adam(
            [self._logits], lr=self.logit_lr, weight_decay=self.gamma
        )
        return []

    def _shifted(self, losses: Tensor) -> Tensor:
        return losses.detach().float() + self.min_loss

    def weights(self, losses: Tensor) -> Tensor:
        z = torch.softmax(require_bound(self._logits, self.name).detach(), dim=-1)
        shifted = self._shifted(losses)
        c = (z / shifted).sum(dim=-1, keepdim=True)
        self._before = shifted
        return (z / (c * shifted)).to(losses.dtype)

    def after_step(self, losses: Tensor) -> None:
        logits = require_bound(self._logits, self.name)
        before = require_bound(self._before, self.name)
        delta = before.log() - self._shifted(losses).log()
        with torch.enable_grad():
            z = torch.softmax(logits, dim=-1)
            (grad,) = torch.autograd.grad(z, logits, grad_outputs=delta)
        logits.grad = grad  # the Adam step descends: xi moves along -J_z^T delta
        self._optimizer.step()  # type: ignore[union-attr]

    def state_dict(self) -> dict[str, object]:
        return {
            "logits": require_bound(self._logits, self.name).detach().clone(),
            "optimizer": self._optimizer.state_dict() if self._optimizer else None,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            require_bound(self._logits, self.name).copy_(state["logits"])  # type: ignore[arg-type]
        if self._optimizer is not None and state["optimizer"] is not None:
            self._optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
