"""The trainer's entry to the update step: :func:`make_updater` and the names it builds on.

One update per batch (losses -> method -> gradients -> optimizer step(s)) is taken by an
:class:`Updater`. Which one is the **method's** choice
(:meth:`~mtl_paradigms.methods.base.Method.make_updater`): :func:`make_updater` collects the
run's objects in an :class:`UpdateContext` and asks the method, with no dispatch on method
classes here, so a new strategy plugs in by implementing ``make_updater``. The updaters and the
per-task gradient machinery live with the methods (:mod:`mtl_paradigms.methods.updater`,
:mod:`mtl_paradigms.methods.jacobian`, the strategies' modules) and are re-exported here:

* :class:`JointUpdater` -- every weighting and aggregator: one optimizer, one step per batch
  (Auto-Lambda's subclass adds its meta step before the step; FAMO re-evaluates its losses
  after it).
* :class:`AdaTaskUpdater` -- per-task Adam moments on the shared parameters.
* :class:`AlternatingUpdater` -- MTL-IUS / MTL-IO: one step per task group on the same batch.

Every updater tracks the L2 path length travelled by the shared parameters
(``sum_k |phi_{k+1} - phi_k|``, on the device, one term per optimizer step), which the trainer
logs per epoch (Pascal et al.'s "wider exploration").
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from torch import nn

from mtl_paradigms.methods.base import Method
from mtl_paradigms.methods.jacobian import (
    Losses,
    PerTask,
    _assign,
    _assign_flat,
    _flatten_like,
    _layout,
    _like_param,
    _or_zeros,
    _view_like,
    loss_transform_jacobian,
    per_task_losses,
    task_gradients,
    task_jacobian,
    task_losses,
    weighted_sum,
)
from mtl_paradigms.methods.strategies import AdaTaskUpdater, AlternatingUpdater
from mtl_paradigms.methods.updater import (
    JointUpdater,
    OptimizerFactory,
    PathLength,
    StepOutput,
    UpdateContext,
    Updater,
    ValBatch,
    frozen_batchnorm,
    training_step,
)
from mtl_paradigms.methods.updater import model_parameters as _model_parameters
from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.tasks import Task

__all__ = [
    "AdaTaskUpdater", "AlternatingUpdater", "JointUpdater", "Losses", "OptimizerFactory",
    "PathLength", "PerTask", "StepOutput", "UpdateContext", "Updater", "ValBatch",
    "frozen_batchnorm", "loss_transform_jacobian", "make_updater", "per_task_losses",
    "task_gradients", "task_jacobian", "task_losses", "training_step", "weighted_sum",
]  # fmt: skip

# Private helpers kept importable from here for existing callers (tests, benchmarks).
_PRIVATE = (
    _assign, _assign_flat, _flatten_like, _layout, _like_param, _model_parameters, _or_zeros,
    _view_like,
)  # fmt: skip


def make_updater(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    method: Method,
    method_params: Sequence[nn.Parameter],
    autocast: torch.autocast,
    make_optimizer: OptimizerFactory,
    *,
    optimizer_name: str,
    lr: float,
    adam_betas: Sequence[float],
    adam_eps: float,
    weight_decay: float,
    generator: torch.Generator,
    val_batch: ValBatch | None = None,
    batched_jacobian: bool = False,
) -> Updater:
    """The updater for ``method``: what its :meth:`~Method.make_updater` builds for this run."""
    context = UpdateContext(
        model=model, tasks=tasks, method_params=method_params, autocast=autocast,
        make_optimizer=make_optimizer, optimizer_name=optimizer_name, lr=lr,
        adam_betas=adam_betas, adam_eps=adam_eps, weight_decay=weight_decay,
        generator=generator, val_batch=val_batch, batched_jacobian=batched_jacobian,
    )  # fmt: skip
    return method.make_updater(context)
