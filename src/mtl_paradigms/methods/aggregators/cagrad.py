"""CAGrad ``"cagrad"``: conflict-averse gradient descent (Liu et al., 2021), with its exact
solvers of the dual problem on the simplex."""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from mtl_paradigms.methods.aggregators._simplex import (
    MAX_EXACT_TASKS,
    min_norm_point,
    minimize_on_simplex,
    restrict,
    supports,
)
from mtl_paradigms.methods.base import Aggregator, check_matrix, combine, gramian

Rescale = Literal["none", "1+c", "1+c^2"]


class CAGrad(Aggregator):
    """CAGrad (Liu et al., 2021): conflict-averse gradient descent.

    With ``g0`` the mean task gradient and ``phi = c^2 |g0|^2``, find the simplex weights ``w``
    minimising ``g_w . g0 + sqrt(phi) |g_w|`` (``g_w = sum_t w_t g_t``), and move along
    ``d = g0 + sqrt(phi) / |g_w| * g_w``. With ``c = 0`` this is the mean gradient (EW).

    ``rescale`` divides ``d`` by ``1 + c`` (the CAGrad toy's choice, the default here), by
    ``1 + c^2`` (the CAGrad MTL code's default), or not at all. The inner problem is convex;
    for two tasks it is solved in closed form; up to ``MAX_EXACT_TASKS`` tasks exactly on every
    support at once (:func:`_cagrad_by_supports`, a few batched kernels and one host sync to
    check optimality); beyond that, or where that check fails (degenerate gradients), by
    :func:`minimize_on_simplex` on the CPU in float64 (a ``T x T`` problem: on a GPU its
    hundreds of tiny steps would each be a kernel launch).
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
        if num_tasks <= MAX_EXACT_TASKS:
            w, optimal = _cagrad_by_supports(gram, b, k)
        else:
            w, optimal = _cagrad_active_set(gram, b, k)
        if bool(optimal.all()):
            return w
        # Degenerate inputs: the iterative solver, keeping whichever point is better.
        fallback = _cagrad_iterative(gram, b, k)
        better = _cagrad_objective(fallback, gram, b, k) < _cagrad_objective(w, gram, b, k)
        return torch.where((better & ~optimal).unsqueeze(-1), fallback, w)

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


def _cagrad_iterative(gram: Tensor, b: Tensor, k: Tensor) -> Tensor:
    """:func:`minimize_on_simplex` on the CPU in float64; the weights on ``gram``'s device."""
    g, bb, kk = (x.detach().to("cpu", torch.float64) for x in (gram, b, k))
    w = minimize_on_simplex(lambda w: _cagrad_objective(w, g, bb, kk), g, bb, kk)
    return w.to(device=gram.device, dtype=gram.dtype)


def _cagrad_certificate(w: Tensor, gram: Tensor, b: Tensor, k: Tensor) -> Tensor:
    """Whether each ``w`` (``(*batch, T)``, float64, problems scaled as in
    :func:`_cagrad_by_supports`) is certified optimal: on the simplex, and meeting the
    first-order optimality condition of a convex function there, ``min_t grad_t >= w^T grad``
    with ``grad = b + k G w / r`` (``r = sqrt(w^T G w)``; ``grad = b`` for ``k = 0``), to ``1e-8``
    of the problem's scale. It fails where ``r = 0`` with ``k > 0`` (zero in the hull)."""
    gw = (gram @ w.unsqueeze(-1)).squeeze(-1)
    r = (w * gw).sum(-1, keepdim=True).clamp_min(0.0).sqrt()
    grad = b + torch.where((k == 0).unsqueeze(-1), 0.0, k.unsqueeze(-1) * gw / r)
    size = b.abs().amax(-1) + k
    optimal = grad.amin(-1) >= (w * grad).sum(-1) - 1e-8 * (1.0 + size)
    optimal &= torch.isfinite(grad).all(-1)
    return optimal & (w >= 0).all(-1) & ((w.sum(-1) - 1.0).abs() <= 1e-9)


def _cagrad_certified(w: np.ndarray, gram: np.ndarray, b: np.ndarray, k: float) -> bool:
    """:func:`_cagrad_certificate` for one problem in NumPy (the active-set search)."""
    t = torch.from_numpy
    return bool(_cagrad_certificate(t(w), t(gram), t(b), torch.tensor(k, dtype=torch.float64)))


def _cagrad_face(
    gram: np.ndarray, b: np.ndarray, k: float, face: np.ndarray
) -> tuple[np.ndarray, float] | None:
    """The stationary point of ``F`` on the affine hull of ``face`` (indices) and its ``r / k``,
    by the closed form of :func:`_cagrad_by_supports`; ``None`` where it does not exist."""
    try:
        x = np.linalg.solve(gram[np.ix_(face, face)], np.stack([np.ones(len(face)), b[face]], 1))
    except np.linalg.LinAlgError:
        return None
    alpha, beta = x[:, 0].sum(), x[:, 1].sum()
    disc = beta * beta - alpha * (b[face] @ x[:, 1] - k * k)
    if not (alpha > 0 and disc > 0 and np.all(np.isfinite(x))):
        return None
    root = np.sqrt(disc)
    w = np.zeros(len(b))
    w[face] = ((beta + root) / alpha * x[:, 0] - x[:, 1]) / root
    return w, 1.0 / root


def _cagrad_active_set_one(
    gram: np.ndarray, b: np.ndarray, k: float, max_iterations: int = 100
) -> tuple[np.ndarray, bool]:
    """:func:`_cagrad_active_set` for one problem (scaled: mean diagonal one)."""
    num = len(b)
    if k == 0:
        w = np.eye(num)[int(np.argmin(b))]
        return w, True
    q = max(float(b.mean()), 0.0)  # |g0|^2 = u^T G u, since b = G u with u = 1/T
    lo, hi = 0.0, np.sqrt(max(float(np.diag(gram).max()), 0.0)) / k
    tau = min(np.sqrt(q) / k, hi)
    ones = np.ones(num)
    w = np.full(num, 1.0 / num)
    for _ in range(max_iterations):
        shifted = gram + tau * (np.outer(b, ones) + np.outer(ones, b)) + tau * tau * q
        w = min_norm_point(shifted)
        if np.sqrt(max(float(w @ gram @ w), 0.0)) > k * tau:
            lo = max(lo, tau)
        else:
            hi = min(hi, tau)
        face = _cagrad_face(gram, b, k, np.flatnonzero(w > 0))
        if face is not None:
            w_face, tau_face = face
            if np.all(w_face >= -1e-12):
                w_face = np.clip(w_face, 0.0, None)
                w_face /= w_face.sum()
                if _cagrad_certified(w_face, gram, b, k):
                    return w_face, True
            if lo < tau_face < hi:
                tau = tau_face
                continue
        if hi - lo <= 1e-12 * hi:
            break
        tau = 0.5 * (lo + hi)
    return w, _cagrad_certified(w, gram, b, k)


def _cagrad_active_set(gram: Tensor, b: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Exact CAGrad weights for any number of tasks, and whether each is certified optimal.

    At the optimum ``w*`` of ``F(w) = b^T w + k sqrt(w^T G w)`` with ``r* = sqrt(w*^T G w*) > 0``,
    the optimality conditions are those of the min-norm point of the hull of the shifted
    gradients ``g_t + tau g0`` with ``tau = r* / k`` (``b = G u``, ``u = 1/T``). For a trial
    ``tau``, Wolfe's algorithm
    (:func:`~mtl_paradigms.methods.aggregators._simplex.min_norm_point`, on the shifted Gram
    matrix) finds that point's face exactly; the closed form of
    :func:`_cagrad_by_supports` on that face gives the face's stationary point and its own
    ``tau``. A non-negative, certified stationary point is the answer; otherwise the search
    moves to the face's ``tau``. ``sqrt(w(tau)^T G w(tau)) / tau`` decreases in ``tau``, so
    each trial also narrows a bracket on ``tau*``, and a face ``tau`` outside it is replaced by
    bisection: the search cannot cycle. Runs in NumPy float64 on the CPU (one transfer of the
    ``T x T`` matrix); the certificate is :func:`_cagrad_by_supports`'.
    """
    num = gram.shape[-1]
    g = gram.detach().to("cpu", torch.float64).reshape(-1, num, num)
    scale = torch.diagonal(g, dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(torch.float64).tiny)
    g = (g / scale[:, None, None]).numpy()
    bb = (b.detach().to("cpu", torch.float64).reshape(-1, num) / scale[:, None]).numpy()
    kk = (k.detach().to("cpu", torch.float64).reshape(-1) / scale.sqrt()).numpy()
    results = [_cagrad_active_set_one(g[i], bb[i], float(kk[i])) for i in range(len(g))]
    w = torch.from_numpy(np.stack([r[0] for r in results])).reshape(b.shape)
    optimal = torch.tensor([r[1] for r in results], device=gram.device).reshape(b.shape[:-1])
    return w.to(device=gram.device, dtype=gram.dtype), optimal


def _cagrad_by_supports(gram: Tensor, b: Tensor, k: Tensor) -> tuple[Tensor, Tensor]:
    """Exact CAGrad weights by enumerating supports, and whether each is certified optimal.

    Minimise ``F(w) = b^T w + k sqrt(w^T G w)`` on the simplex (``G`` the Gram matrix, ``k > 0``).
    On a face ``S`` with ``G_SS`` invertible a stationary point has ``b + k G w / r = mu 1``
    (``r = sqrt(w^T G w)``), so ``w = (r / k) G^-1 (mu 1 - b)``; ``w^T G w = r^2`` gives
    ``(mu 1 - b)^T G^-1 (mu 1 - b) = k^2``, a quadratic ``alpha mu^2 - 2 beta mu + gamma - k^2``
    with ``alpha = 1^T G^-1 1``, ``beta = 1^T G^-1 b``, ``gamma = b^T G^-1 b``, and
    ``1^T w = 1`` with ``r > 0`` selects the root with ``alpha mu - beta = sqrt(disc)``, so
    ``w = G^-1 (mu 1 - b) / sqrt(disc)``. Each face's candidate that is non-negative, and
    every vertex, is evaluated; the best is returned. Problems are scaled so the mean
    diagonal of ``G`` is one (``F`` scales uniformly; the minimiser does not move).

    The certificate is the first-order optimality condition of a convex function on the
    simplex, ``min_t grad_t >= w^T grad`` with ``grad = b + k G w / r``, to ``1e-8`` of the
    problem's scale. It fails for degenerate inputs (``r = 0``: zero in the hull of the task
    gradients; linearly dependent gradients on the optimal face), which the caller hands to
    the iterative solver. ``k = 0`` (``c = 0``) returns the best vertex, certified.
    """
    dtype = gram.dtype
    g = gram.to(torch.float64)
    scale = torch.diagonal(g, dim1=-2, dim2=-1).mean(-1).clamp_min(torch.finfo(torch.float64).tiny)
    g = g / scale[..., None, None]
    bb = b.to(torch.float64) / scale[..., None]
    kk = k.to(torch.float64) / scale.sqrt()
    num = g.shape[-1]
    # Faces with at least two tasks: one batched solve for G^-1 1 and G^-1 b on each.
    masks = supports(num, g, min_size=2)  # (S, T)
    rhs = torch.stack([masks.expand(*bb.shape[:-1], *masks.shape), bb.unsqueeze(-2) * masks], -1)
    x, info = torch.linalg.solve_ex(restrict(g, masks), rhs)  # (*batch, S, T, 2)
    u, v = x[..., 0] * masks, x[..., 1] * masks
    alpha, beta = u.sum(-1), v.sum(-1)
    gamma = (bb.unsqueeze(-2) * v).sum(-1)
    kk_s = kk.unsqueeze(-1)
    disc = beta * beta - alpha * (gamma - kk_s * kk_s)
    root = disc.clamp_min(0.0).sqrt()
    mu = (beta + root) / alpha
    w_faces = (mu.unsqueeze(-1) * u - v) / root.unsqueeze(-1)
    ok = (info == 0) & (disc > 0) & (alpha > 0) & torch.isfinite(w_faces).all(-1)
    ok &= (w_faces >= -1e-12).all(-1)
    w_faces = w_faces.clamp_min(0.0)
    w_faces = w_faces / w_faces.sum(-1, keepdim=True)
    eye = torch.eye(num, dtype=torch.float64, device=g.device)
    candidates = torch.cat([eye.expand(*bb.shape[:-1], num, num), w_faces], dim=-2)
    valid = torch.cat([torch.ones_like(ok[..., :1]).expand(*ok.shape[:-1], num), ok], dim=-1)
    values = _cagrad_objective(candidates.movedim(-2, 0), g, bb, kk).movedim(0, -1)
    values = torch.where(valid & torch.isfinite(values), values, torch.inf)
    best = values.argmin(dim=-1)
    w = candidates.gather(-2, best[..., None, None].expand(*best.shape, 1, num)).squeeze(-2)
    return w.to(dtype), _cagrad_certificate(w, g, bb, kk)


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
