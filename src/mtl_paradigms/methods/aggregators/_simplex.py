"""Batched tools for small optimisation problems over the probability simplex."""

from __future__ import annotations

import functools
import itertools
from collections.abc import Callable

import numpy as np
import torch
from torch import Tensor

MAX_EXACT_TASKS = 8
"""Exact solvers enumerate the supports (``2^T - 1`` subsets, 255 at eight tasks) up to here."""


@functools.cache
def _supports_cpu(num: int, min_size: int) -> Tensor:
    rows = [
        [1.0 if t in subset else 0.0 for t in range(num)]
        for size in range(max(min_size, 1), num + 1)
        for subset in itertools.combinations(range(num), size)
    ]
    return torch.tensor(rows, dtype=torch.float64).reshape(-1, num)


def supports(num: int, like: Tensor, min_size: int = 1) -> Tensor:
    """Every subset of ``range(num)`` with at least ``min_size`` elements, as ``(S, num)`` 0/1
    rows in ``like``'s dtype and device (by size, then in ``itertools.combinations`` order)."""
    if not 1 <= num <= MAX_EXACT_TASKS:
        raise ValueError(f"supports are enumerated for 1..{MAX_EXACT_TASKS} tasks, got {num}")
    return _supports_cpu(num, min_size).to(dtype=like.dtype, device=like.device)


def restrict(matrix: Tensor, masks: Tensor) -> Tensor:
    """``(*batch, S, T, T)``: ``matrix`` (``(*batch, T, T)``) restricted to each support of
    ``masks`` (``(S, T)``), with the identity on the coordinates outside it, so that a linear
    solve on it solves the support's block and returns zeros outside (for zero right-hand sides
    there)."""
    eye = torch.eye(matrix.shape[-1], dtype=matrix.dtype, device=matrix.device)
    inside = masks.unsqueeze(-1) * masks.unsqueeze(-2)  # (S, T, T)
    return matrix.unsqueeze(-3) * inside + eye * (1 - masks).unsqueeze(-1)


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

    Each iteration evaluates two families of candidates and keeps, per batch element, the best
    one (or stays put), so the objective never increases and no step size needs tuning:

    * projected-gradient steps ``proj(w - s * grad / |grad|_inf)`` for ``num_steps``
      geometrically spaced ``s`` (good in the interior of the simplex);
    * Frank-Wolfe steps ``w + s * (e_j - w)`` towards the vertex ``e_j`` with the smallest
      gradient coordinate (reaches optima on faces and vertices, where projected steps crawl
      when the problem is ill-conditioned).

    The gradient is taken with autograd. ``like[0]`` (shape ``(*batch, T, T)``) fixes the batch
    shape and dtype.
    """
    ref = like[0]
    batch_shape, num_tasks = ref.shape[:-2], ref.shape[-1]
    w = torch.full((*batch_shape, num_tasks), 1.0 / num_tasks, dtype=ref.dtype, device=ref.device)
    steps = torch.cat(
        [torch.zeros(1, dtype=ref.dtype), 2.0 ** -torch.arange(num_steps, dtype=ref.dtype)]
    ).to(ref.device)
    eye = torch.eye(num_tasks, dtype=ref.dtype, device=ref.device)
    with torch.enable_grad():
        for _ in range(iterations):
            w_req = w.detach().requires_grad_(True)
            (grad,) = torch.autograd.grad(objective(w_req).sum(), w_req)
            scale = grad.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(ref.dtype).tiny)
            direction = (grad / scale).unsqueeze(-2)  # (*batch, 1, T)
            projected = project_to_simplex(w.unsqueeze(-2) - steps.view(-1, 1) * direction)
            vertex = eye[grad.argmin(dim=-1)].unsqueeze(-2)  # (*batch, 1, T)
            toward = w.unsqueeze(-2) + steps.view(-1, 1) * (vertex - w.unsqueeze(-2))
            candidates = torch.cat([projected, toward], dim=-2)  # (*batch, 2S, T)
            with torch.no_grad():
                values = objective(candidates.movedim(-2, 0)).movedim(0, -1)  # (*batch, 2S)
            best = values.argmin(dim=-1, keepdim=True)
            w = candidates.gather(-2, best.unsqueeze(-1).expand(*best.shape, num_tasks)).squeeze(-2)
    return w.detach()


def min_norm_weights(gram: Tensor, max_iterations: int = 300) -> Tensor:
    """Simplex weights of the min-norm point of the convex hull of ``T`` vectors, exactly.

    Wolfe's (1976) minimum-norm-point algorithm on the Gram matrix ``G`` (``(*batch, T, T)``):
    the current point is ``x = sum_t w_t g_t`` (``|x|^2 = w^T G w``, ``<x, g_t> = (G w)_t``).
    A major cycle adds the vector most opposed to ``x`` to the active set ``S``, unless
    ``|x|^2 - min_t <x, g_t> <= 1e-12 max_t G_tt``, the first-order optimality condition (then
    ``x`` is optimal); minor cycles move ``x`` to the affine minimiser of ``S`` (a bordered
    ``|S| + 1`` solve), dropping the vectors whose weight that would make negative. It ends in
    finitely many steps (``max_iterations`` major cycles at most, a guard). Runs in float64
    NumPy on the CPU, one host transfer of the ``T x T`` matrix; used for MGDA beyond
    ``MAX_EXACT_TASKS`` tasks, where enumerating supports would be ``2^T`` solves.
    """
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be at least 1, got {max_iterations}")
    num = gram.shape[-1]
    g = gram.detach().to("cpu", torch.float64).numpy().reshape(-1, num, num)
    out = np.stack([min_norm_point(m, max_iterations) for m in g]).reshape(gram.shape[:-1])
    return torch.from_numpy(out).to(device=gram.device, dtype=gram.dtype)


def _affine_minimiser(gram: np.ndarray, active: list[int]) -> np.ndarray:
    """Coefficients (summing to one) of the min-norm point of the affine hull of ``active``."""
    k = len(active)
    system = np.zeros((k + 1, k + 1))
    system[:k, :k] = gram[np.ix_(active, active)]
    system[:k, k] = 1.0
    system[k, :k] = 1.0
    rhs = np.zeros(k + 1)
    rhs[k] = 1.0
    solution = np.linalg.lstsq(system, rhs, rcond=None)[0]
    return solution[:k]


def min_norm_point(gram: np.ndarray, max_iterations: int = 300) -> np.ndarray:
    """Wolfe's algorithm (see :func:`min_norm_weights`) on one float64 ``(T, T)`` Gram matrix:
    the simplex weights of the min-norm point of the hull."""
    num = gram.shape[0]
    diag = np.diag(gram)
    tol = 1e-12 * max(float(diag.max()), np.finfo(np.float64).tiny)
    first = int(np.argmin(diag))
    active = [first]
    w = np.zeros(num)
    w[first] = 1.0
    for _ in range(max_iterations):
        gw = gram @ w
        t = int(np.argmin(gw))
        if float(w @ gw) - gw[t] <= tol or t in active:
            break
        active.append(t)
        for _ in range(len(active) + 1):  # minor cycles: each drops at least one vector
            v = _affine_minimiser(gram, active)
            current = w[active]
            if np.all(v > 0):
                w = np.zeros(num)
                w[active] = v
                break
            negative = v <= 0
            steps = current[negative] / (current[negative] - v[negative])
            theta = float(steps.min())
            moved = current + theta * (v - current)
            moved[np.flatnonzero(negative)[int(np.argmin(steps))]] = 0.0
            keep = moved > 0
            active = [s for s, k in zip(active, keep, strict=True) if k]
            w = np.zeros(num)
            w[active] = moved[keep]
            w /= w.sum()
    return w
