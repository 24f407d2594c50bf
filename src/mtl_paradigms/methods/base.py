"""The method interface shared by every multi-task method.

Two kinds of method combine the tasks, after TorchJD's split:

* a :class:`Weighting` maps the per-task losses, shape ``(*batch, T)``, to task weights of
  the same shape; the trainer then back-propagates ``sum_t w_t * L_t``. Loss-only methods
  never ask for per-task gradients.
* an :class:`Aggregator` maps the per-task gradients of the shared parameters, a matrix of
  shape ``(*batch, T, D)``, to one update direction of shape ``(*batch, D)``. The trainer
  computes per-task gradients only for aggregators (``requires_grads`` is ``True``).

A third kind, a :class:`Strategy` (AdaTask, MTL-IUS, MTL-IO), changes *how the optimizer steps*
rather than how losses or gradients are combined.

Every method owns how its update step is taken: :meth:`Method.make_updater` builds the
:class:`~mtl_paradigms.methods.updater.Updater` that performs one update per batch, from the
run's :class:`~mtl_paradigms.methods.updater.UpdateContext`. Weightings and aggregators get the
:class:`~mtl_paradigms.methods.updater.JointUpdater` (one optimizer, one step per batch) unless
they need more (Auto-Lambda's meta step); each strategy returns its own updater. The trainer only
asks the method (:func:`mtl_paradigms.updates.make_updater`), so a new strategy plugs in without
editing the trainer.

Leading ``batch`` dimensions let one call handle many independent problems at once (the
toy problems vectorise over start points and learning rates this way).

Scale convention (one convention, applied everywhere)
-----------------------------------------------------
Every method returns a combination **on the scale of the mean over tasks**: equal weighting
(EW) gives weights ``1/T`` and the aggregated direction ``mean_t g_t``, i.e. the gradient of
the *average* loss. Task-specific parameters (heads) receive ``(1/T) * grad L_t`` under every
method, except for the aggregators whose weights define a weighted loss
(``weights_heads = True``: GradNorm, MGDA-UB), where head ``t`` receives ``w_t * grad L_t``
with the same weights ``w`` as the shared parameters. Reference implementations that sum
instead (LibMTL's EW uses weights 1) differ by a factor ``T`` in the effective learning rate of
SGD; Adam is unaffected. The relation is tested (``tests/methods``).

Hooks the trainer calls (all optional): :meth:`Method.bind` (learnable parameters),
:meth:`Method.observe` (the step's detached losses, before weighting or aggregation),
:meth:`Method.after_step` (losses of the same batch recomputed after the optimizer step, for
methods with ``needs_after_step_losses``), :meth:`Method.epoch_end` and the state-dict pair.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from mtl_paradigms.methods.updater import UpdateContext, Updater


class Method(ABC):  # noqa: B024 - a common base; the abstract methods live in the two kinds
    """Common base: a method knows its name and whether it needs per-task gradients."""

    name: str = ""
    requires_grads: bool = False

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        """Prepare for ``num_tasks`` tasks; return the method's own learnable parameters.

        The trainer adds the returned parameters to the optimizer (UW's log-variances, say).
        Stateless methods keep the default: nothing to learn.
        """
        return []

    def epoch_end(self, mean_losses: Tensor) -> None:  # noqa: B027 - optional hook
        """Called by the trainer after every epoch with the ``(T,)`` mean training losses."""

    def attach(self, model: torch.nn.Module) -> None:  # noqa: B027 - optional hook
        """Called once with the model before training (RotoGrad registers its rotations)."""

    def observe(self, losses: Tensor) -> None:  # noqa: B027 - optional hook
        """Called every step with the detached ``(T,)`` losses before the method is applied."""

    needs_after_step_losses: bool = False

    def after_step(self, losses: Tensor) -> None:  # noqa: B027 - optional hook
        """With ``needs_after_step_losses``: the same batch's ``(T,)`` losses after the step."""

    def state_dict(self) -> dict[str, object]:
        """State to checkpoint (learnable parameters are saved by value here too)."""
        return {}

    def load_state_dict(self, state: dict[str, object]) -> None:  # noqa: B027 - optional hook
        """Restore what :meth:`state_dict` returned."""

    def make_updater(self, context: UpdateContext) -> Updater:
        """The updater that takes this method's steps in the run described by ``context``.

        Default: the :class:`~mtl_paradigms.methods.updater.JointUpdater` (one optimizer over
        the model and the method's parameters, one step per batch on the gradients of
        :func:`~mtl_paradigms.methods.updater.training_step`). Methods that step differently
        override it; strategies must.
        """
        from mtl_paradigms.methods.updater import JointUpdater  # the updater imports this module

        return JointUpdater.from_context(self, context)

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not k.startswith("_"))
        return f"{type(self).__name__}({params})"


class Weighting(Method):
    """Maps losses ``(*batch, T)`` to weights ``(*batch, T)``; the loss is ``sum_t w_t L_t``."""

    requires_grads = False

    @abstractmethod
    def weights(self, losses: Tensor) -> Tensor:
        """Task weights for ``losses`` (detached from the graph unless documented otherwise)."""

    def combine(self, losses: Tensor) -> Tensor:
        """The scalar (per batch element) loss to back-propagate."""
        return (self.weights(losses) * losses).sum(dim=-1)


class Aggregator(Method):
    """Maps per-task shared gradients ``(*batch, T, D)`` to an update direction ``(*batch, D)``.

    ``representation = True`` asks the trainer for the per-task gradients with respect to the
    shared *representation* (MGDA-UB) instead of the shared parameters; the direction returned
    is then back-propagated through the encoder.
    """

    requires_grads = True
    representation: bool = False
    weights_heads: bool = False

    @abstractmethod
    def __call__(self, grads: Tensor) -> Tensor:
        """The update direction for the shared parameters."""

    def observe_representation(self, z: Tensor) -> None:
        """With ``representation = True``: the shared representation of the step (its shape)."""

    def transform_losses(self, losses: Tensor) -> Tensor:
        """The losses whose gradients are aggregated (IMTL scales them); default: unchanged.

        May depend on the method's learnable parameters; the trainer back-propagates the
        transformed losses into the heads and those parameters.
        """
        return losses

    def aggregate(self, grads: Tensor) -> tuple[Tensor, Tensor | None]:
        """The direction and, where the method has them, its task weights ``w`` with
        ``direction = sum_t w_t g_t`` (shape ``(*batch, T)``), else ``None``.

        The trainer logs the weights per epoch (for plots and the fixed-weights procedure).
        """
        return self(grads), None


class WeightedAggregator(Aggregator):
    """An aggregator whose direction is a combination ``sum_t w_t g_t`` of the task gradients."""

    @abstractmethod
    def task_weights(self, grads: Tensor) -> Tensor:
        """The weights ``w``, shape ``(*batch, T)``."""

    def __call__(self, grads: Tensor) -> Tensor:
        return self.aggregate(grads)[0]

    def aggregate(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        w = self.task_weights(grads)
        return combine(w, grads), w


class Strategy(Method):
    """A strategy: changes how the optimizer steps, not how losses or gradients are combined.

    A strategy implements :meth:`make_updater`, returning the
    :class:`~mtl_paradigms.methods.updater.Updater` that performs its steps; it carries its name
    and hyperparameters like any method (for the config, ``mtlp methods`` and the tables).
    """

    requires_grads = False

    @abstractmethod
    def make_updater(self, context: UpdateContext) -> Updater:
        """The updater that takes this strategy's steps (see :meth:`Method.make_updater`)."""


def combine(weights: Tensor, grads: Tensor) -> Tensor:
    """``sum_t w_t g_t`` for weights ``(*batch, T)`` and gradients ``(*batch, T, D)``."""
    return (weights.unsqueeze(-2) @ grads).squeeze(-2)


def check_matrix(grads: Tensor) -> None:
    """Reject a gradient matrix whose shape cannot be ``(*batch, T, D)``."""
    if grads.ndim < 2:
        raise ValueError(
            f"expected per-task gradients of shape (*batch, T, D), got {tuple(grads.shape)}"
        )
    if grads.shape[-2] < 1:
        raise ValueError("per-task gradient matrix has no task rows")


def gramian(grads: Tensor) -> Tensor:
    """The ``(*batch, T, T)`` matrix of inner products between task gradients."""
    return grads @ grads.transpose(-1, -2)


def uniform(num_tasks: int, like: Tensor) -> Tensor:
    return torch.full((num_tasks,), 1.0 / num_tasks, dtype=like.dtype, device=like.device)
