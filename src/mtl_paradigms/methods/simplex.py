"""Batched tools for small optimisation problems over the probability simplex."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of each row ``v[..., :]`` onto the probability simplex."""
    num = v.shape[-1]
    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(dim=-1) - 1.0
    ind = torch.arange(1, num + 1, dtype=v.dtype, device=v.device)
    cond = (u - css / ind) > 0
    rho = (cond * torch.arange(num, device=v.device)).amax(dim=-1, keepdim=True)
    theta = css.gather(-1, rho) / (rho + 1).to(v.dtype)
    return (v - theta).clamp_min(0.0)


def minimize_on_simplex(
    objective: Callable[[Tensor], Tensor],
    *like: Tensor,
    iterations: int = 300,
    num_steps: int = 24,
) -> Tensor:
    """Minimise a convex ``objective(w) -> (*batch,)`` over ``w`` on the simplex, batched.

    Projected gradient descent; at each iteration every batch element takes the best of
    ``num_steps`` geometrically spaced step lengths along its normalised gradient (or stays
    put), so the objective never increases and no step size needs tuning. The gradient is
    taken with autograd. ``like[0]`` (shape ``(*batch, T, T)``) fixes batch shape and dtype.
    """
    ref = like[0]
    batch_shape, num_tasks = ref.shape[:-2], ref.shape[-1]
    w = torch.full((*batch_shape, num_tasks), 1.0 / num_tasks, dtype=ref.dtype, device=ref.device)
    steps = torch.cat(
        [torch.zeros(1, dtype=ref.dtype), 2.0 ** -torch.arange(num_steps, dtype=ref.dtype)]
    ).to(ref.device)
    with torch.enable_grad():
        for _ in range(iterations):
            w_req = w.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(w_req).sum(), w_req)
            scale = grad.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(ref.dtype).tiny)
            direction = (grad / scale).unsqueeze(-2)  # (*batch, 1, T)
            candidates = project_to_simplex(w.unsqueeze(-2) - steps.view(-1, 1) * direction)
            with torch.no_grad():
                values = objective(candidates.movedim(-2, 0)).movedim(0, -1)  # (*batch, S)
            best = values.argmin(dim=-1, keepdim=True)
            w = candidates.gather(-2, best.unsqueeze(-1).expand(*best.shape, num_tasks)).squeeze(-2)
    return w.detach()
