"""Optimizer-level strategies, selectable by name like the methods.

They change *how the optimizer steps*, not how losses or gradients are combined, so the trainer
(:mod:`mtl_paradigms.updates`) implements them; these classes carry their names and
hyperparameters (for the config, ``mtlp methods`` and the tables).

* :class:`AdaTask` ``"adatask"`` (Yang et al., 2023; run by Elich et al. with Adam): Adam whose
  moments on the shared parameters are kept per task (:class:`~mtl_paradigms.optim.PerTaskAdam`);
  the shared update is the **mean** over tasks of the per-task Adam updates, the heads use Adam.
* :class:`MTLIUS` ``"mtl_ius"`` (Pascal et al., 2021): for every batch, one step per task group
  on the group's loss, with one shared optimizer (the same batch for all groups).
* :class:`MTLIO` ``"mtl_io"`` (Pascal et al., 2021; run by Elich et al. with SGD): as IUS, but each
  group has its own optimizer over all parameters, so the shared weights carry one set of moments
  per group.

Random task grouping (Pascal et al.): ``group_size`` ``s`` splits the ``T`` tasks into
``ceil(T/s)`` groups drawn once at the start of training (seeded, without replacement);
``s = T`` is the summed loss (EW), ``s = 1`` fully per-task. A group's loss is the **mean** of
its tasks' losses (the mean convention of :mod:`mtl_paradigms.methods.base`; Pascal et al. sum,
a factor ``s`` that SGD sees and Adam does not).
"""

from __future__ import annotations

import math

import torch

from mtl_paradigms.methods.base import Method


class Strategy(Method):
    """A strategy: implemented by the trainer's update loop, not by weights or aggregation."""

    requires_grads = False


class AdaTask(Strategy):
    """AdaTask: per-task Adam moments on the shared parameters (Adam only)."""

    name = "adatask"


class _Alternating(Strategy):
    def __init__(self, group_size: int = 1) -> None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(
                f"{self.name}: group_size must be a positive integer, got {group_size!r}"
            )
        self.group_size = group_size


class MTLIUS(_Alternating):
    """MTL-IUS: alternating per-group steps with one shared optimizer (``group_size`` tasks)."""

    name = "mtl_ius"


class MTLIO(_Alternating):
    """MTL-IO: alternating per-group steps, one optimizer per group (``group_size`` tasks)."""

    name = "mtl_io"


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
