"""Optimizer-level strategies, selectable by name like the methods.

They change *how the optimizer steps*, not how losses or gradients are combined: each one owns
its updater (:meth:`~mtl_paradigms.methods.base.Strategy.make_updater`), which the trainer asks
for (:func:`mtl_paradigms.updates.make_updater`); the classes also carry their names and
hyperparameters (for the config, ``mtlp methods`` and the tables). One module per strategy,
named after it.

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

from mtl_paradigms.methods.base import Strategy
from mtl_paradigms.methods.strategies._alternating import (
    Alternating,
    AlternatingUpdater,
    task_groups,
)
from mtl_paradigms.methods.strategies.adatask import AdaTask, AdaTaskUpdater
from mtl_paradigms.methods.strategies.mtl_io import MTLIO
from mtl_paradigms.methods.strategies.mtl_ius import MTLIUS

__all__ = [
    "MTLIO", "MTLIUS", "AdaTask", "AdaTaskUpdater", "Alternating", "AlternatingUpdater",
    "Strategy", "task_groups",
]  # fmt: skip
