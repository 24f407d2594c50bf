"""Adam with per-task moment estimates: the optimizer side of AdaTask and MTL-IO.

Elich et al. (2024, Theory) show that one Adam per task restores invariance to constant loss
scales on the shared parameters; the invariance toy uses this class to check it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


class PerTaskAdam(torch.optim.Optimizer):
    """Adam with one set of moment estimates per task (AdaTask style).

    For parameter ``p`` and every task ``t`` whose gradient ``g_t`` reaches ``p``, task ``t`` keeps
    its own ``m_t, v_t`` and step count and contributes the bias-corrected Adam update
    ``lr * m_hat_t / (sqrt(v_hat_t) + eps)``; ``p`` moves by the sum of these updates (pass
    ``lr / T`` for their mean, as the trainer's AdaTask does). Each per-task update is computed
    with the operations of ``torch.optim.Adam`` (single-tensor path, no AMSGrad; weight decay as
    Adam's L2 term added to each task's gradient), so with one task the two agree bit for bit.

    It is a ``torch.optim.Optimizer`` (param groups, learning-rate schedulers, ``state_dict``);
    :meth:`step` takes the per-task gradients instead of reading ``.grad``.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        num_tasks: int,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        params = list(params)
        if not params:
            raise ValueError("PerTaskAdam: got no parameters")
        if num_tasks < 1:
            raise ValueError(f"PerTaskAdam: num_tasks must be positive, got {num_tasks}")
        if not lr > 0:
            raise ValueError(f"PerTaskAdam: lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"PerTaskAdam: betas must be two numbers in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"PerTaskAdam: eps must be non-negative, got {eps}")
        if not weight_decay >= 0:
            raise ValueError(f"PerTaskAdam: weight_decay must be non-negative, got {weight_decay}")
        defaults = {
            "lr": float(lr),
            "betas": (float(betas[0]), float(betas[1])),
            "eps": float(eps),
            "weight_decay": float(weight_decay),
        }
        super().__init__(params, defaults)
        self.num_tasks = num_tasks

    @property
    def params(self) -> list[Tensor]:
        return [p for group in self.param_groups for p in group["params"]]

    @torch.no_grad()
    def step(self, task_grads: Sequence[Sequence[Tensor | None]]) -> None:  # type: ignore[override]
        """One step; ``task_grads[t][i]`` is task ``t``'s gradient of parameter ``i`` (in the
        order of :attr:`params`), or None where the task does not reach it."""
        if len(task_grads) != self.num_tasks:
            raise ValueError(f"PerTaskAdam: expected {self.num_tasks} tasks, got {len(task_grads)}")
        count = sum(len(group["params"]) for group in self.param_groups)
        for t, grads in enumerate(task_grads):
            if len(grads) != count:
                raise ValueError(
                    f"PerTaskAdam: task {t} gave {len(grads)} gradients for {count} parameters"
                )
        index = 0
        for group in self.param_groups:
            for param in group["params"]:
                for t, grads in enumerate(task_grads):
                    grad = grads[index]
                    if grad is not None:
                        self._adam_update(t, param, grad, group)
                index += 1

    def _adam_update(self, task: int, param: Tensor, grad: Tensor, group: dict[str, Any]) -> None:
        per_task = self.state[param].setdefault("tasks", [None] * self.num_tasks)
        state = per_task[task]
        if state is None:
            state = {
                "step": 0,
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
            per_task[task] = state
        if group["weight_decay"] != 0:
            grad = grad.add(param, alpha=group["weight_decay"])
        beta1, beta2 = group["betas"]
        state["step"] += 1
        step = float(state["step"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = group["lr"] / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(group["eps"])
        param.addcdiv_(exp_avg, denom, value=-step_size)
