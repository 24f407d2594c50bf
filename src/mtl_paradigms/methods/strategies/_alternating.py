"""Alternating per-group steps (Pascal et al., 2021), shared by MTL-IUS and MTL-IO.

Random task grouping: ``group_size`` ``s`` splits the ``T`` tasks into ``ceil(T/s)`` groups
drawn once at the start of training (seeded, without replacement); ``s = T`` is the summed loss
(EW), ``s = 1`` fully per-task. A group's loss is the **mean** of its tasks' losses (the mean
convention of :mod:`mtl_paradigms.methods.base`; Pascal et al. sum, a factor ``s`` that SGD sees
and Adam does not). For every batch, one step per group on the group's loss, the same batch for
all groups; :attr:`Alternating.optimizer_per_group` says whether the groups share one optimizer
(MTL-IUS) or each has its own over all parameters (MTL-IO).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Strategy
from mtl_paradigms.methods.jacobian import task_losses
from mtl_paradigms.methods.updater import (
    OptimizerFactory,
    StepOutput,
    UpdateContext,
    Updater,
    model_parameters,
)

if TYPE_CHECKING:
    from mtl_paradigms.models import MultiTaskModel
    from mtl_paradigms.tasks import Task

__all__ = ["Alternating", "AlternatingUpdater", "task_groups"]


class Alternating(Strategy):
    """Base of the alternating strategies: one step per random task group (``group_size``)."""

    optimizer_per_group: bool = False
    """Whether each task group has its own optimizer (else one optimizer is shared)."""

    def __init__(self, group_size: int = 1) -> None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(
                f"{self.name}: group_size must be a positive integer, got {group_size!r}"
            )
        self.group_size = group_size

    def make_updater(self, context: UpdateContext) -> AlternatingUpdater:
        """:class:`AlternatingUpdater`, its groups drawn with the run's generator."""
        return AlternatingUpdater(
            context.model, context.tasks, self, context.autocast, context.make_optimizer,
            context.generator,
        )  # fmt: skip


def task_groups(num_tasks: int, group_size: int, generator: torch.Generator) -> list[list[int]]:
    """Random task grouping: ``ceil(T/s)`` groups of at most ``s`` tasks, every task once.

    The tasks are permuted with ``generator`` and cut into consecutive groups of ``group_size``
    (the last may be smaller); each group is sorted. ``group_size >= T`` gives one group.
    """
    if num_tasks < 1:
        raise ValueError(f"task grouping: need at least one task, got {num_tasks}")
    if group_size < 1:
        raise ValueError(f"task grouping: group_size must be positive, got {group_size}")
    order = torch.randperm(num_tasks, generator=generator).tolist()
    count = math.ceil(num_tasks / group_size)
    return [sorted(order[i * group_size : (i + 1) * group_size]) for i in range(count)]


class AlternatingUpdater(Updater):
    """MTL-IUS / MTL-IO: one step per task group on the group's mean loss, same batch."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        method: Alternating,
        autocast: torch.autocast,
        make_optimizer: OptimizerFactory,
        generator: torch.Generator,
    ) -> None:
        super().__init__(model, tasks, method, [], autocast)
        self.groups = task_groups(len(tasks), method.group_size, generator)
        count = len(self.groups) if method.optimizer_per_group else 1
        self._optimizers = [make_optimizer(model_parameters(model)) for _ in range(count)]
        self.names = list(tasks)

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return self._optimizers

    def step(self, images: Tensor, targets: Mapping[str, Tensor]) -> StepOutput:
        num_tasks = len(self.tasks)
        losses = torch.zeros(num_tasks, device=images.device)
        weights = torch.zeros(num_tasks, device=images.device)
        for k, group in enumerate(self.groups):
            optimizer = self._optimizers[k if len(self._optimizers) > 1 else 0]
            optimizer.zero_grad(set_to_none=True)
            group_tasks = {self.names[t]: self.tasks[self.names[t]] for t in group}
            with self.autocast:
                preds = self.model(images)
                group_losses = task_losses(group_tasks, preds, targets).float()
            group_losses.mean().backward()
            optimizer.step()
            self.path.update()
            losses[group] = group_losses.detach()
            weights[group] = 1.0 / len(group)
        return StepOutput(losses, weights)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"groups": self.groups}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        super().load_state_dict(state)
        self.groups = [list(g) for g in state["groups"]]
