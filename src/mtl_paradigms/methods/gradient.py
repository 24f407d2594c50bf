"""Gradient methods: aggregators of the per-task gradients of the shared parameters."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Aggregator, check_matrix, combine, gramian
from mtl_paradigms.methods.simplex import minimize_on_simplex


class PCGrad(Aggregator):
    """PCGrad (Yu et al., 2020): project each task gradient off the gradients it conflicts with.

    For each task ``i`` and each other task ``j`` (in a random order, as in the paper), if
    ``<g_i', g_j> < 0`` then ``g_i' <- g_i' - <g_i', g_j> / |g_j|^2 g_j``, projecting against
    the *original* ``g_j``. The direction is the mean of the projected gradients (mean
    convention, see :mod:`mtl_paradigms.methods.base`). For two tasks the order does not matter
    and the result is deterministic; for more tasks the order is drawn from ``generator``.
    """

    name = "pcgrad"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)

    def __call__(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        num_tasks = grads.shape[-2]
        sq_norms = (grads * grads).sum(dim=-1)  # (*batch, T)
        projected = []
        for i in range(num_tasks):
            g_i = grads[..., i, :]
            others = [j for j in range(num_tasks) if j != i]
            if len(others) > 1:
                order = torch.randperm(len(others), generator=self._generator).tolist()
                others = [others[k] for k in order]
            for j in others:
                g_j = grads[..., j, :]
                dot = (g_i * g_j).sum(dim=-1, keepdim=True)
                norm_j = sq_norms[..., j : j + 1]
                coef = torch.where(
                    (dot < 0) & (norm_j > 0),
                    dot / norm_j.clamp_min(torch.finfo(grads.dtype).tiny),
                    0.0,
                )
                g_i = g_i - coef * g_j
            projected.append(g_i)
        return torch.stack(projected, dim=-2).mean(dim=-2)


Rescale = Literal["none", "1+c", "1+c^2"]


class CAGrad(Aggregator):
    """CAGrad (Liu et al., 2021): conflict-averse gradient descent.

    With ``g0`` the mean task gradient and ``phi = c^2 |g0|^2``, find the simplex weights ``w``
    minimising ``g_w . g0 + sqrt(phi) |g_w|`` (``g_w = sum_t w_t g_t``), and move along
    ``d = g0 + sqrt(phi) / |g_w| * g_w``. With ``c = 0`` this is the mean gradient (EW).

    ``rescale`` divides ``d`` by ``1 + c`` (the CAGrad toy's choice, the default here), by
    ``1 + c^2`` (the CAGrad MTL code's default), or not at all. The inner problem is convex;
    for two tasks it is solved in closed form, otherwise by projected gradient descent on
    the simplex (:func:`minimize_on_simplex`).
    """

    name = "cagrad"

    def __init__(self, c: float = 0.5, rescale: Rescale = "1+c") -> None:
        if c < 0:
            raise ValueError(f"cagrad: c must be non-negative, got {c}")
        if rescale not in ("none", "1+c", "1+c^2"):
            raise ValueError(f"cagrad: rescale must be 'none', '1+c' or '1+c^2', got {rescale!r}")
        self.c = float(c)
        self.rescale = rescale

    def task_weights(self, grads: Tensor) -> Tensor:
        """The simplex weights ``w`` of the inner problem, shape ``(*batch, T)``."""
        check_matrix(grads)
        gram = gramian(grads)
        num_tasks = grads.shape[-2]
        b = gram.mean(dim=-1)  # <g_t, g0>
        g0_sq = b.mean(dim=-1).clamp_min(0.0)  # |g0|^2
        k = self.c * g0_sq.sqrt()
        if num_tasks == 1:
            return torch.ones_like(b)
        if num_tasks == 2:
            return _cagrad_two_task_weights(gram, b, k)
        return minimize_on_simplex(lambda w: _cagrad_objective(w, gram, b, k), gram, b, k)

    def __call__(self, grads: Tensor) -> Tensor:
        return self.aggregate(grads)[0]

    def aggregate(self, grads: Tensor) -> tuple[Tensor, Tensor]:
        """The direction and its effective weights ``(1/T + lam w_t) / rescale``."""
        w = self.task_weights(grads)
        num_tasks = grads.shape[-2]
        g_w = (w.unsqueeze(-1) * grads).sum(dim=-2)
        g0_norm = grads.mean(dim=-2).norm(dim=-1, keepdim=True)
        gw_norm = g_w.norm(dim=-1, keepdim=True)
        lam = torch.where(
            gw_norm > 0, self.c * g0_norm / gw_norm.clamp_min(torch.finfo(grads.dtype).tiny), 0.0
        )
        weights = 1.0 / num_tasks + lam * w
        if self.rescale == "1+c":
            weights = weights / (1.0 + self.c)
        elif self.rescale == "1+c^2":
            weights = weights / (1.0 + self.c**2)
        return combine(weights, grads), weights


def _cagrad_objective(w: Tensor, gram: Tensor, b: Tensor, k: Tensor) -> Tensor:
    quad = (w.unsqueeze(-2) @ gram @ w.unsqueeze(-1)).squeeze(-1).squeeze(-1).clamp_min(0.0)
    return (w * b).sum(-1) + k * quad.sqrt()


def _cagrad_two_task_weights(gram: Tensor, b: Tensor, k: Tensor) -> Tensor:
    """Exact minimiser over ``w = (x, 1 - x)``, ``x in [0, 1]``, for two tasks.

    With ``a = g1 - g2``: ``F(x) = s x + const + k sqrt(q(x))``, ``s = <a, g0>``,
    ``q(x) = A x^2 + 2 B x + C`` (``A = |a|^2, B = <a, g2>, C = |g2|^2``). ``F`` is convex; its
    stationary point satisfies ``u = A x + B = -sign(s) sqrt(s^2 D / (A k^2 - s^2))`` with
    ``D = A C - B^2 >= 0`` when ``A k^2 > s^2``; otherwise ``F`` is monotone with the sign of
    ``s`` and the minimum lies at an end. The stationary point is clipped to ``[0, 1]``.
    """
    g11, g12, g22 = gram[..., 0, 0], gram[..., 0, 1], gram[..., 1, 1]
    s = b[..., 0] - b[..., 1]
    A = (g11 - 2 * g12 + g22).clamp_min(0.0)
    B = g12 - g22
    C = g22
    D = (A * C - B * B).clamp_min(0.0)
    denom = A * k * k - s * s
    tiny = torch.finfo(gram.dtype).tiny
    interior = (denom > 0) & (A > 0)
    u = -torch.sign(s) * torch.sqrt((s * s * D) / denom.clamp_min(tiny))
    x_interior = (u - B) / A.clamp_min(tiny)
    x_end = torch.where(s > 0, 0.0, 1.0).to(gram.dtype)
    x = torch.where(interior, x_interior, x_end)
    # Degenerate case g1 == g2: every x gives the same direction; take the midpoint.
    x = torch.where(A > 0, x, torch.full_like(x, 0.5)).clamp(0.0, 1.0)
    return torch.stack([x, 1.0 - x], dim=-1)
