"""EDM ``"edm"`` (and the central direction CDTT builds on): the equiangular direction.

Both are used by Gama & Grassi's "Uniform loss vs. specialized optimization" study, whose code
follows the central-direction code of the task-tensioner authors:

* **EDM** (Katrutsa et al., 2020, "Follow the bisector: a simple method for multi-objective
  optimization", arXiv 2007.06937): MGDA's min-norm point of the convex hull of the *normalised*
  task gradients, rescaled so that its weights on the original gradients sum to one.
* **CDTT** (central direction + task tensioners; Tiemink et al., 2022, "Leveraging convergence
  behavior to balance conflicting tasks in multi-task learning", arXiv 2204.06698): EDM's
  direction pulled towards each task gradient by a "tension" that grows when the task's gradient
  norms grew over a sliding window and when its loss is large.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mtl_paradigms.methods.aggregators.mgda import MGDA
from mtl_paradigms.methods.base import WeightedAggregator, check_matrix


def _edm_weights(grads: Tensor, iterations: int) -> tuple[Tensor, Tensor]:
    """EDM's weights on the original gradients and the task gradient norms, both ``(*batch, T)``.

    Problems with a zero task gradient get all-zero weights (as in the study's code, which then
    leaves the shared parameters without an update).
    """
    norms = grads.norm(dim=-1)
    alive = (norms > 0).all(dim=-1, keepdim=True)
    safe = torch.where(norms > 0, norms, 1.0)
    units = grads / safe.unsqueeze(-1)
    lam = MGDA(iterations).task_weights(units)
    scaled = lam / safe
    weights = scaled / scaled.sum(dim=-1, keepdim=True).clamp_min(torch.finfo(grads.dtype).tiny)
    return torch.where(alive, weights, 0.0), norms


class EDM(WeightedAggregator):
    """EDM (Katrutsa et al., 2020): the equiangular direction of the task gradients.

    With unit gradients ``u_t = g_t / |g_t|`` and ``lam`` MGDA's min-norm simplex weights for
    them (:class:`~mtl_paradigms.methods.aggregators.MGDA`, exact up to 8 tasks, ``iterations``
    solver steps beyond), the direction is ``gamma sum_t lam_t u_t`` with
    ``gamma = 1 / sum_t (lam_t / |g_t|)``: its weights on the original gradients,
    ``w_t = gamma lam_t / |g_t|``, sum to one. When the min-norm point lies inside the hull the
    direction has the same inner product with every unit gradient (equal angles: the
    "bisector"); with two tasks of equal gradient norm the weights are ``(1/2, 1/2)``.

    Scale: the weights sum to one, as in the study's code, so the direction is a convex
    combination of the task gradients, on the mean scale of :mod:`mtl_paradigms.methods.base`
    (factor 1 relative to the reference for the shared parameters). The study's code finds
    ``lam`` with Frank-Wolfe (MGDA's reference solver, tolerance ``1e-5``); here it is exact.
    A zero task gradient gives all-zero weights (no shared update), as in the study's code.
    """

    name = "edm"

    def __init__(self, iterations: int = 300) -> None:
        if isinstance(iterations, bool) or not isinstance(iterations, int) or iterations < 1:
            raise ValueError(f"edm: iterations must be a positive integer, got {iterations!r}")
        self.iterations = iterations

    def task_weights(self, grads: Tensor) -> Tensor:
        """The weights ``gamma lam_t / |g_t|``, shape ``(*batch, T)``, summing to one."""
        check_matrix(grads)
        return _edm_weights(grads, self.iterations)[0]
