"""More gradient aggregators: MGDA, IMTL-G, Aligned-MTL and GradDrop.

All of them follow the interface and the scale convention of
:mod:`mtl_paradigms.methods.base`: they take per-task shared gradients of shape
``(*batch, T, D)`` and return a direction of shape ``(*batch, D)`` on the scale of the *mean*
task gradient (equal weighting gives weights ``1/T`` summing to one; so do the weights here,
where weights exist).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from mtl_paradigms.methods.base import Aggregator, WeightedAggregator, check_matrix, gramian
from mtl_paradigms.methods.simplex import (
    MAX_EXACT_TASKS,
    min_norm_weights,
    restrict,
    supports,
)


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
    (:func:`~mtl_paradigms.methods.simplex.min_norm_weights`, exact up to its ``1e-12``
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


class IMTLG(WeightedAggregator):
    """IMTL-G (Liu et al., 2021, "Towards impartial multi-task learning"), gradient part.

    Finds weights ``alpha`` with ``sum_t alpha_t = 1`` such that ``d = sum_t alpha_t g_t`` has
    the same projection onto every unit task gradient ``u_t = g_t / |g_t|``. With the rows
    ``D_t = g_1 - g_t`` and ``U_t = u_1 - u_t`` (``t = 2..T``), the closed form of the paper is
    ``alpha_{2..T} = g_1 U^T (D U^T)^{-1}`` and ``alpha_1 = 1 - sum_{t >= 2} alpha_t``.

    Scale: the weights sum to one, like EW's ``1/T`` weights, so ``d`` is already on the mean
    scale of :mod:`mtl_paradigms.methods.base` and is **not** divided by ``T``; with identical
    task gradients ``d`` equals their mean, and with two tasks of equal gradient norm the
    weights are ``(1/2, 1/2)``. (Reference code applies ``alpha`` without a factor too.)

    Degenerate cases: ``(D U^T)`` is inverted with the pseudo-inverse
    (:func:`torch.linalg.pinv`), so identical gradients give ``alpha = (1, 0, ..., 0)`` (the
    mean); a zero task gradient has ``u_t = 0``. The weights may be negative. The loss-scale
    part of IMTL (IMTL-L) is a separate weighting and is not included.
    """

    name = "imtl_g"

    def task_weights(self, grads: Tensor) -> Tensor:
        """The weights ``alpha``, shape ``(*batch, T)``, summing to one."""
        check_matrix(grads)
        num_tasks = grads.shape[-2]
        if num_tasks == 1:
            return torch.ones(grads.shape[:-1], dtype=grads.dtype, device=grads.device)
        norms = grads.norm(dim=-1, keepdim=True)
        units = torch.where(norms > 0, grads / norms.clamp_min(torch.finfo(grads.dtype).tiny), 0.0)
        diff_g = grads[..., :1, :] - grads[..., 1:, :]  # D, (*batch, T-1, D)
        diff_u = (units[..., :1, :] - units[..., 1:, :]).transpose(-1, -2)  # U^T, (*batch, D, T-1)
        rhs = grads[..., :1, :] @ diff_u  # g_1 U^T, (*batch, 1, T-1)
        rest = (rhs @ torch.linalg.pinv(diff_g @ diff_u)).squeeze(-2)  # (*batch, T-1)
        first = 1.0 - rest.sum(dim=-1, keepdim=True)
        return torch.cat([first, rest], dim=-1)


ScaleMode = Literal["min", "median", "rmse"]


class AlignedMTL(WeightedAggregator):
    """Aligned-MTL (Senushkin et al., 2023, "Independent component alignment for MTL").

    With the Gram matrix ``G G^T = V diag(lambda) V^T``, the balance transformation is
    ``B = sqrt(sigma) V diag(lambda^{-1/2}) V^T`` and the *aligned* gradients are the rows of
    ``B G``: mutually orthogonal with equal squared norms ``sigma`` (the aligned system has
    condition number one). ``sigma`` is fixed by ``scale_mode``: ``"min"`` (the paper's
    default) takes the smallest kept eigenvalue ``lambda_min``, so no aligned gradient is
    longer than the singular value ``sqrt(lambda_min)`` of ``G``; ``"median"`` takes the (lower)
    median and ``"rmse"`` the mean of the kept eigenvalues.

    Eigenvalues ``<= rtol * lambda_max`` are dropped (their directions get weight zero and
    ``lambda_min`` is the smallest kept one); ``rtol=None`` means ``100 * T * eps`` of the
    dtype. In the rank-deficient case the aligned gradients span the kept subspace and are no
    longer orthogonal, but two same-direction gradients are left unchanged.

    Scale: the direction is the **mean** of the aligned gradients (mean convention of
    :mod:`mtl_paradigms.methods.base`); the reference code sums them, a factor ``T``.
    ``task_weights`` returns ``1^T B / T``, so that ``d = sum_t w_t g_t``; these weights do
    not sum to one in general (AlignedMTL also rescales the update).
    """

    name = "aligned_mtl"

    def __init__(self, scale_mode: ScaleMode = "min", rtol: float | None = None) -> None:
        if scale_mode not in ("min", "median", "rmse"):
            raise ValueError(
                f"aligned_mtl: scale_mode must be 'min', 'median' or 'rmse', got {scale_mode!r}"
            )
        if rtol is not None and not (0.0 <= rtol < 1.0):
            raise ValueError(f"aligned_mtl: rtol must be in [0, 1) or None, got {rtol!r}")
        self.scale_mode = scale_mode
        self.rtol = rtol

    def balance_matrix(self, grads: Tensor) -> Tensor:
        """The symmetric ``(*batch, T, T)`` matrix ``B`` with aligned gradients ``B G``."""
        check_matrix(grads)
        gram = gramian(grads)
        num_tasks = grads.shape[-2]
        eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
        rtol = 100 * num_tasks * torch.finfo(grads.dtype).eps if self.rtol is None else self.rtol
        lam_max = eigvals[..., -1:]
        keep = (eigvals > rtol * lam_max) & (lam_max > 0)
        if self.scale_mode == "min":
            sigma = torch.where(keep, eigvals, torch.inf).amin(dim=-1, keepdim=True)
        elif self.scale_mode == "median":
            sigma = torch.nanmedian(
                torch.where(keep, eigvals, torch.nan), dim=-1, keepdim=True
            ).values
        else:
            count = keep.sum(dim=-1, keepdim=True).clamp_min(1)
            sigma = torch.where(keep, eigvals, 0.0).sum(dim=-1, keepdim=True) / count
        # All eigenvalues dropped (zero gradients): no direction is kept at all.
        sigma = torch.where(keep.any(dim=-1, keepdim=True), sigma, 0.0)
        tiny = torch.finfo(grads.dtype).tiny
        factor = torch.where(keep, (sigma / eigvals.clamp_min(tiny)).sqrt(), 0.0)
        return (eigvecs * factor.unsqueeze(-2)) @ eigvecs.transpose(-1, -2)

    def aligned_gradients(self, grads: Tensor) -> Tensor:
        """The aligned gradients ``B G``, shape ``(*batch, T, D)``."""
        return self.balance_matrix(grads) @ grads

    def task_weights(self, grads: Tensor) -> Tensor:
        """Weights ``w = 1^T B / T`` on the original gradients, shape ``(*batch, T)``."""
        return self.balance_matrix(grads).mean(dim=-2)


class GradDrop(Aggregator):
    """GradDrop (Chen et al., 2020, "Just pick a sign"): randomly keep one sign per coordinate.

    Per coordinate, the sign purity ``P = (1 + sum_t g_t / sum_t |g_t|) / 2`` is the
    probability of keeping the positive components; one uniform draw ``U`` per coordinate
    (shared by the tasks) keeps the positive components if ``U < P`` and the negative ones
    otherwise. With ``leak`` ``l``, each task contributes ``l g_t + (1 - l) mask_t * g_t``
    (``l = 1`` is EW). The direction is the **mean** over tasks (mean convention of
    :mod:`mtl_paradigms.methods.base`); where every task agrees in sign it is the plain mean.
    A coordinate where all gradients vanish has ``P = 1/2`` and stays zero.

    ``k`` steepens the keep function, ``P = 1/2 + k (sum_t g_t / sum_t |g_t|) / 2`` clipped to
    ``[0, 1]`` (``k = 1``, the default, is the paper's identity ``f``; the sibling study's code
    calls it ``k``). With ``p`` given, the *random* variant of that code is used instead: each
    component is kept with probability ``1 - p`` regardless of its sign. The original applies
    GradDrop to gradients at a shared *representation*, per example; here it acts on the
    per-task gradients of the shared parameters, as the other aggregators do. Draws come from
    a CPU ``torch.Generator`` seeded with ``seed`` (one draw per coordinate and batch element
    per call, so successive calls differ but a fresh instance with the same seed repeats).
    """

    name = "graddrop"

    def __init__(
        self, leak: float = 0.0, k: float = 1.0, p: float | None = None, seed: int | None = None
    ) -> None:
        if not (0.0 <= leak <= 1.0):
            raise ValueError(f"graddrop: leak must be in [0, 1], got {leak!r}")
        if not k > 0:
            raise ValueError(f"graddrop: k must be positive, got {k!r}")
        if p is not None and not (0.0 <= p < 1.0):
            raise ValueError(f"graddrop: p must be in [0, 1) or None, got {p!r}")
        self.leak = float(leak)
        self.k = float(k)
        self.p = None if p is None else float(p)
        self.seed = seed
        self._generator = torch.Generator()
        if seed is not None:
            self._generator.manual_seed(seed)

    def purity(self, grads: Tensor) -> Tensor:
        """The sign purity ``P`` per coordinate, shape ``(*batch, D)``, in ``[0, 1]``."""
        check_matrix(grads)
        total = grads.sum(dim=-2)
        abs_total = grads.abs().sum(dim=-2)
        ratio = torch.where(
            abs_total > 0, total / abs_total.clamp_min(torch.finfo(grads.dtype).tiny), 0.0
        )
        return (0.5 * (1.0 + self.k * ratio)).clamp(0.0, 1.0)

    def masks(self, grads: Tensor) -> Tensor:
        """A fresh random keep-mask of shape ``(*batch, T, D)`` (consumes generator draws)."""
        if self.p is not None:
            u = torch.rand(grads.shape, generator=self._generator, dtype=grads.dtype)
            return (u >= self.p).to(grads.device)
        p = self.purity(grads)
        u = torch.rand(p.shape, generator=self._generator, dtype=p.dtype).to(p.device)
        keep_positive = (u < p).unsqueeze(-2)
        return torch.where(grads > 0, keep_positive, ~keep_positive)

    def __call__(self, grads: Tensor) -> Tensor:
        masked = grads * self.masks(grads)
        if self.leak > 0:
            masked = self.leak * grads + (1.0 - self.leak) * masked
        return masked.mean(dim=-2)
