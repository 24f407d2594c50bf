"""CDTT ``"cdtt"``: the central direction plus task tensioners (Tiemink et al., 2022);
see :mod:`mtl_paradigms.methods.aggregators.edm`."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl_paradigms.methods.aggregators.edm import _edm_weights
from mtl_paradigms.methods.base import WeightedAggregator, check_matrix, combine


class CDTT(WeightedAggregator):
    """CDTT (Tiemink et al., 2022): EDM's central direction plus task tensions.

    Every call records the task gradient norms ``|g_t|`` in a sliding window of the last
    ``window`` calls (10 in the reference). Before the window is full and on the first call
    with a full window, the direction is EDM's, ``d = sum_t c_t g_t``. From then on, with
    ``S_t`` the sum of task ``t``'s norms in the window now and ``S'_t`` one call earlier, and
    ``L_t`` the task's loss on this batch (:meth:`observe`),

    * ``p_t = S_t / S'_t + log10(L_t)`` and the tension
      ``tau_t = max(0, 1 - alpha + alpha * sigmoid(e (p_t - 1)))`` (between ``1 - alpha`` and 1;
      ``alpha = 0`` gives tension 1 for every task);
    * ``v = d + sum_t tau_t (g_t - d) / |g_t - d|`` (a task whose gradient equals ``d`` adds
      nothing);
    * then, for ``t = 1 .. T`` in order, if ``<g_t, v> < 0``, ``v`` is replaced by the point
      of the line through ``g_t`` and ``v`` that is orthogonal to ``g_t``:
      ``v <- (1 - s) g_t + s v`` with ``s = |g_t|^2 / (|g_t|^2 - <g_t, v>)`` (the reference
      computes the same point with angles and a tangent).

    Each step is linear in the gradients, so ``v = sum_t w_t g_t`` with weights that are
    tracked exactly and sum to one (they may be negative).

    Scale: the weights sum to one, so the central direction sits on the mean scale of
    :mod:`mtl_paradigms.methods.base` (factor 1 relative to the reference for the shared
    parameters). The tension terms are *unit* vectors, as in the reference, so once they apply
    the direction has a norm of order ``T * tau`` whatever the scale of the gradients; with
    SGD the learning rate therefore does not scale with the gradients as it does for EDM.

    The state (the window, the previous window sum and the call count) is checkpointed through
    :meth:`state_dict`. The trainer passes each step's detached losses ``(*batch, T)`` to
    :meth:`observe` before :meth:`aggregate`; losses are clamped to the smallest positive float
    before the logarithm. The study tunes ``alpha``
    over ``{0.2, 0.4, 0.6, 0.8, 1.0}``.
    """

    name = "cdtt"

    def __init__(self, alpha: float = 0.6, window: int = 10, iterations: int = 300) -> None:
        if not (math.isfinite(float(alpha)) and 0.0 <= alpha <= 1.0):
            raise ValueError(f"cdtt: alpha must be in [0, 1], got {alpha!r}")
        if isinstance(window, bool) or not isinstance(window, int) or window < 1:
            raise ValueError(f"cdtt: window must be a positive integer, got {window!r}")
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"cdtt: iterations must be a positive integer, got {iterations!r}")
        self.alpha = float(alpha)
        self.window = window
        self.iterations = iterations
        self._reset()

    def _reset(self) -> None:
        self._norms: Tensor | None = None  # (window, *batch, T)
        self._previous_sum: Tensor | None = None  # (*batch, T)
        self._calls = 0
        self._losses: Tensor | None = None

    def bind(self, num_tasks: int, device: torch.device | str = "cpu") -> list[torch.nn.Parameter]:
        """A fresh start: empty window (nothing to learn)."""
        self._reset()
        return []

    def observe(self, losses: Tensor) -> None:
        """The task losses ``(*batch, T)`` of the step whose gradients come next."""
        self._losses = torch.as_tensor(losses).detach()

    def tension(self, ratio: Tensor, losses: Tensor) -> Tensor:
        """``tau = max(0, 1 - alpha + alpha sigmoid(e (ratio + log10 L - 1)))``."""
        logs = torch.log10(losses.clamp_min(torch.finfo(losses.dtype).tiny))
        p = ratio + logs
        return (1.0 - self.alpha + self.alpha * torch.sigmoid(math.e * (p - 1.0))).clamp_min(0.0)

    def task_weights(self, grads: Tensor) -> Tensor:
        """The weights ``w`` of ``v = sum_t w_t g_t``, shape ``(*batch, T)``; a call advances
        the window, so every call is one training step."""
        check_matrix(grads)
        if self._losses is None:
            raise RuntimeError(
                "cdtt: needs the task losses of the step; call observe(losses) before "
                "aggregating (the trainer does)"
            )
        losses, self._losses = self._losses.to(grads.device, grads.dtype), None
        if losses.shape != grads.shape[:-1]:
            raise ValueError(
                f"cdtt: losses of shape {tuple(losses.shape)} do not match gradients of shape "
                f"{tuple(grads.shape)}; expected {tuple(grads.shape[:-1])}"
            )
        weights, norms = _edm_weights(grads, self.iterations)
        if self._norms is None or self._norms.shape[1:] != norms.shape:
            self._norms = norms.new_zeros((self.window, *norms.shape))
            self._previous_sum = None
            self._calls = 0
        if self._norms.device != norms.device:  # restored from a checkpoint on another device
            self._norms = self._norms.to(norms.device)
            if self._previous_sum is not None:
                self._previous_sum = self._previous_sum.to(norms.device)
        self._norms[self._calls % self.window] = norms.detach()
        self._calls += 1
        if self._calls < self.window:
            return weights
        window_sum = self._norms.sum(dim=0)
        previous, self._previous_sum = self._previous_sum, window_sum
        if previous is None:
            return weights
        ratio = torch.where(previous > 0, window_sum / previous.clamp_min(1e-300), 1.0)
        tau = self.tension(ratio, losses)
        return self._tensioned_weights(grads, weights, tau, norms)

    @staticmethod
    def _tensioned_weights(grads: Tensor, weights: Tensor, tau: Tensor, norms: Tensor) -> Tensor:
        """Add the tensions to the central direction, then undo conflicts task by task."""
        direction = combine(weights, grads)
        diff_norms = (grads - direction.unsqueeze(-2)).norm(dim=-1)
        k = torch.where(
            diff_norms > 0, tau / diff_norms.clamp_min(torch.finfo(grads.dtype).tiny), 0
        )
        # v = d + sum_t k_t (g_t - d) = sum_t (c_t + k_t - c_t sum_j k_j) g_t.
        w = weights + k - weights * k.sum(dim=-1, keepdim=True)
        v = combine(w, grads)
        eye = torch.eye(grads.shape[-2], dtype=grads.dtype, device=grads.device)
        dead = (norms == 0).any(dim=-1, keepdim=True)
        for t in range(grads.shape[-2]):
            g_t = grads[..., t, :]
            dot = (g_t * v).sum(dim=-1, keepdim=True)
            sq = norms[..., t : t + 1] ** 2
            conflict = dot < 0
            s = torch.where(conflict, sq / (sq - dot).clamp_min(torch.finfo(grads.dtype).tiny), 1.0)
            w = s * w + (1.0 - s) * eye[t]
            v = s * v + (1.0 - s) * g_t
        return torch.where(dead, 0.0, w)

    def state_dict(self) -> dict[str, object]:
        return {
            "norms": None if self._norms is None else self._norms.clone(),
            "previous_sum": None if self._previous_sum is None else self._previous_sum.clone(),
            "calls": self._calls,
        }

    def load_state_dict(self, state: dict[str, object]) -> None:
        norms, previous = state["norms"], state["previous_sum"]
        self._norms = None if norms is None else torch.as_tensor(norms).clone()
        self._previous_sum = None if previous is None else torch.as_tensor(previous).clone()
        self._calls = int(state["calls"])  # type: ignore[call-overload]
        self._losses = None
