"""MGDA ``"mgda"``: the min-norm point of the convex hull of the task gradients
(Désidéri, 2012; Sener & Koltun, 2018)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.aggregators._simplex import (
    MAX_EXACT_TASKS,
    min_norm_weights,
    restrict,
    supports,
)
from mtl_paradigms.methods.base import WeightedAggregator, check_matrix, gramian


def _quadratic(w: Tensor, gram: Tensor) -> Tensor:
    """``w^T M w`` (``|sum_t w_t g_t|^2``), broadcasting leading dimensions of ``w``."""
    return (w.unsqueeze(-2) @ gram @ w.unsqueeze(-1)).squeeze(-1).squeeze(-1)


class MGDA(WeightedAggregator):
    """MGDA (Désidéri, 2012; Sener & Koltun, 2018): the min-norm convex combination.

    Finds ``w* = argmin_{w in simplex} |sum_t w_t g_t|^2`` and returns ``d = sum_t w*_t g_t``,
    the element of minimum norm of the convex hull of the task gradients. When it is non-zero,
    ``<d, g_t> >= |d|^2 > 0`` for every task, so ``-d`` decreases every loss locally; when it is
    zero the point is Pareto-stationary and MGDA stops.

    Scale: ``w*`` lies on the simplex (sums to one, like EW's ``1/T`` weights), so ``d`` is a
    convex combination of the task gradients and already on the mean scale of
    :mod:`mtl_paradigms.methods.base`; no factor is applied. It is *not* the mean in general:
    its norm is at most that of the mean gradient.

    Solver: one task gives ``w = (1,)``. Two tasks are solved exactly,
    ``w_1 = clip(<g_2 - g_1, g_2> / |g_1 - g_2|^2, 0, 1)`` (``1/2`` when ``g_1 = g_2``). Up to
    ``MAX_EXACT_TASKS`` tasks the convex quadratic ``w^T (G G^T) w`` is minimised exactly on
    the Gram matrix by solving its KKT system on every support (``2^T - 1`` small batched
    solves). More tasks use Wolfe's minimum-norm-point algorithm
    (:func:`~mtl_paradigms.methods.aggregators._simplex.min_norm_weights`, exact up to its ``1e-12``
    optimality tolerance; ``iterations`` caps its major cycles). This is the plain MGDA on the
    given gradients; the gradient normalisations and the representation-gradient upper bound
    of MGDA-UB are not applied.
    """

    name = "mgda"

    def __init__(self, iterations: int = 300) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"mgda: iterations must be a positive integer, got {iterations!r}")
        self.iterations = iterations

    def task_weights(self, grads: Tensor) -> Tensor:
        """The min-norm simplex weights ``w*``, shape ``(*batch, T)``."""
        check_matrix(grads)
        gram = gramian(grads)
        num_tasks = grads.shape[-2]
        if num_tasks == 1:
            return torch.ones(gram.shape[:-1], dtype=grads.dtype, device=grads.device)
        if num_tasks == 2:
            return _mgda_two_task_weights(gram)
        if num_tasks <= MAX_EXACT_TASKS:
            return _min_norm_by_supports(gram)
        return min_norm_weights(gram, max_iterations=self.iterations)


def _min_norm_by_supports(gram: Tensor) -> Tensor:
    """Exact min-norm simplex weights by enumerating the ``2^T - 1`` candidate supports.

    On a support ``S`` the minimiser of ``w^T M w`` subject to ``sum w = 1`` solves the KKT
    system ``M_SS w_S = lambda 1``, ``1^T w_S = 1``. The optimum has a support whose task
    gradients are affinely independent (Carathéodory), and for such a support the system is
    non-singular; so the best non-negative solution over all supports is the optimum.
    All supports are solved in one batched call; singular systems are skipped (single vertices
    are always solvable), and ties go to the smallest support (then the first in
    ``itertools.combinations`` order).
    """
    num = gram.shape[-1]
    masks = supports(num, gram)  # (S, T)
    border = masks.unsqueeze(-1).expand(*gram.shape[:-2], *masks.shape, 1)
    top = torch.cat([restrict(gram, masks), -border], dim=-1)  # (*batch, S, T, T + 1)
    bottom = torch.cat([masks, masks.new_zeros(masks.shape[0], 1)], dim=-1).unsqueeze(-2)
    system = torch.cat([top, bottom.expand(*top.shape[:-2], 1, num + 1)], dim=-2)
    rhs = torch.zeros(system.shape[:-1], dtype=gram.dtype, device=gram.device)
    rhs[..., -1] = 1.0
    solution, info = torch.linalg.solve_ex(system, rhs)
    w = solution[..., :num] * masks  # (*batch, S, T)
    val = _quadratic(w, gram.unsqueeze(-3))
    ok = (info == 0) & torch.isfinite(val) & (w >= 0).all(dim=-1)
    best = torch.where(ok, val, torch.inf).argmin(dim=-1)  # (*batch,)
    return w.gather(-2, best[..., None, None].expand(*best.shape, 1, num)).squeeze(-2)


def _mgda_two_task_weights(gram: Tensor) -> Tensor:
    """Exact min-norm weights ``(x, 1 - x)`` on the segment ``[g_2, g_1]``.

    ``|x g_1 + (1 - x) g_2|^2`` is a convex parabola in ``x`` with vertex
    ``x = (|g_2|^2 - <g_1, g_2>) / |g_1 - g_2|^2``, clipped to ``[0, 1]``.
    """
    g11, g12, g22 = gram[..., 0, 0], gram[..., 0, 1], gram[..., 1, 1]
    a = (g11 - 2 * g12 + g22).clamp_min(0.0)  # |g_1 - g_2|^2
    tiny = torch.finfo(gram.dtype).tiny
    x = torch.where(a > 0, (g22 - g12) / a.clamp_min(tiny), 0.5).clamp(0.0, 1.0)
    return torch.stack([x, 1.0 - x], dim=-1)
