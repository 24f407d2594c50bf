"""Adam with per-task moment estimates: the optimizer side of AdaTask and MTL-IO.

Elich et al. (2024, Theory) show that one Adam per task restores invariance to constant loss
scales on the shared parameters; the invariance toy uses this class to check it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import torch
from torch import Tensor


class PerTaskAdam:
    """Adam with one set of moment estimates per task (AdaTask style).

    For parameter ``p`` and every task ``t`` whose gradient ``g_t`` reaches ``p``, task ``t`` keeps
    its own ``m_t, v_t`` and step count and contributes the bias-corrected Adam update
    ``lr * m_hat_t / (sqrt(v_hat_t) + eps)``; ``p`` moves by the sum of these updates. Each
    per-task update is computed with the operations of ``torch.optim.Adam`` (single-tensor path,
    no weight decay, no AMSGrad), so with one task the two agree bit for bit.
    """

    def __init__(
        self,
        params: Iterable[Tensor],
        num_tasks: int,
        lr: float = 1e-3,
        betas: Sequence[float] = (0.9, 0.999),
        eps: float = 1e-8,
    ) -> None:
        self.params = list(params)
        if not self.params:
            raise ValueError("PerTaskAdam: got no parameters")
        if num_tasks < 1:
            raise ValueError(f"PerTaskAdam: num_tasks must be positive, got {num_tasks}")
        if not lr > 0:
            raise ValueError(f"PerTaskAdam: lr must be positive, got {lr}")
        if len(betas) != 2 or not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"PerTaskAdam: betas must be two numbers in [0, 1), got {betas}")
        if not eps >= 0:
            raise ValueError(f"PerTaskAdam: eps must be non-negative, got {eps}")
        self.num_tasks = num_tasks
        self.lr = float(lr)
        self.betas = (float(betas[0]), float(betas[1]))
        self.eps = float(eps)
        self.state: list[list[dict[str, Any] | None]] = [
            [None] * len(self.params) for _ in range(num_tasks)
        ]

    @torch.no_grad()
    def step(self, task_grads: Sequence[Sequence[Tensor | None]]) -> None:
        """One step; ``task_grads[t][i]`` is task ``t``'s gradient of parameter ``i``, or None."""
        if len(task_grads) != self.num_tasks:
            raise ValueError(f"PerTaskAdam: expected {self.num_tasks} tasks, got {len(task_grads)}")
        for t, grads in enumerate(task_grads):
            if len(grads) != len(self.params):
                raise ValueError(
                    f"PerTaskAdam: task {t} gave {len(grads)} gradients "
                    f"for {len(self.params)} parameters"
                )
            for i, (param, grad) in enumerate(zip(self.params, grads, strict=True)):
                if grad is not None:
                    self._adam_update(t, i, param, grad)

    def _adam_update(self, task: int, index: int, param: Tensor, grad: Tensor) -> None:
        state = self.state[task][index]
        if state is None:
            state = {
                "step": 0,
                "exp_avg": torch.zeros_like(param, memory_format=torch.preserve_format),
                "exp_avg_sq": torch.zeros_like(param, memory_format=torch.preserve_format),
            }
            self.state[task][index] = state
        beta1, beta2 = self.betas
        state["step"] += 1
        step = float(state["step"])
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = self.lr / bias_correction1
        denom = (exp_avg_sq.sqrt() / bias_correction2**0.5).add_(self.eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
