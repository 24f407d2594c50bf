"""Updaters: one update per batch, losses -> method -> gradients -> optimizer step(s).

:func:`training_step` computes the gradients of one joint update (a weighting's combined loss,
or an aggregator's direction for the shared parameters) and writes them to ``.grad``.
An :class:`Updater` owns the optimizer(s) of a run and performs one update per batch. Which
updater a run uses is the method's choice (:meth:`~mtl_paradigms.methods.base.Method.make_updater`,
given the run's :class:`UpdateContext`):

* :class:`JointUpdater` -- every weighting and aggregator: one optimizer, one step per batch;
  it also runs FAMO's loss re-evaluation after the step (``needs_after_step_losses``).
  Auto-Lambda's subclass takes its meta step before
  (:class:`~mtl_paradigms.methods.weightings.auto_lambda.AutoLambdaUpdater`).
* the strategies' own updaters: AdaTask's per-task Adam moments
  (:class:`~mtl_paradigms.methods.strategies.AdaTaskUpdater`), MTL-IUS / MTL-IO's one step per
  task group (:class:`~mtl_paradigms.methods.strategies.AlternatingUpdater`).

Every updater tracks the L2 path length travelled by the shared parameters
(``sum_k |phi_{k+1} - phi_k|``, on the device, one term per optimizer step), which the trainer
logs per epoch (Pascal et al.'s "wider exploration").
"""

from __future__ import annotations

import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from mtl_paradigms.methods.base import Aggregator, Method, Weighting
from mtl_paradigms.methods.jacobian import (
    _assign,
    _assign_flat,
    loss_transform_jacobian,
    per_task_losses,
    task_gradients,
    task_losses,
    weighted_sum,
)

if TYPE_CHECKING:
    from mtl_paradigms.models import MultiTaskModel
    from mtl_paradigms.tasks import Task

__all__ = [
    "JointUpdater", "OptimizerFactory", "PathLength", "StepOutput", "UpdateContext", "Updater",
    "ValBatch", "frozen_batchnorm", "model_parameters", "training_step",
]  # fmt: skip

OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
ValBatch = Callable[[], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class StepOutput:
    losses: Tensor  # (T,) detached
    weights: Tensor  # (T,) detached task weights used for this step (NaN if not defined)


@dataclass(frozen=True)
class UpdateContext:
    """What a method's updater is built from: the run's model, tasks and optimizer settings.

    ``make_optimizer`` builds the trainer's optimizer over some parameters (named
    ``optimizer_name``; the Adam settings are for updaters that keep Adam moments of their own,
    such as AdaTask's). ``generator`` seeds the updater's random choices (task grouping);
    ``val_batch`` draws a validation batch (Auto-Lambda); ``batched_jacobian`` selects the
    vectorised per-task backward.
    """

    model: MultiTaskModel
    tasks: Mapping[str, Task]
    method_params: Sequence[nn.Parameter]
    autocast: torch.autocast
    make_optimizer: OptimizerFactory
    optimizer_name: str
    lr: float
    adam_betas: Sequence[float]
    adam_eps: float
    weight_decay: float
    generator: torch.Generator
    val_batch: ValBatch | None = None
    batched_jacobian: bool = False


def training_step(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    method: Method,
    images: Tensor,
    targets: Mapping[str, Tensor],
    autocast: torch.autocast,
    method_params: Sequence[nn.Parameter] = (),
    batched_jacobian: bool = False,
) -> StepOutput:
    """Forward, per-task losses and the method's gradients, written to ``.grad`` (no step).

    Weightings back-propagate their combined loss. Aggregators receive the per-task gradients of
    the shared parameters (or of the shared representation, ``representation = True``) of the
    possibly transformed losses (``transform_losses``); the shared parameters get the aggregated
    direction, the heads and the method's own parameters the gradient of
    ``sum_t v_t L'_t`` with ``v = 1/T``, or the aggregator's weights when ``weights_heads``.
    """
    num_tasks = len(tasks)
    if isinstance(method, Aggregator) and method.requires_grads:
        shared = model.shared_parameters()
        heads = [p for name in tasks for p in model.task_parameters(name)]
        own = [p for p in method_params if p.requires_grad]
        with autocast:
            z = model.representation(images)
            preds = model.heads_forward(z, images.shape[-2:])
            parts = [loss.float() for loss in per_task_losses(tasks, preds, targets)]
        losses = torch.stack(parts)
        method.observe(losses.detach())
        if method.representation:
            method.observe_representation(z.detach())
        transformed = method.transform_losses(losses)
        wrt: Sequence[Tensor] = [z] if method.representation else shared
        # Per-task loop: one pass from each task's own loss, through its head only, which also
        # gives the heads' gradients (that of sum_t v_t L'_t is sum_t v_t grad L'_t, no pass
        # of their own). Transformed losses L' = f(L) follow by the chain rule,
        # grad L'_t = sum_s (dL'_t / dL_s) grad L_s. The batched backward would compute every
        # head's weight gradients for all T tasks, mostly zeros: there the heads get one pass of
        # their own, cheaper from T = 3 on.
        fold = not batched_jacobian
        mixing: Tensor | None = None
        if fold:
            jacobian, head_grads = task_gradients(parts, wrt, heads)
            if transformed is not losses:
                mixing = loss_transform_jacobian(method, losses)
                jacobian = mixing.to(jacobian.dtype) @ jacobian
        else:
            jacobian, _ = task_gradients(transformed, wrt, (), batched=True)
        direction, weights = method.aggregate(jacobian.float())
        if weights is not None and method.weights_heads:
            head_weights = weights.detach().to(transformed.dtype)
        else:
            head_weights = torch.full_like(transformed, 1.0 / num_tasks)
        if method.representation:
            torch.autograd.backward(
                z, direction.view_as(z).to(z.dtype), retain_graph=True, inputs=list(shared)
            )
        else:
            _assign_flat(shared, direction)
        if fold:
            coef = head_weights if mixing is None else mixing.T.to(head_weights) @ head_weights
            _assign(heads, [weighted_sum(g, coef) for g in head_grads])
            separate = own  # the method's parameters enter through f only: a pass through f
        else:
            separate = [*heads, *own]
        if separate:
            head_loss = (head_weights * transformed).sum()
            _assign(separate, torch.autograd.grad(head_loss, separate, allow_unused=True))
        if weights is None:
            weights = torch.full((num_tasks,), math.nan, device=losses.device)
        return StepOutput(losses.detach(), weights.detach())
    if not isinstance(method, Weighting):
        raise TypeError(f"method {method.name!r} is neither a weighting nor an aggregator")
    with autocast:
        preds = model(images)
        losses = task_losses(tasks, preds, targets).float()
    method.observe(losses.detach())
    weights = method.weights(losses.detach()).detach()
    method.combine(losses).backward()
    return StepOutput(losses.detach(), weights)


@contextlib.contextmanager
def frozen_batchnorm(model: nn.Module) -> Iterator[None]:
    """Forward passes in training mode that leave BatchNorm's running statistics unchanged."""
    saved = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            saved.append((module, module.momentum))
            module.momentum = 0.0
    try:
        yield
    finally:
        for module, momentum in saved:
            module.momentum = momentum


def model_parameters(model: MultiTaskModel) -> list[nn.Parameter]:
    """Encoder and heads: what the trainer's optimizer steps (a method's task transforms, such
    as RotoGrad's rotations, are trained by the method itself)."""
    return [*model.encoder.parameters(), *model.heads.parameters()]


class PathLength:
    """The L2 path length travelled by some parameters: ``sum_k |phi_{k+1} - phi_k|``."""

    def __init__(self, params: Sequence[Tensor]) -> None:
        self.params = list(params)
        self.previous = [p.detach().clone() for p in self.params]
        device = self.params[0].device if self.params else "cpu"
        self.total = torch.zeros((), dtype=torch.float64, device=device)

    @torch.no_grad()
    def update(self) -> None:
        if not self.params:
            return
        diffs = torch._foreach_sub([p.detach() for p in self.params], self.previous)
        norms = torch._foreach_norm(diffs)
        self.total += torch.stack(norms).double().square().sum().sqrt()
        torch._foreach_copy_(self.previous, [p.detach() for p in self.params])


class Updater(ABC):
    """Owns the optimizer(s) of a run and performs one update per batch."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        method: Method,
        method_params: Sequence[nn.Parameter],
        autocast: torch.autocast,
    ) -> None:
        self.model = model
        self.tasks = tasks
        self.method = method
        self.method_params = list(method_params)
        self.autocast = autocast
        self.path = PathLength(model.shared_parameters())

    @property
    @abstractmethod
    def optimizers(self) -> list[torch.optim.Optimizer]:
        """Every optimizer (one learning-rate scheduler is attached to each)."""

    @abstractmethod
    def step(self, images: Tensor, targets: Mapping[str, Tensor]) -> StepOutput:
        """One update on a batch; returns the losses and task weights to log."""

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizers": [o.state_dict() for o in self.optimizers],
            "path_length": self.path.total.item(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if len(state["optimizers"]) != len(self.optimizers):
            raise ValueError(
                f"checkpoint has {len(state['optimizers'])} optimizer states, "
                f"this run has {len(self.optimizers)}"
            )
        for optimizer, saved in zip(self.optimizers, state["optimizers"], strict=True):
            optimizer.load_state_dict(saved)
        self.path.total.fill_(float(state["path_length"]))
        self.path.previous = [p.detach().clone() for p in self.path.params]


class JointUpdater(Updater):
    """Weightings and aggregators: one optimizer over everything, one step per batch."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        method: Method,
        method_params: Sequence[nn.Parameter],
        autocast: torch.autocast,
        make_optimizer: OptimizerFactory,
        val_batch: ValBatch | None = None,
        batched_jacobian: bool = False,
    ) -> None:
        super().__init__(model, tasks, method, method_params, autocast)
        self.batched_jacobian = batched_jacobian
        self.optimizer = make_optimizer([*model_parameters(model), *method_params])
        self.val_batch = val_batch

    @classmethod
    def from_context(cls, method: Method, context: UpdateContext) -> JointUpdater:
        """The updater of ``method`` in the run described by ``context``."""
        return cls(
            context.model, context.tasks, method, context.method_params, context.autocast,
            context.make_optimizer, context.val_batch, context.batched_jacobian,
        )  # fmt: skip

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def step(self, images: Tensor, targets: Mapping[str, Tensor]) -> StepOutput:
        self.optimizer.zero_grad(set_to_none=True)
        out = training_step(
            self.model, self.tasks, self.method, images, targets, self.autocast,
            self.method_params, self.batched_jacobian,
        )  # fmt: skip
        self.optimizer.step()
        self.path.update()
        if self.method.needs_after_step_losses:
            with torch.no_grad(), frozen_batchnorm(self.model), self.autocast:
                after = task_losses(self.tasks, self.model(images), targets).float()
            self.method.after_step(after)
        return out
