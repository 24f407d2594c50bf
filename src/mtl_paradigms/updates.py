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
import functools
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


def per_task_losses(
    tasks: Mapping[str, Task], preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> list[Tensor]:
    """Each task's loss as a scalar of its own, in the order of ``tasks``: the roots of per-task
    backward passes. (A pass from one entry of the stacked vector would carry zero gradients
    back through every other task's head: ``T`` heads' backward instead of one.)"""
    return [task.loss(preds[name], batch[name]) for name, task in tasks.items()]


def task_losses(
    tasks: Mapping[str, Task], preds: Mapping[str, Tensor], batch: Mapping[str, Tensor]
) -> Tensor:
    """The ``(T,)`` vector of per-task losses, in the order of ``tasks``."""
    return torch.stack(per_task_losses(tasks, preds, batch))


def _like_param(p: Tensor, grad: Tensor) -> Tensor:
    """``grad`` in ``p``'s dtype and memory layout (strides), as ``backward()`` would leave it:
    a flat slice viewed as a channels_last weight has the wrong strides, which fused optimizers
    refuse on CUDA."""
    grad = grad.to(p.dtype)
    if grad.stride() == p.stride():
        return grad
    return torch.empty_like(p).copy_(grad)


@functools.lru_cache(maxsize=4096)
def _layout(shape: tuple[int, ...], stride: tuple[int, ...]) -> tuple[bool, tuple[int, ...] | None]:
    """Whether the layout is dense (the elements fill ``numel`` consecutive places, as a
    parameter's do), and the dimensions from the slowest-varying in memory to the fastest where
    that is not the index order (a channels_last weight: ``(0, 2, 3, 1)``), else ``None``."""
    order = tuple(sorted(range(len(shape)), key=lambda d: -stride[d]))
    expected = 1
    for d in reversed(order):
        if shape[d] != 1 and stride[d] != expected:
            return False, None
        expected *= shape[d]
    sized = [d for d in order if shape[d] != 1]
    return True, (None if sized == sorted(sized) else order)


def _flatten_like(p: Tensor, g: Tensor, batch_dims: int = 0) -> Tensor:
    """``g`` (``p``'s shape, after ``batch_dims`` leading dimensions) flattened in the order of
    ``p``'s memory: for a gradient in ``p``'s layout a view, where flattening a channels_last
    weight's gradient in index order would copy it. :func:`_view_like` inverts it."""
    dense, order = _layout(tuple(p.shape), p.stride())
    if dense and order is not None:
        g = g.permute(*range(batch_dims), *(d + batch_dims for d in order))
    return g.reshape(*g.shape[:batch_dims], -1)


def _view_like(p: Tensor, flat: Tensor) -> Tensor:
    """``p.numel()`` values flattened by :func:`_flatten_like` as ``p``'s gradient, in ``p``'s
    dtype and layout (a view of ``flat`` where the dtypes agree)."""
    if not _layout(tuple(p.shape), p.stride())[0]:
        return _like_param(p, flat.view(p.shape))
    return flat.as_strided(p.shape, p.stride()).to(p.dtype)


def _or_zeros(g: Tensor | None, shape: Sequence[int], like: Tensor) -> Tensor:
    """``g``, or zeros of ``shape`` (``like``'s dtype and device) where a task does not reach it."""
    return g if g is not None else like.new_zeros(shape)


def _assign_flat(params: Sequence[nn.Parameter], flat: Tensor) -> None:
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = _view_like(p, flat[offset : offset + n])
        offset += n


def _assign(params: Sequence[nn.Parameter], grads: Sequence[Tensor | None]) -> None:
    for p, g in zip(params, grads, strict=True):
        if g is not None:
            p.grad = _like_param(p, g if p.grad is None else p.grad + g)


#: The ``T`` per-task losses: a ``(T,)`` vector, or ``T`` separate scalars
#: (:func:`per_task_losses`), whose per-task passes each run through one head only.
Losses = Tensor | Sequence[Tensor]


def task_jacobian(losses: Losses, wrt: Sequence[Tensor], batched: bool = False) -> Tensor:
    """The ``(T, D)`` matrix of the gradients of each of the ``T`` losses with respect to
    ``wrt`` (flattened and concatenated), on the losses' device; the graph is retained.

    ``batched=False`` runs one backward pass per task; ``batched=True`` one vectorised backward
    (``is_grads_batched``), which an H100 runs about 5x faster at 40 tasks but a CPU no faster
    (``benchmarks/methods.py``). The two agree up to floating-point summation order. Pass the
    losses as separate scalars (:func:`per_task_losses`) for the per-task passes: from a
    stacked vector each pass also back-propagates zeros through the other tasks' heads.
    """
    return task_gradients(losses, wrt, (), batched)[0]


#: Per-task gradients of one tensor: stacked ``(T, *shape)`` (batched backward), or one entry
#: per task, ``None`` where that task's loss does not reach it (per-task loop).
PerTask = Tensor | list[Tensor | None] | None


def task_gradients(
    losses: Losses, wrt: Sequence[Tensor], extra: Sequence[Tensor], batched: bool = False
) -> tuple[Tensor, list[PerTask]]:
    """:func:`task_jacobian` of ``wrt``, and from the same backward passes each task's
    gradients of the ``extra`` tensors (the heads, which the passes traverse anyway), to be
    combined by :func:`weighted_sum`."""
    roots = list(losses)
    if not roots or any(r.dim() != 0 for r in roots):
        shapes = [tuple(r.shape) for r in roots]
        raise ValueError(f"task gradients need one scalar loss per task, got shapes {shapes}")
    num_tasks = len(roots)
    dtype, device = roots[0].dtype, roots[0].device
    inputs = [*wrt, *extra]
    if batched and num_tasks > 1:
        stacked = losses if isinstance(losses, Tensor) else torch.stack(roots)
        eye = torch.eye(num_tasks, dtype=dtype, device=device)
        grads = torch.autograd.grad(
            stacked, inputs, grad_outputs=eye, retain_graph=True, allow_unused=True,
            is_grads_batched=True,
        )  # fmt: skip
        jacobian = torch.cat(
            [
                _flatten_like(p, _or_zeros(g, (num_tasks, *p.shape), p), batch_dims=1).to(dtype)
                for g, p in zip(grads[: len(wrt)], wrt, strict=True)
            ],
            dim=1,
        )
        return jacobian, list(grads[len(wrt) :])
    # One preallocated (T, D) buffer; each task's gradients are concatenated into its row.
    size = sum(p.numel() for p in wrt)
    jacobian = torch.empty((num_tasks, size), dtype=dtype, device=device)
    per_task: list[list[Tensor | None]] = [[] for _ in extra]
    for t, root in enumerate(roots):
        grads = torch.autograd.grad(root, inputs, retain_graph=True, allow_unused=True)
        if wrt:
            torch.cat(
                [
                    _flatten_like(p, _or_zeros(g, p.shape, p)).to(dtype)
                    for g, p in zip(grads[: len(wrt)], wrt, strict=True)
                ],
                out=jacobian[t],
            )
        for column, g in zip(per_task, grads[len(wrt) :], strict=True):
            column.append(g)
    return jacobian, list(per_task)


def loss_transform_jacobian(method: Aggregator, losses: Tensor) -> Tensor:
    """The ``(T, T)`` Jacobian ``dL'_t / dL_s`` of ``method.transform_losses`` at ``losses``
    (diagonal for a per-task scaling such as IMTL-L's), without a graph."""
    return torch.autograd.functional.jacobian(method.transform_losses, losses.detach())


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

    def _loss_fn(
        self, params: Mapping[str, Tensor], images: Tensor, targets: Mapping[str, Tensor]
    ) -> list[Tensor]:
        with self.autocast:
            preds = torch.func.functional_call(self.model, dict(params), (images,), strict=False)
            return per_task_losses(self.tasks, preds, targets)

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
