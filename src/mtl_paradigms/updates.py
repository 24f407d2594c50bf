"""One update per batch: losses -> method -> gradients -> optimizer step(s).

:func:`training_step` computes the gradients of one joint update (a weighting's combined loss,
or an aggregator's direction for the shared parameters) and writes them to ``.grad``.
An :class:`Updater` owns the optimizer(s) and applies the optimizer-level strategy
(:mod:`mtl_paradigms.methods.strategies`):

* :class:`JointUpdater` -- every weighting and aggregator: one optimizer, one step per batch;
  it also runs the methods' extra hooks (Auto-Lambda's meta step before, FAMO's loss
  re-evaluation after the step).
* :class:`AdaTaskUpdater` -- per-task Adam moments on the shared parameters.
* :class:`AlternatingUpdater` -- MTL-IUS / MTL-IO: one step per task group on the same batch.

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
from typing import Any

import torch
from torch import Tensor, nn

from mtl_paradigms.methods import Aggregator, Method, Weighting
from mtl_paradigms.methods.learned import AutoLambda
from mtl_paradigms.methods.strategies import MTLIO, AdaTask, Strategy, _Alternating, task_groups
from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.optim import PerTaskAdam
from mtl_paradigms.tasks import Task

OptimizerFactory = Callable[[Sequence[nn.Parameter]], torch.optim.Optimizer]
ValBatch = Callable[[], tuple[Tensor, dict[str, Tensor]]]


@dataclass
class StepOutput:
    losses: Tensor  # (T,) detached
    weights: Tensor  # (T,) detached task weights used for this step (NaN if not defined)


def task_losses(
    tasks: Mapping[str, Task], preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> Tensor:
    """The ``(T,)`` vector of per-task losses, in the order of ``tasks``."""
    return torch.stack([task.loss(preds[name], batch[name]) for name, task in tasks.items()])


def _like_param(p: Tensor, grad: Tensor) -> Tensor:
    """``grad`` in ``p``'s dtype and memory layout (strides), as ``backward()`` would leave it:
    a flat slice viewed as a channels_last weight has the wrong strides, which fused optimizers
    refuse on CUDA."""
    grad = grad.to(p.dtype)
    if grad.stride() == p.stride():
        return grad
    return torch.empty_like(p).copy_(grad)


def _assign_flat(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = _like_param(p, flat[offset : offset + n].view(p.shape))
        offset += n


def _assign(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            p.grad = _like_param(p, g if p.grad is None else p.grad + g)


def task_jacobian(losses: Tensor, wrt: Sequence[Tensor], batched: bool = False) -> Tensor:
    """The ``(T, D)`` matrix of the gradients of each of the ``T`` losses with respect to
    ``wrt`` (flattened and concatenated), on the losses' device; the graph is retained.

    ``batched=False`` runs one backward pass per task; ``batched=True`` one vectorised backward
    (``is_grads_batched``), which an H100 runs about 5x faster at 40 tasks but a CPU no faster
    (``benchmarks/methods.py``). The two agree up to floating-point summation order.
    """
    return task_gradients(losses, wrt, (), batched)[0]


#: Per-task gradients of one tensor: stacked ``(T, *shape)`` (batched backward), or one entry
#: per task, ``None`` where that task's loss does not reach it (per-task loop).
PerTask = Tensor | list[Tensor | None] | None


def task_gradients(
    losses: Tensor, wrt: Sequence[Tensor], extra: Sequence[Tensor], batched: bool = False
) -> tuple[Tensor, list[PerTask]]:
    """:func:`task_jacobian` of ``wrt``, and from the same backward passes each task's
    gradients of the ``extra`` tensors (the heads and a method's own parameters, which the
    passes traverse anyway), to be combined by :func:`weighted_sum`."""
    num_tasks = losses.shape[0]
    inputs = [*wrt, *extra]
    if batched and num_tasks > 1:
        eye = torch.eye(num_tasks, dtype=losses.dtype, device=losses.device)
        grads = torch.autograd.grad(
            losses, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True,
            is_grads_batched=True,
        )  # fmt: skip
        jacobian = torch.cat(
            [
                (g if g is not None else torch.zeros((num_tasks, *p.shape), device=p.device))
                .reshape(num_tasks, -1)
                .to(losses.dtype)
                for g, p in zip(grads[: len(wrt)], wrt, strict=True)
            ],
            dim=1,
        )
        return jacobian, list(grads[len(wrt) :])
    # One preallocated (T, D) buffer; each task's gradients are concatenated into its row.
    size = sum(p.numel() for p in wrt)
    jacobian = torch.empty((num_tasks, size), dtype=losses.dtype, device=losses.device)
    per_task: list[list[Tensor | None]] = [[] for _ in extra]
    for t in range(num_tasks):
        grads = torch.autograd.grad(losses[t], inputs, retain_graph=True, allow_unused=True)
        if wrt:
            torch.cat(
                [
                    (g if g is not None else torch.zeros_like(p)).reshape(-1).to(jacobian.dtype)
                    for g, p in zip(grads[: len(wrt)], wrt, strict=True)
                ],
                out=jacobian[t],
            )
        for column, g in zip(per_task, grads[len(wrt) :], strict=True):
            column.append(g)
    return jacobian, list(per_task)


def weighted_sum(grads: PerTask, weights: Tensor) -> Tensor | None:
    """``sum_t weights[t] * grads[t]`` of one tensor's per-task gradients (from
    :func:`task_gradients`); ``None`` where no task reaches it."""
    if grads is None:
        return None
    if isinstance(grads, Tensor):
        return torch.tensordot(weights.to(grads.dtype), grads, dims=1)
    terms = [g * weights[t].to(g.dtype) for t, g in enumerate(grads) if g is not None]
    if not terms:
        return None
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


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
        others = [*heads, *(p for p in method_params if p.requires_grad)]
        with autocast:
            z = model.representation(images)
            preds = model.heads_forward(z, images.shape[-2:])
            losses = task_losses(tasks, preds, targets).float()
        method.observe(losses.detach())
        if method.representation:
            method.observe_representation(z.detach())
        transformed = method.transform_losses(losses)
        wrt: Sequence[Tensor] = [z] if method.representation else shared
        # With the per-task loop, the heads' and the method's own gradients come from the same
        # passes (the gradient of sum_t v_t L'_t is sum_t v_t grad L'_t), with no pass of their
        # own. The batched backward would compute every head's weight gradients for all T
        # tasks, mostly zeros: there one pass of their own is cheaper from T = 3 on.
        fold = not batched_jacobian
        jacobian, other_grads = task_gradients(
            transformed, wrt, others if fold else (), batched_jacobian
        )
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
            _assign(others, [weighted_sum(g, head_weights) for g in other_grads])
        else:
            head_loss = (head_weights * transformed).sum()
            _assign(others, torch.autograd.grad(head_loss, others, allow_unused=True))
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


def _model_parameters(model: MultiTaskModel) -> list[nn.Parameter]:
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
        self.optimizer = make_optimizer([*_model_parameters(model), *method_params])
        if isinstance(method, AutoLambda) and val_batch is None:
            raise ValueError("auto_lambda needs validation batches; the trainer supplies them")
        self.val_batch = val_batch

    @property
    def optimizers(self) -> list[torch.optim.Optimizer]:
        return [self.optimizer]

    def _loss_fn(self, params: Mapping[str, Tensor], images: Tensor, targets: Mapping[str, Tensor]):
        with self.autocast:
            preds = torch.func.functional_call(self.model, dict(params), (images,), strict=False)
            return task_losses(self.tasks, preds, targets)

    def step(self, images: Tensor, targets: Mapping[str, Tensor]) -> StepOutput:
        if isinstance(self.method, AutoLambda):
            assert self.val_batch is not None
            params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
            with frozen_batchnorm(self.model):
                self.method.meta_step(
                    self._loss_fn, params, self.optimizer.param_groups[0]["lr"],
                    (images, targets), self.val_batch(),
                )  # fmt: skip
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
            losses = task_losses(self.tasks, preds, targets).float()
        # Each task's pass gives its shared gradients and, for the heads' (1/T) sum_t grad L_t,
        # its own head's: no separate pass through the heads.
        _, per_task = task_gradients(losses, (), [*self.shared, *self.heads])
        shared_grads, head_grads = per_task[: len(self.shared)], per_task[len(self.shared) :]
        task_grads = [[column[t] for column in shared_grads] for t in range(num_tasks)]
        uniform = torch.full((num_tasks,), 1.0 / num_tasks, device=losses.device)
        _assign(self.heads, [weighted_sum(g, uniform) for g in head_grads])
        self.head_optimizer.step()
        self.shared_optimizer.step(task_grads)
        self.path.update()
        weights = torch.full((num_tasks,), 1.0 / num_tasks, device=losses.device)
        return StepOutput(losses.detach(), weights)


class AlternatingUpdater(Updater):
    """MTL-IUS / MTL-IO: one step per task group on the group's mean loss, same batch."""

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        method: _Alternating,
        autocast: torch.autocast,
        make_optimizer: OptimizerFactory,
        generator: torch.Generator,
    ) -> None:
        super().__init__(model, tasks, method, [], autocast)
        self.groups = task_groups(len(tasks), method.group_size, generator)
        count = len(self.groups) if isinstance(method, MTLIO) else 1
        self._optimizers = [make_optimizer(_model_parameters(model)) for _ in range(count)]
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
    """The updater for ``method`` (a strategy, or a weighting / aggregator)."""
    if isinstance(method, AdaTask):
        if optimizer_name != "adam":
            raise ValueError(f"adatask keeps Adam moments per task; it needs optimizer 'adam', "
                             f"got {optimizer_name!r}")  # fmt: skip
        return AdaTaskUpdater(
            model, tasks, method, autocast, make_optimizer, lr, adam_betas, adam_eps, weight_decay
        )
    if isinstance(method, _Alternating):
        return AlternatingUpdater(model, tasks, method, autocast, make_optimizer, generator)
    if isinstance(method, Strategy):
        raise TypeError(f"strategy {method.name!r} has no updater")
    return JointUpdater(
        model, tasks, method, method_params, autocast, make_optimizer, val_batch, batched_jacobian
    )
