"""PCGrad ``"pcgrad"``: projecting conflicting gradients (Yu et al., 2020)."""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.base import WeightedAggregator, check_matrix, gramian


class PCGrad(WeightedAggregator):
    """PCGrad (Yu et al., 2020): project each task gradient off the gradients it conflicts with.

    For each task ``i`` and each other task ``j`` (in a random order, as in the paper), if
    ``<g_i', g_j> < 0`` then ``g_i' <- g_i' - <g_i', g_j> / |g_j|^2 g_j``, projecting against
    the *original* ``g_j``. The direction is the mean of the projected gradients (mean
    convention, see :mod:`mtl_paradigms.methods.base`). For two tasks the order does not matter
    and the result is deterministic; for more tasks the order is drawn from ``generator``.

    Computation: every ``g_i'`` stays a combination ``sum_k C_ik g_k`` of the original
    gradients, and ``<g_i', g_j> = (C G)_ij`` with ``G`` the ``T x T`` Gram matrix. So the
    projections run on ``C`` (all tasks ``i`` in step, ``T - 1`` steps of ``T x T`` work,
    in float64, on the gradients' device without a host sync), and the direction is one
    combination ``sum_j w_j g_j`` with ``w = mean_i C_i``: one pass over the ``T x D``
    gradients for ``G`` and one for the direction, instead of ``T (T - 1)`` passes. ``w`` are
    the weights the trainer logs.
    """

    name = "pcgrad"

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)

    def projection_orders(self, num_tasks: int) -> list[list[int]]:
        """For each task ``i``, the other tasks in the order ``g_i`` is projected against them
        (a fresh random order per task and call when there are more than two tasks)."""
        orders = []
        for i in range(num_tasks):
            others = [j for j in range(num_tasks) if j != i]
            if len(others) > 1:
                perm = torch.randperm(len(others), generator=self._generator).tolist()
                others = [others[k] for k in perm]
            orders.append(others)
        return orders

    def task_weights(self, grads: Tensor) -> Tensor:
        check_matrix(grads)
        gram = gramian(grads).double()
        num_tasks = grads.shape[-2]
        coef = torch.eye(num_tasks, dtype=gram.dtype, device=gram.device).expand_as(gram).clone()
        if num_tasks > 1:
            # drawn on the CPU; one copy that does not wait for the GPU (no host sync)
            orders = torch.tensor(self.projection_orders(num_tasks))
            orders = orders.to(gram.device, non_blocking=True)
            sq_norms = torch.diagonal(gram, dim1=-2, dim2=-1)  # (*batch, T)
            rows = torch.arange(num_tasks, device=gram.device)
            tiny = torch.finfo(gram.dtype).tiny
            for step in range(num_tasks - 1):
                j = orders[:, step]  # row i is projected against task j[i]
                dot = (coef * gram[..., :, j].transpose(-1, -2)).sum(-1)  # <g_i', g_j[i]>
                norm_j = sq_norms[..., j]
                c = torch.where((dot < 0) & (norm_j > 0), dot / norm_j.clamp_min(tiny), 0.0)
                coef[..., rows, j] -= c
        return coef.mean(dim=-2).to(grads.dtype)
