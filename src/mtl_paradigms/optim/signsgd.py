"""signSGD with momentum (Bernstein et al., 2018), as run by Elich et al. (2024)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor
from torch.optim import Optimizer


class SignSGD(Optimizer):
    """``m <- momentum * m + g + wd * p``; ``p <- p - lr * sign(m)``.

    Weight decay is L2 (added to the gradient, as in ``torch.optim.SGD``). The update of every
    coordinate has magnitude ``lr`` (or 0), whatever the scale of the loss: like Adam with
    ``beta1 = beta2 = 0`` it is invariant to positive loss scales of a single task.
    """

    def __init__(
        self,
        params: Iterable[Tensor] | Iterable[dict],
        lr: float = 1e-3,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
    ) -> None:
        if lr <= 0:
            raise ValueError(f"signsgd: lr must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"signsgd: momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"signsgd: weight_decay must be non-negative, got {weight_decay}")
        super().__init__(params, {"lr": lr, "momentum": momentum, "weight_decay": weight_decay})

    @torch.no_grad()
    def step(self, closure=None):  # type: ignore[no-untyped-def, override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(grad)
                p.add_(torch.sign(buf), alpha=-group["lr"])
        return loss
