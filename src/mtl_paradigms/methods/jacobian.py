"""Per-task losses and gradients: the Jacobian of the ``T`` losses, and writing gradients.

:func:`task_gradients` computes the ``(T, D)`` matrix of per-task gradients of the shared
parameters (or of the shared representation) that the aggregators take, by one backward pass per
task or one vectorised pass, and, from the same passes, each task's gradients of the heads;
:func:`weighted_sum` combines those, and the private ``_assign*`` helpers write gradients to
``.grad`` in each parameter's dtype and memory layout.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from mtl_paradigms.methods.base import Aggregator
    from mtl_paradigms.tasks import Task

__all__ = [
    "Losses", "PerTask", "loss_transform_jacobian", "per_task_losses", "task_gradients",
    "task_jacobian", "task_losses", "weighted_sum",
]  # fmt: skip


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
