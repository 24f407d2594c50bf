"""Methods whose weights are learnt or adapted from the training signal.

* :class:`GradNorm` ``"gradnorm"`` -- gradient normalisation (Chen et al., 2018).
* :class:`FAMO` ``"famo"`` -- fast adaptive multitask optimisation (Liu et al., 2023).
* :class:`AutoLambda` ``"auto_lambda"`` -- meta-learnt task weights (Liu et al., 2022).
* :class:`IMTL` ``"imtl"`` -- impartial MTL, the hybrid of IMTL-L and IMTL-G (Liu et al., 2021).
* :class:`MGDAUB` ``"mgda_ub"`` -- MGDA on the gradients of the shared representation
  (Sener & Koltun, 2018).

Every one follows the scale convention of :mod:`mtl_paradigms.methods.base` (mean over tasks);
each docstring states its factor relative to the reference implementation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods.aggregators import IMTLG, MGDA
from mtl_paradigms.methods.base import WeightedAggregator, Weighting, check_matrix
from mtl_paradigms.methods.loss_weightings import IMTLL


def _require(value: Tensor | None, method: str) -> Tensor:
    if value is None:
        raise RuntimeError(f"{method}: call bind(num_tasks) before use (the trainer does)")
    return value


class GradNorm(WeightedAggregator):
    """GradNorm (Chen et al., 2018): learnt weights that balance the tasks' gradient norms.

    Keeps weights ``w`` (``sum_t w_t = T``, initially all one). Each step, with ``g_t`` the task
    gradients of the shared parameters, ``G_t = w_t |g_t|``, their mean ``G``, the inverse
    training rates ``r_t = (L_t / L_t(0)) / mean_s (L_s / L_s(0))``, the GradNorm loss is
    ``sum_t |G_t - G r_t^alpha|`` with the target ``G r_t^alpha`` held constant. Its gradient with
    respect to ``w``, ``sign(G_t - target_t) |g_t|``, is written to the weights' ``.grad``; the
    trainer's optimizer takes the step (``bind`` returns ``w``), and ``w`` is renormalised to
    sum to ``T`` before its next use.

    The norms are taken over **all** shared parameters rather than the last shared layer of the
    paper (the trainer has the full per-task gradients anyway; LibMTL does the same).

    Scale: the direction is ``sum_t (w_t / T) g_t`` and head ``t`` receives ``(w_t / T) grad L_t``
    (``weights_heads``): the weighted loss ``(1/T) sum_t w_t L_t``. The paper's loss
    ``sum_t w_t L_t`` is ``T`` times larger.
    """

    name = "gradnorm"
    weights_heads = True

    def __init__(self, alpha: float = 1.5) -> None:
        if not alpha >= 0:
            raise ValueError(f"gradnorm: alpha must be non-negative, got {alpha}")
        self.alpha = float(alpha)
        self._w: torch.nn.Parameter | None = None
        self._initial: Tensor | None = None
        self._losses: Tensor | None = None

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        self._w = torch.nn.Parameter(torch.ones(num_tasks, device=device))
        self._initial = None
        return [self._w]

    def observe(self, losses: Tensor) -> None:
        losses = losses.detach().float()
        if self._initial is None:
            self._initial = losses.clone()
        self._losses = losses

    def task_weights(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        w_param = _require(self._w, self.name)
        losses = _require(self._losses, self.name)
        initial = _require(self._initial, self.name)
        num_tasks = grads.shape[-2]
        with torch.no_grad():
            w_param.clamp_(min=0.0)
            total = w_param.sum()
            w_param.copy_(torch.where(total > 0, w_param * (num_tasks / total), 1.0))
        w = w_param.detach().to(grads.dtype)
        norms = grads.norm(dim=-1)
        weighted = w * norms
        ratios = losses / initial.clamp_min(torch.finfo(losses.dtype).tiny)
        inverse_rate = (ratios / ratios.mean().clamp_min(torch.finfo(losses.dtype).tiny)).to(
            grads.dtype
        )
        target = weighted.mean(dim=-1, keepdim=True) * inverse_rate**self.alpha
        w_param.grad = (torch.sign(weighted - target) * norms).to(w_param.dtype).detach()
        return w / num_tasks

    def state_dict(self) -> dict[str, object]:
        return {
            "w": _require(self._w, self.name).detach().clone(),
            "initial": None if self._initial is None else self._initial.clone(),
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            _require(self._w, self.name).copy_(state["w"])  # type: ignore[arg-type]
        initial = state["initial"]
        self._initial = None if initial is None else initial.to(self._w.device)  # type: ignore[union-attr]


class FAMO(Weighting):
    """FAMO (Liu et al., 2023): fast adaptive multitask optimisation.

    Task logits ``xi`` give ``z = softmax(xi)``; the weights on the losses are
    ``w_t = z_t / (c L_t)`` with ``c = sum_s z_s / L_s``, i.e. the gradient of
    ``sum_t z_t log L_t / c`` (``L_t`` shifted by ``min_loss`` against zero). They sum to one, so
    FAMO is on the mean scale of :mod:`mtl_paradigms.methods.base` as in the reference code.

    After the optimizer's step the trainer recomputes the same batch's losses
    (``needs_after_step_losses``); with ``delta_t = log L_t(before) - log L_t(after)`` the
    logits move by one Adam step (learning rate ``logit_lr``, weight decay ``gamma``) along
    ``-J_z^T delta``, ``J_z`` the softmax Jacobian: tasks whose loss fell least gain weight.
    The logits have their own optimizer, as in the paper; they are not in the trainer's.
    """

    name = "famo"
    needs_after_step_losses = True

    def __init__(self, gamma: float = 1e-3, logit_lr: float = 0.025, min_loss: float = 1e-8):
        if not gamma >= 0:
            raise ValueError(f"famo: gamma must be non-negative, got {gamma}")
        if not logit_lr > 0:
            raise ValueError(f"famo: logit_lr must be positive, got {logit_lr}")
        if not min_loss > 0:
            raise ValueError(f"famo: min_loss must be positive, got {min_loss}")
        self.gamma = float(gamma)
        self.logit_lr = float(logit_lr)
        self.min_loss = float(min_loss)
        self._logits: Tensor | None = None
        self._optimizer: torch.optim.Adam | None = None
        self._before: Tensor | None = None

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        self._logits = torch.zeros(num_tasks, device=device, requires_grad=True)
        self._optimizer = torch.optim.Adam(
            [self._logits], lr=self.logit_lr, weight_decay=self.gamma
        )
        return []

    def _shifted(self, losses: Tensor) -> Tensor:
        return losses.detach().float() + self.min_loss

    def weights(self, losses: Tensor) -> Tensor:
        z = torch.softmax(_require(self._logits, self.name).detach(), dim=-1)
        shifted = self._shifted(losses)
        c = (z / shifted).sum(dim=-1, keepdim=True)
        self._before = shifted
        return (z / (c * shifted)).to(losses.dtype)

    def after_step(self, losses: Tensor) -> None:
        logits = _require(self._logits, self.name)
        before = _require(self._before, self.name)
        delta = before.log() - self._shifted(losses).log()
        with torch.enable_grad():
            z = torch.softmax(logits, dim=-1)
            (grad,) = torch.autograd.grad(z, logits, grad_outputs=delta)
        logits.grad = grad  # the Adam step descends: xi moves along -J_z^T delta
        self._optimizer.step()  # type: ignore[union-attr]

    def state_dict(self) -> dict[str, object]:
        return {
            "logits": _require(self._logits, self.name).detach().clone(),
            "optimizer": self._optimizer.state_dict() if self._optimizer else None,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            _require(self._logits, self.name).copy_(state["logits"])  # type: ignore[arg-type]
        if self._optimizer is not None and state["optimizer"] is not None:
            self._optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]


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
    needs_meta_step = True

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
        lam = _require(self._lam, self.name).detach()
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
        lam = _require(self._lam, self.name)
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

    def state_dict(self) -> dict[str, object]:
        return {
            "lambda": _require(self._lam, self.name).detach().clone(),
            "optimizer": self._optimizer.state_dict() if self._optimizer else None,
            "steps": self._steps,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        with torch.no_grad():
            _require(self._lam, self.name).copy_(state["lambda"])  # type: ignore[arg-type]
        if self._optimizer is not None and state["optimizer"] is not None:
            self._optimizer.load_state_dict(state["optimizer"])  # type: ignore[arg-type]
        self._steps = int(state["steps"])  # type: ignore[call-overload]


class IMTL(IMTLG):
    """IMTL (Liu et al., 2021): IMTL-L's loss scaling and IMTL-G's gradient balancing together.

    Each loss is scaled to ``e^{s_t} L_t - s_t`` with learnable ``s`` (``bind``; ``init`` at the
    start); the shared parameters move along the IMTL-G combination of the scaled losses'
    gradients, while the heads and ``s`` receive the gradient of the mean scaled loss
    ``(1/T) sum_t (e^{s_t} L_t - s_t)`` (the reference sums, a factor ``T``). ``s`` settles at
    ``-log L_t``, which makes the shared update invariant to constant loss scales.
    """

    name = "imtl"

    def __init__(self, init: float = 0.0) -> None:
        self.init = float(init)
        self._loss_part = IMTLL(init)  # the scales, their parameter and checkpoint state

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        return self._loss_part.bind(num_tasks, device)

    def transform_losses(self, losses: Tensor) -> Tensor:
        return self._loss_part.scaled_losses(losses)

    def state_dict(self) -> dict[str, object]:
        return self._loss_part.state_dict()

    def load_state_dict(self, state: dict[str, object]) -> None:
        self._loss_part.load_state_dict(state)


Normalization = Literal["none", "l2", "loss", "loss+"]


class MGDAUB(MGDA):
    """MGDA-UB (Sener & Koltun, 2018): MGDA on the gradients of the shared *representation*.

    The trainer computes each task's gradient with respect to the encoder's output ``z`` (one
    backward through the heads only, ``representation = True``), the min-norm weights ``w`` are
    found on those, and the weighted loss ``sum_t w_t L_t`` is back-propagated through the whole
    network (``weights_heads``): the shared parameters receive ``sum_t w_t grad L_t``.

    ``normalization`` rescales each gradient before the weights are computed (the weights are
    then applied to the raw losses, as in the reference): ``"l2"`` by ``|g_t|``, ``"loss"`` by
    ``L_t``, ``"loss+"`` by ``L_t |g_t|``, ``"none"`` not at all (default).

    Scale: the weights lie on the simplex (sum to one) -- the mean scale of
    :mod:`mtl_paradigms.methods.base`, as in the reference code.
    """

    name = "mgda_ub"
    representation = True
    weights_heads = True

    def __init__(self, normalization: Normalization = "none", iterations: int = 300) -> None:
        super().__init__(iterations=iterations)
        if normalization not in ("none", "l2", "loss", "loss+"):
            raise ValueError(
                f"mgda_ub: normalization must be 'none', 'l2', 'loss' or 'loss+', "
                f"got {normalization!r}"
            )
        self.normalization = normalization
        self._losses: Tensor | None = None

    def observe(self, losses: Tensor) -> None:
        self._losses = losses.detach()

    def task_weights(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        tiny = torch.finfo(grads.dtype).tiny
        scale = torch.ones(grads.shape[:-1], dtype=grads.dtype, device=grads.device)
        if self.normalization in ("l2", "loss+"):
            scale = scale * grads.norm(dim=-1)
        if self.normalization in ("loss", "loss+"):
            losses = _require(self._losses, self.name).to(grads.dtype)
            scale = scale * losses
        normalised = grads / scale.clamp_min(tiny).unsqueeze(-1)
        return super().task_weights(normalised)
