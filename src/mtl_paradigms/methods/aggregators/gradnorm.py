"""GradNorm ``"gradnorm"``: gradient normalisation (Chen et al., 2018); learnt weights."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods._checks import require_bound
from mtl_paradigms.methods.base import WeightedAggregator, check_matrix


class GradNorm(WeightedAggregator):
    """GradNorm (Chen et al., 2018): learnt weights that balance the tasks' gradient norms.

    Keeps weights ``w`` (``sum_t w_t = T``, initially all one). Each step, with ``g_t`` the task
    gradients of the shared parameters, ``G_t = w_t |g_t|``, their mean ``G``, the inverse
    training rates ``r_t = (L_t / L_t(0)) / mean_s (L_s / L_s(0))``, the GradNorm loss is
    ``sum_t |G_t - G r_t^alpha|`` with the target ``G r_t^alpha`` held constant. Its gradient with
    respect to ``w``, ``sign(G_t - target_t) |g_t|``, is written to the weights' ``.grad``; the
    trainer's optimizer takes the step (``bind`` returns ``w``), and ``w`` is renormalised to
    sum to ``T`` before its next use.

    The norms are taken over **all** shared parameters rather than the last shared layer of the
    paper (the trainer has the full per-task gradients anyway; LibMTL does the same).

    Scale: the direction is ``sum_t (w_t / T) g_t`` and head ``t`` receives ``(w_t / T) grad L_t``
    (``weights_heads``): the weighted loss ``(1/T) sum_t w_t L_t``. The paper's loss
    ``sum_t w_t L_t`` is ``T`` times larger.
    """

    name = "gradnorm"
    weights_heads = True

    def __init__(self, alpha: float = 1.5) -> None:
        if not alpha >= 0:
            raise ValueError(f"gradnorm: alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)
        self._w: torch.nn.Parameter | None = None
        self._initial: Tensor | None = None
        self._losses: Tensor | None = None

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        self._w = torch.nn.Parameter(torch.ones(num_tasks, device=device))
        self._initial = None
        return [self._w]

    def observe(self, losses: Tensor) -> None:
        losses = losses.detach().float()
        if self._initial is None:
            self._initial = losses.clone()
        self._losses = losses

    def task_weights(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        w_param = require_bound(self._w, self.name)
        losses = require_bound(self._losses, self.name)
        initial = require_bound(self._initial, self.name)
        num_tasks = grads.shape[-2]
        with torch.no_grad():
            w_param.clamp_(min=0.0)
            total = w_param.sum()
            w_param.copy_(torch.where(total > 0, w_param * (num_tasks / total), 1.0))
        w = w_param.detach().to(grads.dtype)
        norms = grads.norm(dim=-1)
        weighted = w * norms
        ratios = losses / initial.clamp_min(torch.finfo(losses.dtype).tiny)
        inverse_rate = (ratios / ratios.mean().clamp_min(torch.finfo(losses.dtype).tiny)).to(
            grads.dtype
        )
        target = weighted.mean(dim=-1, keepdim=True) * inverse_rate**self.alpha
        w_param.grad = (torch.sign(weighted - target) * norms).to(w_param.dtype).detach()
        return w / num_tasks

    def state_dict(self) -> dict[str, object]:
        return {
            "w": require_bound(self._w, self.name).detach().clone(),
            "initial": None if self._initial is None else self._initial.clone(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            require_bound(self._w, self.name).copy_(state["w"])  # type: ignore[arg-type]
        initial = state["initial"]
        self._initial = None if initial is None else initial.to(self._w.device)  # type: ignore[union-attr]
