"""Auto-Lambda ``"auto_lambda"``: task weights meta-learnt on validation data (Liu et al.,
2022). It owns its updater, :class:`AutoLambdaUpdater`, which takes the meta step before each
joint step."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from mtl_paradigms.methods._checks import require_bound
from mtl_paradigms.methods.base import Weighting
from mtl_paradigms.methods.jacobian import per_task_losses
from mtl_paradigms.methods.updater import (
    JointUpdater,
    OptimizerFactory,
    StepOutput,
    UpdateContext,
    ValBatch,
    frozen_batchnorm,
)

if TYPE_CHECKING:
    from mtl_paradigms.models import MultiTaskModel
    from mtl_paradigms.tasks import Task


LossFn = Callable[[Mapping[str, Tensor], Tensor, Mapping[str, Tensor]], Tensor | Sequence[Tensor]]
"""``loss_fn(params, images, targets)``: the ``T`` losses of the model run with ``params``, a
``(T,)`` vector or ``T`` separate scalars (then each task's gradient pass runs through its own
head only; from a vector it also carries zeros through the other heads)."""


class AutoLambda(Weighting):
    """Auto-Lambda (Liu et al., 2022): task weights meta-learnt on validation data.

    Weights ``lambda`` (initially ``init``) weight the training loss ``(1/T) sum_t lambda_t L_t``.
    Every ``update_every`` steps, before the model's step, one virtual SGD step
    ``theta' = theta - lr (1/T) sum_t lambda_t grad L_t(theta)`` is taken on the training batch and
    ``lambda`` moves by one Adam step (``meta_lr``) along the gradient of the validation loss
    ``(1/T) sum_t L_t^val(theta')`` (every task primary). Because the training loss is linear in
    ``lambda``, that gradient is exactly ``-lr/T <grad L_t(theta), grad L^val(theta')>``: the
    trainer supplies the per-task gradients, so no finite-difference approximation of the
    reference code is needed. ``lambda`` is kept non-negative.

    Scale: ``lambda_t / T`` on the mean scale of :mod:`mtl_paradigms.methods.base`; the
    reference sums ``lambda_t L_t`` (factor ``T``).
    """

    name = "auto_lambda"

    def __init__(self, meta_lr: float = 1e-4, init: float = 1.0, update_every: int = 1) -> None:
        if not meta_lr > 0:
            raise ValueError(f"auto_lambda: meta_lr must be positive, got {meta_lr}")
        if not init >= 0:
            raise ValueError(f"auto_lambda: init must be non-negative, got {init}")
        if isinstance(update_every, bool) or not isinstance(update_every, int) or update_every < 1:
            raise ValueError(
                f"auto_lambda: update_every must be a positive integer, got {update_every!r}"
            )
        self.meta_lr = float(meta_lr)
        self.init = float(init)
        self.update_every = update_every
        self._lam: Tensor | None = None
        self._optimizer: torch.optim.Adam | None = None
        self._steps = 0

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        self._lam = torch.full((num_tasks,), self.init, device=device, requires_grad=True)
        self._optimizer = torch.optim.Adam([self._lam], lr=self.meta_lr)
        self._steps = 0
        return []

    def weights(self, losses: Tensor) -> Tensor:
        lam = require_bound(self._lam, self.name).detach()
        return (lam / losses.shape[-1]).to(losses.dtype).expand_as(losses)

    def meta_step(
        self,
        loss_fn: LossFn,
        params: Mapping[str, Tensor],
        lr: float,
        train_batch: tuple[Tensor, Mapping[str, Tensor]],
        val_batch: tuple[Tensor, Mapping[str, Tensor]],
    ) -> None:
        """Update ``lambda`` from one virtual step (see the class docstring)."""
        self._steps += 1
        if (self._steps - 1) % self.update_every:
            return
        lam = require_bound(self._lam, self.name)
        names = list(params)
        tensors = [params[n].detach().requires_grad_(True) for n in names]
        with torch.enable_grad():
            losses = [loss.float() for loss in loss_fn(dict(zip(names, tensors, strict=True)),
                                                       *train_batch)]  # fmt: skip
            num_tasks = len(losses)
            per_task = [
                torch.autograd.grad(losses[t], tensors, retain_graph=t < num_tasks - 1,
                                    allow_unused=True)
                for t in range(num_tasks)
            ]  # fmt: skip
            w = lam.detach() / num_tasks
            virtual = {}
            for i, (n, p) in enumerate(zip(names, tensors, strict=True)):
                step = sum(
                    (w[t] * g[i] for t, g in enumerate(per_task) if g[i] is not None),
                    torch.zeros_like(p),
                )
                virtual[n] = (p - lr * step).detach().requires_grad_(True)
            val_losses = torch.stack(list(loss_fn(virtual, *val_batch))).float()
            val_grads = torch.autograd.grad(
                val_losses.mean(), list(virtual.values()), allow_unused=True
            )
        grad = torch.zeros_like(lam)
        for t, g in enumerate(per_task):
            dot = sum(
                ((gi * vi).sum() for gi, vi in zip(g, val_grads, strict=True)
                 if gi is not None and vi is not None),
                torch.zeros((), device=lam.device),
            )  # fmt: skip
            grad[t] = -lr / num_tasks * dot
        lam.grad = grad
        self._optimizer.step()  # type: ignore[union-attr]
        with torch.no_grad():
            lam.clamp_(min=0.0)

    def make_updater(self, context: UpdateContext) -> AutoLambdaUpdater:
        """The joint updater with the meta step before each step (:class:`AutoLambdaUpdater`)."""
        return AutoLambdaUpdater.from_context(self, context)

    def state_dict(self) -> dict[str, object]:
        return {
            "lambda": require_bound(self._lam, self.name).detach().clone(),
            "optimizer": self._optimizer.state_dict() if self._optimizer else None,
            "steps": self._steps,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            require_bound(self._lam, self.name).copy_(state["lambda"])  # type: ignore[arg-type]
        if self._optimizer is not None and state["optimizer"] is not None:
            self._optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self._steps = int(state["steps"])  # type: ignore[call-overload]


class AutoLambdaUpdater(JointUpdater):
    """The joint updater of :class:`AutoLambda`: before each step, the meta step on a validation
    batch (BatchNorm's running statistics untouched), with the optimizer's current learning
    rate as the virtual step's."""

    method: AutoLambda

    def __init__(
        self,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        method: AutoLambda,
        method_params: Sequence[nn.Parameter],
        autocast: torch.autocast,
        make_optimizer: OptimizerFactory,
        val_batch: ValBatch | None = None,
        batched_jacobian: bool = False,
    ) -> None:
        super().__init__(
            model, tasks, method, method_params, autocast, make_optimizer, val_batch,
            batched_jacobian,
        )  # fmt: skip
        if val_batch is None:
            raise ValueError("auto_lambda needs validation batches; the trainer supplies them")

    def _loss_fn(
        self, params: Mapping[str, Tensor], images: Tensor, targets: Mapping[str, Tensor]
    ) -> list[Tensor]:
        with self.autocast:
            preds = torch.func.functional_call(self.model, dict(params), (images,), strict=False)
            return per_task_losses(self.tasks, preds, targets)

    def step(self, images: Tensor, targets: Mapping[str, Tensor]) -> StepOutput:
        assert self.val_batch is not None
        params = {n: p for n, p in self.model.named_parameters() if p.requires_grad}
        with frozen_batchnorm(self.model):
            self.method.meta_step(
                self._loss_fn, params, self.optimizer.param_groups[0]["lr"],
                (images, targets), self.val_batch(),
            )  # fmt: skip
        return super().step(images, targets)
