"""AdaTask ``"adatask"`` (Yang et al., 2023; run by Elich et al. with Adam).

Adam whose moments on the shared parameters are kept per task
(:class:`~mtl_paradigms.optim.PerTaskAdam`); the shared update is the **mean** over tasks of
the per-task Adam updates, the heads use the trainer's optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Method, Strategy
from mtl_paradigms.methods.jacobian import _assign, per_task_losses, task_gradients, weighted_sum
from mtl_paradigms.methods.updater import OptimizerFactory, StepOutput, UpdateContext, Updater
from mtl_paradigms.optim import PerTaskAdam

if TYPE_CHECKING:
    from mtl_paradigms.models import MultiTaskModel
    from mtl_paradigms.tasks import Task

__all__ = ["AdaTask", "AdaTaskUpdater"]


class AdaTask(Strategy):
    """AdaTask: per-task Adam moments on the shared parameters (Adam only)."""

    name = "adatask"

    def make_updater(self, context: UpdateContext) -> AdaTaskUpdater:
        """:class:`AdaTaskUpdater`, with the run's Adam settings; other optimizers raise."""
        if context.optimizer_name != "adam":
            raise ValueError(f"adatask keeps Adam moments per task; it needs optimizer 'adam', "
                             f"got {context.optimizer_name!r}")  # fmt: skip
        return AdaTaskUpdater(
            context.model, context.tasks, self, context.autocast, context.make_optimizer,
            context.lr, context.adam_betas, context.adam_eps, context.weight_decay,
        )  # fmt: skip


class AdaTaskUpdater(Updater):
    """AdaTask: :class:`PerTaskAdam` (learning rate ``lr / T``, i.e. the mean of the per-task
    updates) on the shared parameters and the trainer's optimizer on the heads, which receive
    ``(1/T) grad L_t`` as under EW."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        method: Method,
        autocast: torch.autocast,
        make_optimizer: OptimizerFactory,
        lr: float,
        betas: Sequence[float],
        eps: float,
        weight_decay: float,
    ) -> None:
        super().__init__(model, tasks, method, [], autocast)
        self.shared = model.shared_parameters()
        self.heads = [p for name in tasks for p in model.task_parameters(name)]
        self.head_optimizer = make_optimizer(self.heads)
        self.shared_optimizer = PerTaskAdam(
            self.shared, len(tasks), lr=lr / len(tasks), betas=betas, eps=eps,
            weight_decay=weight_decay,
        )  # fmt: skip

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.head_optimizer, self.shared_optimizer]

    def step(self, images: Tensor, targets: Mapping[str, Tensor]) -> StepOutput:
        num_tasks = len(self.tasks)
        self.head_optimizer.zero_grad(set_to_none=True)
        with self.autocast:
            preds = self.model(images)
            parts = [loss.float() for loss in per_task_losses(self.tasks, preds, targets)]
        losses = torch.stack(parts)
        # Each task's pass (through its own head only) gives its shared gradients and, for the
        # heads' (1/T) sum_t grad L_t, its head's: no separate pass through the heads.
        _, per_task = task_gradients(parts, (), [*self.shared, *self.heads])
        shared_grads, head_grads = per_task[: len(self.shared)], per_task[len(self.shared) :]
        task_grads = [[column[t] for column in shared_grads] for t in range(num_tasks)]
        uniform = torch.full((num_tasks,), 1.0 / num_tasks, device=losses.device)
        _assign(self.heads, [weighted_sum(g, uniform) for g in head_grads])
        self.head_optimizer.step()
        self.shared_optimizer.step(task_grads)
        self.path.update()
        weights = torch.full((num_tasks,), 1.0 / num_tasks, device=losses.device)
        return StepOutput(losses.detach(), weights)
