"""Nash-MTL (Navon et al., 2022, "Multi-task learning as a bargaining game").

The update direction is the Nash bargaining solution between the tasks: with task gradients
``g_t`` (rows of ``G``) and Gram matrix ``M = G G^T``, the direction ``d = sum_t alpha_t g_t``
has weights ``alpha > 0`` solving ``M alpha = 1 / alpha`` (elementwise), i.e.
``alpha_t <g_t, d> = 1`` for every task. That equation is the stationarity condition of the
strictly convex function

``f(alpha) = 1/2 alpha^T M alpha - sum_t log alpha_t``  (``alpha > 0``),

so the solution is its unique minimiser whenever one exists (it does when some ``d`` has a
positive inner product with every task gradient, e.g. for linearly independent gradients).

Solver choice. The reference code (and TorchJD's port) approximates the solution by a sequence of
convex programs (a concave-convex procedure), each solved by ECOS through cvxpy on the CPU, 20 of
them by default, warm-started from the previous step's weights. Here ``f`` is minimised directly
by Newton's method in PyTorch: ``f`` is self-concordant (a convex quadratic plus a log barrier),
so Newton's method converges globally and quadratically near the solution; each iteration is one
``T x T`` linear solve, batched over leading dimensions and run on the gradients' device (no
host round trip, no extra dependency). On sampled gradient matrices (``tests/methods``) 20
iterations meet ``alpha_t <g_t, d> = 1`` to about ``1e-13`` (``1e-6`` where two gradients
nearly cancel, the rounding floor; measured up to 40 tasks); the convex-program sequence stops at a
tolerance of ``1e-3`` on that residual and, on nearly cancelling gradients, can end far from
it (``tests/methods/test_torchjd.py``, which also checks that both agree where TorchJD's
converges). cvxpy was installed and tried here: it works, but adds a CPU round trip and a
solver dependency for a problem that Newton's method solves exactly.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from mtl_paradigms.methods.base import WeightedAggregator, check_matrix, gramian

_LINE_SEARCH_STEPS = 12
"""Newton step sizes tried per iteration: ``1, 1/2, ..., 2^-11`` and the damped step."""


def nash_bargaining_weights(gram: Tensor, iterations: int = 20, tolerance: float = 1e-4) -> Tensor:
    """The weights ``alpha > 0`` with ``alpha_t (M alpha)_t = 1`` for a Gram matrix ``M``.

    ``gram`` has shape ``(*batch, T, T)``; the result ``(*batch, T)``. The problem is solved on
    the normalised Gram matrix ``C = D M D`` (``D = diag(1/|g_t|)``, cosines between the task
    gradients; Newton's method is invariant to this rescaling) in float64: ``beta`` solves
    ``C beta = 1/beta`` and ``alpha = D beta``. The start is the best point of ``f`` on the ray
    ``beta = c 1``; each iteration takes the Newton step with the step size (among ``2^-k`` and
    the damped ``1/(1 + lambda)``, ``lambda`` the Newton decrement) that lowers ``f`` the most
    while staying positive, so ``f`` never increases.

    A task whose gradient is zero gets weight ``0``. When no solution exists (a positive
    combination of the gradients vanishes, as for ``g_2 = -g_1``: no direction improves every
    task, a Pareto-stationary point), ``f`` is unbounded below and the iterates grow without
    bound. Every problem whose residual ``max_t |beta_t (C beta)_t - 1|`` is still above
    ``tolerance`` after the iterations therefore gets all-zero weights, the zero update that
    MGDA gives at a Pareto-stationary point (the reference instead keeps its previous weights).
    """
    if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 0:
        raise ValueError(f"nash_mtl: iterations must be a non-negative integer, got {iterations!r}")
    out_dtype = gram.dtype
    m = gram.to(torch.float64)
    num_tasks = m.shape[-1]
    diag = torch.diagonal(m, dim1=-2, dim2=-1).clamp_min(0.0)
    norms = diag.sqrt()
    alive = norms > 0
    inv = torch.where(alive, 1.0 / norms.clamp_min(torch.finfo(m.dtype).tiny), 0.0)
    eye = torch.eye(num_tasks, dtype=m.dtype, device=m.device)
    cos = m * inv.unsqueeze(-1) * inv.unsqueeze(-2)
    # A zero gradient is decoupled (row and column e_t): its beta is 1 and its weight 0 below.
    dead = (~alive).to(m.dtype)
    cos = cos * (1 - dead).unsqueeze(-1) * (1 - dead).unsqueeze(-2) + eye * dead.unsqueeze(-1)
    total = cos.sum(dim=(-2, -1)).clamp_min(num_tasks * 1e-12)
    beta = (num_tasks / total).sqrt().unsqueeze(-1).expand(*cos.shape[:-1]).clone()
    steps = torch.cat(
        [2.0 ** -torch.arange(_LINE_SEARCH_STEPS, dtype=m.dtype), torch.zeros(1, dtype=m.dtype)]
    ).to(m.device)
    for _ in range(iterations):
        c_beta = (cos @ beta.unsqueeze(-1)).squeeze(-1)
        grad = c_beta - 1.0 / beta
        hess = cos + torch.diag_embed(1.0 / beta**2)
        step, info = torch.linalg.solve_ex(hess, grad.unsqueeze(-1))
        # A numerically singular Hessian (only when no solution exists) leaves beta in place.
        step = torch.where((info == 0).unsqueeze(-1), step.squeeze(-1), 0.0)
        decrement = (grad * step).sum(dim=-1).clamp_min(0.0).sqrt()
        sizes = torch.cat(
            [steps.expand(*beta.shape[:-1], -1), (1.0 / (1.0 + decrement)).unsqueeze(-1)], dim=-1
        )  # (*batch, S)
        candidates = beta.unsqueeze(-2) - sizes.unsqueeze(-1) * step.unsqueeze(-2)  # (*batch, S, T)
        values = _potential(candidates, cos)
        values = torch.where((candidates > 0).all(dim=-1), values, torch.inf)
        best = values.argmin(dim=-1, keepdim=True)
        beta = candidates.gather(-2, best.unsqueeze(-1).expand(*best.shape, num_tasks)).squeeze(-2)
    residual = ((cos @ beta.unsqueeze(-1)).squeeze(-1) * beta - 1.0).abs().amax(dim=-1)
    solved = (residual <= tolerance).unsqueeze(-1)
    return torch.where(solved, beta * inv, 0.0).to(out_dtype)


def _potential(beta: Tensor, cos: Tensor) -> Tensor:
    """``f(beta) = 1/2 beta^T C beta - sum log beta`` for candidates ``(*batch, S, T)``."""
    quad = ((beta @ cos) * beta).sum(dim=-1)
    return 0.5 * quad - torch.log(beta.clamp_min(torch.finfo(beta.dtype).tiny)).sum(dim=-1)


class NashMTL(WeightedAggregator):
    """Nash-MTL (Navon et al., 2022): the Nash bargaining solution between the task gradients.

    The weights ``alpha`` solve ``alpha_t <g_t, d> = 1`` with ``d = sum_t alpha_t g_t``
    (:func:`nash_bargaining_weights`, ``iterations`` Newton steps; the sibling study's 20 solver
    iterations are the default). The solution is scale-free: ``|d|^2 = sum_t alpha_t <g_t, d> = T``
    whatever the gradients' scale. As in the reference code, ``d`` is then clipped to norm
    ``max_norm`` (the reference clips the shared parameters' gradient with
    ``clip_grad_norm_(shared, max_norm)``; ``max_norm = 0`` disables it); with the default 1 and
    ``T >= 2`` the clip is always active at the exact solution.

    Scale: the returned weights are ``clip(alpha) / T``, i.e. **1/T times the reference's**
    loss weights (the reference back-propagates ``sum_t alpha_t L_t``, the sum convention; here
    the direction is on the mean scale of :mod:`mtl_paradigms.methods.base`, like Aligned-MTL's).
    Two tasks of equal gradient norm get equal weights. The reference re-solves only every
    ``update_weights_every`` steps (default 1, used by both studies); here every call solves.
    A task whose gradient is zero gets weight 0.
    """

    name = "nash_mtl"

    def __init__(self, iterations: int = 20, max_norm: float = 1.0) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"nash_mtl: iterations must be a positive integer, got {iterations!r}")
        if not (math.isfinite(float(max_norm)) and max_norm >= 0):
            raise ValueError(f"nash_mtl: max_norm must be finite and >= 0, got {max_norm!r}")
        self.iterations = iterations
        self.max_norm = float(max_norm)

    def bargaining_weights(self, grads: Tensor) -> Tensor:
        """The unclipped reference-scale weights ``alpha``, shape ``(*batch, T)``."""
        check_matrix(grads)
        return nash_bargaining_weights(gramian(grads), self.iterations)

    def task_weights(self, grads: Tensor) -> Tensor:
        """``clip(alpha) / T``, shape ``(*batch, T)``."""
        alpha = self.bargaining_weights(grads)
        if self.max_norm > 0:
            norm = (alpha.unsqueeze(-2) @ grads).squeeze(-2).norm(dim=-1, keepdim=True)
            factor = torch.where(
                norm > self.max_norm,
                self.max_norm / norm.clamp_min(torch.finfo(norm.dtype).tiny),
                1.0,
            )
            alpha = alpha * factor
        return alpha / grads.shape[-2]
