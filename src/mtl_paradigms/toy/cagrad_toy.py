"""The two-task toy problem of CAGrad (Liu et al., 2021), as re-examined by Elich et al. (2024).

Conventions
-----------
* A point is ``x = (x1, x2)``; every function takes a tensor of shape ``(..., 2)`` (any leading
  batch shape, float64 by default) and is vectorised over the leading dimensions.
* :func:`task_losses` returns ``(..., 2)`` = ``(f1, f2)``; :func:`average_loss` returns ``(...)``,
  the mean ``(f1 + f2) / 2`` whose global minimiser is the target of the toy.
* :func:`task_gradients` returns the per-task gradient matrix ``(..., T=2, D=2)``: row ``t`` is
  the gradient of ``f_t``. It is written by hand (no autograd) and follows autograd's
  conventions at the kinks: ``max(a, b)`` passes the gradient of ``a`` only where ``a > b``
  strictly, and ``d|u|/du = sign(u)`` (0 at 0).
* Iteration ``k`` means the point after ``k`` updates; iteration 0 is the start point.
  A run *reaches the global minimum* at the first iteration ``k`` with
  ``||x_k - x*||_2 <= tolerance`` (``x*`` from :func:`global_minimizer`); ``-1`` if it never does
  within the budget. This first-hit definition is what Tables 1/A3 count. A run that passes
  through the ball and leaves it again (large learning rates) still counts as having reached
  it; ``ToyResult.settled`` (first iteration from which the run stays inside until the end)
  is recorded beside it to expose such runs.
* Methods are the shared aggregators of :mod:`mtl_paradigms.methods` (mean-of-tasks scale: EW
  moves along the gradient of the average loss, CAGrad divides by ``1 + c`` as in the toy's
  original code).

Differences from the original CAGrad toy code: float64 instead of float32; CAGrad's inner
problem is solved exactly instead of by ``scipy.optimize.minimize_scalar``, and without the
``1e-4`` added inside the norms there; the minimiser is computed (``x2* = -8.35511``; the
CAGrad code and the spec quote ``-8.3552``).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mtl_paradigms.analysis.claims import Claim
from mtl_paradigms.io import atomic_write
from mtl_paradigms.methods import METHODS, Aggregator, make_method
from mtl_paradigms.settings import SettingsError, from_mapping

log = logging.getLogger(__name__)

EPS = 5e-6
"""Lower clamp of ``|.|`` inside the logarithms of the toy (``LOWER`` in the CAGrad code)."""

DTYPE = torch.float64

OPTIMIZERS = ("gd", "adam")
"""Optimizers the toy supports, in the paper's table order."""

TOY_METHODS = ("ew", "pcgrad", "cagrad")
"""Methods in the paper's table order (any registered aggregator may also be run)."""

DISPLAY_NAMES = {"gd": "GD", "adam": "Adam", "ew": "EW", "pcgrad": "PCGrad", "cagrad": "CAGrad"}

NOT_REACHED = "–"
"""Table cell for a setting where some start point never reached the minimum."""

# Per-task constants of the closed forms below (task axis last).
_U_OFFSET = (-3.5, 3.5)  # u_t = -x1/2 + offset_t + sign_t * tanh(x2)
_U_SIGN = (1.0, -1.0)
_SQ_CENTER = (7.0, -7.0)  # quadratic part: ((x1 - center_t)^2 + 0.1 (x2 + 8)^2) / 10 - 20


# --------------------------------------------------------------------------------------------
# Losses and gradients
# --------------------------------------------------------------------------------------------


def _as_points(x: Tensor | Sequence[float] | np.ndarray) -> Tensor:
    if not isinstance(x, Tensor):
        x = torch.as_tensor(np.asarray(x, dtype=np.float64))
    if not x.is_floating_point():
        x = x.to(DTYPE)
    if x.shape[-1:] != (2,):
        raise ValueError(f"toy points must have shape (..., 2), got {tuple(x.shape)}")
    return x


def task_losses(x: Tensor) -> Tensor:
    """``(f1, f2)`` of the CAGrad toy at points ``x`` of shape ``(..., 2)``; returns ``(..., 2)``.

    ``f_t = c1 * f_t^l + c2 * f_t^s`` with the logarithmic parts (``|.|`` clamped below by
    :data:`EPS`), the quadratic parts, and the gates ``c1 = max(tanh(x2/2), 0)``,
    ``c2 = max(tanh(-x2/2), 0)``, exactly as written in the paper's appendix / CAGrad code.
    """
    x = _as_points(x)
    x1, x2 = x[..., 0], x[..., 1]
    f1_log = torch.log(torch.clamp(torch.abs(0.5 * (-x1 - 7) - torch.tanh(-x2)), min=EPS)) + 6
    f2_log = torch.log(torch.clamp(torch.abs(0.5 * (-x1 + 3) + torch.tanh(-x2) + 2), min=EPS)) + 6
    f1_sq = ((-x1 + 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    f2_sq = ((-x1 - 7) ** 2 + 0.1 * (-x2 - 8) ** 2) / 10 - 20
    c1 = torch.clamp(torch.tanh(x2 / 2), min=0)
    c2 = torch.clamp(torch.tanh(-x2 / 2), min=0)
    return torch.stack([c1 * f1_log + c2 * f1_sq, c1 * f2_log + c2 * f2_sq], dim=-1)


def average_loss(x: Tensor) -> Tensor:
    """The mean of the two task losses, shape ``(...)`` for ``x`` of shape ``(..., 2)``."""
    return task_losses(x).mean(dim=-1)


def task_gradients(x: Tensor) -> Tensor:
    """Analytic per-task gradients at ``x`` (``(..., 2)``): shape ``(..., 2 tasks, 2 coords)``.

    With ``th = tanh(x2)``, ``u_t = -x1/2 + offset_t + sign_t * th``
    (``u_1 = 0.5(-x1-7) - tanh(-x2)``, ``u_2 = 0.5(-x1+3) + tanh(-x2) + 2``),
    ``f_t^l = log(max(|u_t|, EPS)) + 6`` has gradient
    ``[|u_t| > EPS] / u_t * (-1/2, sign_t (1 - th^2))``; ``f_t^s`` has gradient
    ``((x1 - center_t) / 5, 0.02 (x2 + 8))``. With ``h = tanh(x2/2)`` at most one gate is
    non-zero: ``f_t = |h| * (f_t^l if h > 0 else f_t^s)``, so
    ``grad f_t = |h| * grad(selected part) + sign(h) (1 - h^2)/2 * (selected part) * e2``
    (``sign(0) = 0`` reproduces autograd's zero gradient of both gates at ``x2 = 0``).
    Written with few, mostly in-place, operations: it runs every iteration of :func:`run_toy`.
    """
    x = _as_points(x)
    offset, sign, center = _constants(x.dtype, x.device)
    x1 = x[..., 0:1]  # (..., 1): broadcasts against the task axis
    x2 = x[..., 1:2]

    th = torch.tanh(x2)
    u = torch.add(offset, x1, alpha=-0.5).addcmul_(sign, th)  # (..., 2 tasks)
    abs_u = u.abs()
    f_log = abs_u.clamp_min(EPS).log_().add_(6.0)
    inv_u = u.reciprocal().masked_fill_(abs_u <= EPS, 0.0)  # clamp active: no gradient
    dlog_dx1 = inv_u * -0.5
    dlog_dx2 = (1.0 - th * th).mul(sign).mul_(inv_u)

    dx1 = x1 - center
    x2p8 = x2 + 8.0
    f_sq = (dx1 * dx1).addcmul_(x2p8, x2p8, value=0.1).mul_(0.1).sub_(20.0)
    dsq_dx1 = dx1 * 0.2
    dsq_dx2 = x2p8 * 0.02  # (..., 1), the same for both tasks

    h = torch.tanh(x2 * 0.5)
    upper = h > 0  # c1 = h active; else c2 = -h (or both zero at h == 0)
    gate = h.abs()
    dgate = (1.0 - h * h).mul_(0.5).mul_(h.sign())
    g_x1 = torch.where(upper, dlog_dx1, dsq_dx1).mul_(gate)
    g_x2 = torch.where(upper, dlog_dx2, dsq_dx2).mul_(gate)
    g_x2.addcmul_(dgate, torch.where(upper, f_log, f_sq))
    return torch.stack([g_x1, g_x2], dim=-1)


@lru_cache(maxsize=8)
def _constants(dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Per-task constants ``(offset, sign, center)`` of :func:`task_gradients` (task axis last)."""
    with torch.inference_mode(False):  # usable both inside and outside inference mode
        return tuple(  # type: ignore[return-value]
            torch.tensor(v, dtype=dtype, device=device) for v in (_U_OFFSET, _U_SIGN, _SQ_CENTER)
        )


def average_gradient(x: Tensor) -> Tensor:
    """Analytic gradient of :func:`average_loss`, shape ``(..., 2)``."""
    return task_gradients(x).mean(dim=-2)


# --------------------------------------------------------------------------------------------
# The global minimiser of the average loss
# --------------------------------------------------------------------------------------------


def global_minimizer(search_limit: float = 20.0) -> Tensor:
    """The global minimiser ``x*`` of :func:`average_loss`, found numerically (float64, ``(2,)``).

    A dense grid search over ``[-search_limit, search_limit]^2`` (801^2 points) locates the basin,
    repeated 41x41 zoomed grids (the window shrinks 4x per round) narrow it down, and a few
    Newton steps on the analytic gradient (Hessian by central differences of that gradient)
    polish it to near machine precision. Expected: ``(0, -8.3552...)``.
    """
    return torch.tensor(_global_minimizer(float(search_limit)), dtype=DTYPE)


@lru_cache(maxsize=8)
def _global_minimizer(search_limit: float) -> tuple[float, float]:
    axis = torch.linspace(-search_limit, search_limit, 801, dtype=DTYPE)
    best = _grid_argmin(axis, axis)
    half_width = 2 * (axis[1] - axis[0]).item()
    while half_width > 1e-10:
        offsets = torch.linspace(-half_width, half_width, 41, dtype=DTYPE)
        best = _grid_argmin(best[0] + offsets, best[1] + offsets)
        half_width /= 4
    x = best.clone()
    for _ in range(8):
        step = torch.linalg.solve(_fd_hessian(x), average_gradient(x))
        if not torch.isfinite(step).all() or step.norm() > 1e-6:
            break  # the zoom already landed within 1e-9; a large step means a bad Hessian
        x = x - step
        if step.norm() < 1e-15:
            break
    if average_loss(x) > average_loss(best):
        x = best
    return (float(x[0]), float(x[1]))


def _grid_argmin(xs: Tensor, ys: Tensor) -> Tensor:
    grid = torch.stack(torch.meshgrid(xs, ys, indexing="ij"), dim=-1)
    values = average_loss(grid)
    flat = int(torch.argmin(values))
    return grid.reshape(-1, 2)[flat].clone()


def _fd_hessian(x: Tensor, h: float = 1e-5) -> Tensor:
    eye = torch.eye(2, dtype=x.dtype)
    cols = [(average_gradient(x + h * e) - average_gradient(x - h * e)) / (2 * h) for e in eye]
    hess = torch.stack(cols, dim=-1)
    return 0.5 * (hess + hess.T)


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


def _toy_methods() -> list[str]:
    return sorted(name for name, cls in METHODS.items() if issubclass(cls, Aggregator))


@dataclass(frozen=True)
class ToySettings:
    """Settings of the CAGrad toy experiment (Fig. 1, Tables 1 and A3 of Elich et al. 2024).

    The run covers every ``method x optimizer x learning rate x start point``.

    ``tolerance`` is the radius of the ball around ``x*`` (``||x - x*||_2``, parameter space)
    that counts as "reached the global minimum". The default 0.05 is about one cell of the
    500x500 contour grid (spacing 22/499 = 0.044), i.e. the resolution at which Fig. 1 shows
    convergence; it is 2-3 orders of magnitude below the distance at which the failing runs
    stall (they stop on the Pareto set or in the upper region, several units away), and at it
    the average loss is within ~3e-4 of its minimum. With the defaults, tolerances 0.01 and
    0.001 raise the counts of Tables 1/A3 moderately but leave their pattern of "reached" / "not
    reached" unchanged (measured). Adam at large learning rates keeps oscillating around ``x*``
    with amplitude ~lr: it reaches the ball but does not stay (see ``ToyResult.settled``).
    ``record_every`` thins the stored trajectories (for plots); the first-hit bookkeeping
    looks at every iteration. ``grid_size``/``grid_limit`` define the contour grid of Fig. 1.
    """

    learning_rates: list[float] = field(
        default_factory=lambda: [10.0, 5.0, 1.0, 0.5, 0.1, 0.05, 0.01, 0.005, 0.001]
    )
    optimizers: list[str] = field(default_factory=lambda: ["gd", "adam"])
    methods: list[str] = field(default_factory=lambda: ["ew", "pcgrad", "cagrad"])
    cagrad_c: float = 0.5
    start_points: list[list[float]] = field(
        default_factory=lambda: [[-8.5, 7.5], [-8.5, -5.0], [9.0, 9.0]]
    )
    iterations: int = 100000
    tolerance: float = 0.05
    record_every: int = 10
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    grid_size: int = 500
    grid_limit: float = 11.0
    table1_learning_rates: list[float] = field(
        default_factory=lambda: [10.0, 1.0, 0.1, 0.01, 0.001]
    )
    fig1_learning_rates: list[float] = field(default_factory=lambda: [1.0, 0.05, 0.001])

    def __post_init__(self) -> None:
        for name in (
            "learning_rates",
            "adam_betas",
            "table1_learning_rates",
            "fig1_learning_rates",
        ):
            object.__setattr__(self, name, _float_list(getattr(self, name), name))
        for name in ("cagrad_c", "tolerance", "adam_eps", "grid_limit"):
            object.__setattr__(self, name, _number(getattr(self, name), name))
        for name in ("iterations", "record_every", "grid_size"):
            _integer(getattr(self, name), name)
        points = [_float_list(p, f"start_points[{i}]") for i, p in enumerate(self.start_points)]
        object.__setattr__(self, "start_points", points)
        self._validate()

    def _validate(self) -> None:
        _nonempty_unique(self.learning_rates, "learning_rates")
        if any(not (math.isfinite(lr) and lr > 0) for lr in self.learning_rates):
            raise SettingsError(f"learning_rates must be positive, got {self.learning_rates}")
        _nonempty_unique(self.optimizers, "optimizers")
        unknown = [o for o in self.optimizers if o not in OPTIMIZERS]
        if unknown:
            raise SettingsError(f"optimizers: unknown {unknown}; known: {list(OPTIMIZERS)}")
        _nonempty_unique(self.methods, "methods")
        known = _toy_methods()
        unknown = [m for m in self.methods if m not in known]
        if unknown:
            raise SettingsError(f"methods: unknown or not an aggregator {unknown}; known: {known}")
        if self.cagrad_c < 0:
            raise SettingsError(f"cagrad_c must be non-negative, got {self.cagrad_c}")
        if not self.start_points:
            raise SettingsError("start_points must not be empty")
        for i, point in enumerate(self.start_points):
            if len(point) != 2 or not all(map(math.isfinite, point)):
                raise SettingsError(f"start_points[{i}] must be two finite numbers, got {point}")
        if self.iterations <= 0:
            raise SettingsError(f"iterations must be positive, got {self.iterations}")
        if not (self.tolerance > 0):
            raise SettingsError(f"tolerance must be positive, got {self.tolerance}")
        if self.record_every <= 0:
            raise SettingsError(f"record_every must be positive, got {self.record_every}")
        if len(self.adam_betas) != 2 or not all(0 <= b < 1 for b in self.adam_betas):
            raise SettingsError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas}")
        if not (self.adam_eps >= 0):
            raise SettingsError(f"adam_eps must be non-negative, got {self.adam_eps}")
        if self.grid_size < 2:
            raise SettingsError(f"grid_size must be at least 2, got {self.grid_size}")
        if not (self.grid_limit > 0):
            raise SettingsError(f"grid_limit must be positive, got {self.grid_limit}")
        for name in ("table1_learning_rates", "fig1_learning_rates"):
            values = getattr(self, name)
            _nonempty_unique(values, name)
            missing = [lr for lr in values if lr not in self.learning_rates]
            if missing:
                raise SettingsError(
                    f"{name}: {missing} not in learning_rates {self.learning_rates}"
                )

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any] | None) -> ToySettings:
        """Build from a plain mapping (YAML/JSON), rejecting unknown keys and wrong types."""
        return from_mapping(cls, data, where="toy")

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)


def _number(value: object, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise SettingsError(f"{name}: expected a number, got {value!r}")
    return float(value)


def _integer(value: object, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise SettingsError(f"{name}: expected an integer, got {value!r}")


def _float_list(values: object, name: str) -> list[float]:
    if not isinstance(values, list | tuple):
        raise SettingsError(f"{name}: expected a list, got {values!r}")
    return [_number(v, f"{name}[{i}]") for i, v in enumerate(values)]


def _nonempty_unique(values: Sequence[object], name: str) -> None:
    if len(values) == 0:
        raise SettingsError(f"{name} must not be empty")
    if len(set(values)) != len(values):
        raise SettingsError(f"{name} has duplicates: {list(values)}")


# --------------------------------------------------------------------------------------------
# Optimiser steps (batched, in place)
# --------------------------------------------------------------------------------------------


def gd_step(param: Tensor, direction: Tensor, lr: Tensor) -> None:
    """``param -= lr * direction`` in place; ``lr`` broadcasts against ``param`` (per element)."""
    param.sub_(direction * lr)


def adam_step(
    param: Tensor,
    direction: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: int,
    lr: Tensor,
    betas: Sequence[float],
    eps: float,
) -> None:
    """One Adam step in place, batched, with per-element learning rates ``lr`` (broadcasting).

    Same arithmetic as ``torch.optim.Adam`` (single-tensor path, no weight decay, no amsgrad):
    ``m <- lerp(m, g, 1 - b1)``, ``v <- b2 v + (1 - b2) g^2``, and with the bias corrections
    ``bc_i = 1 - b_i^step`` (``step`` counts from 1),
    ``param -= (lr / bc1) * m / (sqrt(v) / sqrt(bc2) + eps)`` (``eps`` outside the square root).
    """
    beta1, beta2 = betas
    exp_avg.lerp_(direction, 1 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(direction, direction, value=1 - beta2)
    bias_correction1 = 1 - beta1**step
    bias_correction2_sqrt = (1 - beta2**step) ** 0.5
    denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
    param.sub_(exp_avg.div(denom).mul_(lr / bias_correction1))


# --------------------------------------------------------------------------------------------
# The experiment
# --------------------------------------------------------------------------------------------


@dataclass
class ToyResult:
    """Outcome of :func:`run_toy`. Batch axes everywhere: ``(method, optimizer, lr, start)``.

    * ``trajectory_steps`` ``(K,)``: iterations at which points were recorded (0, every
      ``record_every``-th, and the last iteration).
    * ``trajectories`` ``(M, O, L, S, K, 2)``: the recorded points.
    * ``first_hit`` ``(M, O, L, S)``: first iteration with ``||x - x*|| <= tolerance``, or -1
      (the criterion of Tables 1/A3).
    * ``settled`` ``(M, O, L, S)``: first iteration from which the iterates stay within the
      tolerance up to the end of the run, or -1 if the final point lies outside. It differs
      from ``first_hit`` for runs that pass through the ball and leave it again.
    * ``final_points`` ``(M, O, L, S, 2)`` and ``final_loss`` ``(M, O, L, S)`` (average loss).
    * ``minimizer`` ``(2,)``: ``x*``.
    """

    settings: ToySettings
    methods: list[str]
    optimizers: list[str]
    learning_rates: list[float]
    start_points: list[list[float]]
    trajectory_steps: np.ndarray
    trajectories: np.ndarray
    first_hit: np.ndarray
    settled: np.ndarray
    final_points: np.ndarray
    final_loss: np.ndarray
    minimizer: np.ndarray

    ARRAY_FIELDS: ClassVar[tuple[str, ...]] = (
        "trajectory_steps",
        "trajectories",
        "first_hit",
        "settled",
        "final_points",
        "final_loss",
        "minimizer",
    )

    def index(self, method: str, optimizer: str, lr: float) -> tuple[int, int, int]:
        """Indices of ``(method, optimizer, lr)`` along the first three batch axes."""
        try:
            return (
                self.methods.index(method),
                self.optimizers.index(optimizer),
                self.learning_rates.index(float(lr)),
            )
        except ValueError:
            raise KeyError(f"({method}, {optimizer}, lr={lr}) is not part of this run") from None

    def final_distance(self) -> np.ndarray:
        """``||x_final - x*||_2`` per batch element, ``(M, O, L, S)``."""
        return np.linalg.norm(self.final_points - self.minimizer, axis=-1)

    def save(self, path: str | os.PathLike[str]) -> Path:
        """Write an ``.npz`` (atomically, same bytes for the same result) holding the arrays and
        the settings and axes as JSON (the ``meta`` entry)."""
        arrays = {name: np.asarray(getattr(self, name)) for name in self.ARRAY_FIELDS}
        meta = {
            "settings": asdict(self.settings),
            "methods": self.methods,
            "optimizers": self.optimizers,
            "learning_rates": self.learning_rates,
            "start_points": self.start_points,
        }
        arrays["meta"] = np.array(json.dumps(meta, sort_keys=True))
        return atomic_write(path, lambda p: _write_npz(p, arrays))

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> ToyResult:
        with np.load(path, allow_pickle=False) as data:
            meta = json.loads(str(data["meta"]))
            arrays = {name: data[name] for name in cls.ARRAY_FIELDS}
        settings = ToySettings.from_mapping(meta.pop("settings"))
        return cls(settings=settings, **meta, **arrays)


def _write_npz(path: Path, arrays: Mapping[str, np.ndarray]) -> None:
    """Like ``np.savez_compressed`` but with fixed zip timestamps, so the bytes are reproducible."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, array, allow_pickle=False)


def _record_indices(iterations: int, record_every: int) -> np.ndarray:
    steps = list(range(0, iterations + 1, record_every))
    if steps[-1] != iterations:
        steps.append(iterations)
    return np.asarray(steps, dtype=np.int64)


def run_toy(settings: ToySettings, progress: bool | None = None, chunk: int = 1000) -> ToyResult:
    """Run every ``method x optimizer x lr x start`` of ``settings`` as one batched simulation.

    Each iteration computes the analytic per-task gradients of the whole batch, applies each
    method once to its slice, and takes one batched GD or Adam step per optimizer slice. The
    iterates of a ``chunk`` of iterations are buffered so that the first-hit check and the
    trajectory recording run once per chunk, not per iteration. ``progress=None`` shows a tqdm
    bar only on a TTY. Deterministic: no randomness is involved (PCGrad's order is irrelevant
    for two tasks).
    """
    started = time.perf_counter()
    with torch.inference_mode():
        result = _Simulation(settings).run(progress, chunk)
    log.info(
        "CAGrad toy: %d runs x %d iterations in %.1f s",
        result.first_hit.size,
        settings.iterations,
        time.perf_counter() - started,
    )
    return result


class _Simulation:
    """State of the batched run. Memory layout: a flat batch ``B = M * O * L * S`` in the order
    ``(method, optimizer, lr, start)``, so each method's slice ``[m]`` of the ``(M, O*L*S, ...)``
    view is contiguous (the aggregators do most of the per-iteration work), while each
    optimizer's slice is a strided 2-D view ``(M, L*S*2)`` of the points."""

    def __init__(self, settings: ToySettings) -> None:
        self.settings = settings
        M, n_opt = len(settings.methods), len(settings.optimizers)
        L, S = len(settings.learning_rates), len(settings.start_points)
        self.shape = (M, n_opt, L, S)
        starts = torch.tensor(settings.start_points, dtype=DTYPE)
        self.x = starts.expand(M * n_opt * L, S, 2).reshape(-1, 2).clone()  # (B, 2)
        self.direction = torch.empty_like(self.x)
        self.methods = [
            make_method(name, {"c": settings.cagrad_c} if name == "cagrad" else None)
            for name in settings.methods
        ]
        self.method_dirs = self.direction.view(M, n_opt * L * S, 2)
        # Per-element learning rate of one optimizer slice, laid out like that slice.
        lr = torch.tensor(settings.learning_rates, dtype=DTYPE)
        lr_slice = lr.view(1, L, 1, 1).expand(M, L, S, 2).reshape(M, L * S * 2).clone()
        x_opt = self.x.view(M, n_opt, L * S * 2)
        d_opt = self.direction.view(M, n_opt, L * S * 2)
        self.steppers = []
        for o, name in enumerate(settings.optimizers):
            if name == "gd":
                self.steppers.append(_GD(x_opt[:, o], d_opt[:, o], lr_slice))
            else:
                betas = (settings.adam_betas[0], settings.adam_betas[1])
                adam = _Adam(x_opt[:, o], d_opt[:, o], lr_slice, betas, settings.adam_eps)
                self.steppers.append(adam)

    def step(self, k: int) -> None:
        """Iteration ``k`` (counting from 1): gradients, one call per method, one step each."""
        M = len(self.methods)
        grads = task_gradients(self.x).view(M, -1, 2, 2)
        torch.stack(
            [method(grads[i]) for i, method in enumerate(self.methods)], out=self.method_dirs
        )
        for stepper in self.steppers:
            stepper(k)

    def run(self, progress: bool | None, chunk: int) -> ToyResult:
        s = self.settings
        xstar = global_minimizer()
        record_steps = _record_indices(s.iterations, s.record_every)
        trajectories = torch.empty((len(record_steps), *self.x.shape), dtype=DTYPE)
        trajectories[0] = self.x
        next_record = 1
        tracker = _HitTracker(self.x, xstar, s.tolerance)
        buffer = torch.empty((min(chunk, s.iterations), *self.x.shape), dtype=DTYPE)
        done = 0
        disable = None if progress is None else not progress
        with tqdm(total=s.iterations, disable=disable, desc="CAGrad toy", unit="it") as bar:
            while done < s.iterations:
                n = min(buffer.shape[0], s.iterations - done)
                for j in range(n):
                    self.step(done + j + 1)
                    buffer[j].copy_(self.x)
                block = buffer[:n]
                tracker.update(block, offset=done + 1)
                while next_record < len(record_steps) and record_steps[next_record] <= done + n:
                    trajectories[next_record] = block[record_steps[next_record] - done - 1]
                    next_record += 1
                done += n
                bar.update(n)
        return self._result(xstar, record_steps, trajectories, tracker)

    def _result(
        self, xstar: Tensor, steps: np.ndarray, trajectories: Tensor, tracker: _HitTracker
    ) -> ToyResult:
        s, shape = self.settings, self.shape
        final = self.x.clone()
        return ToyResult(
            settings=s,
            methods=list(s.methods),
            optimizers=list(s.optimizers),
            learning_rates=list(s.learning_rates),
            start_points=[list(p) for p in s.start_points],
            trajectory_steps=steps,
            trajectories=trajectories.movedim(0, -2).reshape(*shape, len(steps), 2).numpy().copy(),
            first_hit=tracker.first_hit.reshape(shape).numpy().copy(),
            settled=tracker.settled(self.x).reshape(shape).numpy().copy(),
            final_points=final.reshape(*shape, 2).numpy().copy(),
            final_loss=average_loss(final).reshape(shape).numpy().copy(),
            minimizer=xstar.numpy().copy(),
        )


class _GD:
    def __init__(self, param: Tensor, direction: Tensor, lr: Tensor) -> None:
        self.param, self.direction, self.lr = param, direction, lr

    def __call__(self, step: int) -> None:
        gd_step(self.param, self.direction, self.lr)


class _Adam:
    def __init__(
        self, param: Tensor, direction: Tensor, lr: Tensor, betas: tuple[float, float], eps: float
    ) -> None:
        self.param, self.direction, self.lr = param, direction, lr
        self.betas, self.eps = betas, eps
        self.exp_avg = torch.zeros_like(param)
        self.exp_avg_sq = torch.zeros_like(param)

    def __call__(self, step: int) -> None:
        adam_step(
            self.param,
            self.direction,
            self.exp_avg,
            self.exp_avg_sq,
            step,
            self.lr,
            self.betas,
            self.eps,
        )


class _HitTracker:
    """Per batch element: the first iteration inside the tolerance ball around ``x*`` and the
    last iteration outside it, updated from blocks of consecutive iterates ``(n, B, 2)``."""

    def __init__(self, x0: Tensor, xstar: Tensor, tolerance: float) -> None:
        self.xstar, self.tol_sq = xstar, tolerance**2
        inside = self.inside(x0)
        self.first_hit = torch.where(inside, 0, -1)
        self.last_outside = torch.where(inside, -1, 0)

    def inside(self, points: Tensor) -> Tensor:
        return ((points - self.xstar) ** 2).sum(-1) <= self.tol_sq  # NaN counts as outside

    def update(self, block: Tensor, offset: int) -> None:
        """``block[j]`` is the iterate after iteration ``offset + j``."""
        inside = self.inside(block)  # (n, B)
        new = inside.any(dim=0) & (self.first_hit < 0)
        if bool(new.any()):
            first_j = inside.to(torch.uint8).argmax(dim=0)  # first True along the block
            self.first_hit[new] = first_j[new] + offset
        outside = ~inside
        left = outside.any(dim=0)
        if bool(left.any()):
            last_j = len(block) - 1 - outside.flip(0).to(torch.uint8).argmax(dim=0)
            self.last_outside[left] = last_j[left] + offset

    def settled(self, final: Tensor) -> Tensor:
        return torch.where(self.inside(final), self.last_outside + 1, -1)


# --------------------------------------------------------------------------------------------
# Tables and claims
# --------------------------------------------------------------------------------------------


def _format_lr(lr: float) -> str:
    return f"{lr:g}"


Criterion = Literal["first_hit", "settled"]


def iterations_to_reach(
    result: ToyResult, method: str, optimizer: str, lr: float, criterion: Criterion = "first_hit"
) -> int | None:
    """Max over start points of the ``criterion`` iteration (``first_hit`` or ``settled``, see
    :class:`ToyResult`); ``None`` if some start point never got there."""
    if criterion not in ("first_hit", "settled"):
        raise ValueError(f"criterion must be 'first_hit' or 'settled', got {criterion!r}")
    m, o, i = result.index(method, optimizer, lr)
    hits = getattr(result, criterion)[m, o, i]
    return None if (hits < 0).any() else int(hits.max())


def convergence_table(
    result: ToyResult, learning_rates: Sequence[float], criterion: Criterion = "first_hit"
) -> pd.DataFrame:
    """Tables 1 / A3: rows optimizer x method (paper order), one column per learning rate.

    Columns ``optimizer``, ``method`` (display names) and ``lr`` formatted with ``:g``; each
    cell is the maximum over start points of the first iteration within ``tolerance`` of
    ``x*`` (``criterion="settled"``: from which the run stays within it), or
    :data:`NOT_REACHED` when some start point never got there.
    """
    missing = [lr for lr in learning_rates if float(lr) not in result.learning_rates]
    if missing:
        raise ValueError(f"learning rates {missing} are not part of this run")
    rows = []
    for optimizer in _ordered(result.optimizers, OPTIMIZERS):
        for method in _ordered(result.methods, TOY_METHODS):
            row: dict[str, object] = {
                "optimizer": DISPLAY_NAMES.get(optimizer, optimizer),
                "method": DISPLAY_NAMES.get(method, method),
            }
            for lr in learning_rates:
                reached = iterations_to_reach(result, method, optimizer, lr, criterion)
                row[_format_lr(lr)] = NOT_REACHED if reached is None else reached
            rows.append(row)
    return pd.DataFrame(rows)


def _ordered(present: Sequence[str], order: Sequence[str]) -> list[str]:
    return [n for n in order if n in present] + [n for n in present if n not in order]


def _describe_starts(result: ToyResult, method: str, optimizer: str, lr: float) -> str:
    m, o, i = result.index(method, optimizer, lr)
    dist = result.final_distance()[m, o, i]
    parts = []
    for s, point in enumerate(result.start_points):
        hit = int(result.first_hit[m, o, i, s])
        status = f"reached at iteration {hit}" if hit >= 0 else "not reached"
        settled = int(result.settled[m, o, i, s])
        stays = f"stays from {settled}" if settled >= 0 else "does not stay"
        parts.append(f"start {tuple(point)}: {status} ({stays}), final distance {dist[s]:.3g}")
    return "; ".join(parts)


def toy_claims(result: ToyResult) -> list[Claim]:
    """The toy's claims (Elich et al. 2024, Sec. 3 / Fig. 1 / Tables 1, A3), measured on ``result``.

    (a) in CAGrad's original setup (Adam, lr 0.001) EW misses the global minimum from some start
    point while CAGrad reaches it from all; (b) EW reaches it from all start points with some
    other optimizer/learning rate, so the verdict depends on that choice.
    """
    s = result.settings
    budget = f"{s.iterations} iterations, tolerance {s.tolerance:g}"
    return [_claim_original_setup(result, budget), _claim_ew_elsewhere(result, budget)]


def _claim_original_setup(result: ToyResult, budget: str) -> Claim:
    claim = (
        "In the original CAGrad toy setup (Adam, lr 0.001, 100k iterations) EW does not reach the "
        "global minimum of the average loss from every start point, while CAGrad does."
    )
    source = "Elich et al. 2024, Fig. 1 (Adam, lr 0.001) and Table 1"
    try:
        ew = iterations_to_reach(result, "ew", "adam", 0.001)
        cagrad = iterations_to_reach(result, "cagrad", "adam", 0.001)
    except KeyError:
        return Claim("toy", claim, source, "setup (Adam, lr 0.001, EW and CAGrad) not run", False)
    measured = (
        f"{budget}. EW: {_describe_starts(result, 'ew', 'adam', 0.001)}. "
        f"CAGrad: {_describe_starts(result, 'cagrad', 'adam', 0.001)}."
    )
    return Claim("toy", claim, source, measured, ew is None and cagrad is not None)


def _claim_ew_elsewhere(result: ToyResult, budget: str) -> Claim:
    claim = (
        "With another optimizer or learning rate EW reaches the global minimum from every start "
        "point: the toy's verdict depends on the optimizer and learning-rate choice."
    )
    source = "Elich et al. 2024, Fig. 1 and Tables 1 / A3"
    if "ew" not in result.methods:
        return Claim("toy", claim, source, "EW not run", False)
    # A setting counts only if every start point reaches x* and stays there until the end, so
    # that runs merely passing through the ball (large learning rates) do not count.
    successes = []
    for optimizer in _ordered(result.optimizers, OPTIMIZERS):
        for lr in result.learning_rates:
            if optimizer == "adam" and lr == 0.001:
                continue
            settled = iterations_to_reach(result, "ew", optimizer, lr, "settled")
            if settled is not None:
                reached = iterations_to_reach(result, "ew", optimizer, lr, "first_hit")
                successes.append((reached, settled, optimizer, lr))
    if not successes:
        measured = f"{budget}. EW never reached x* from all start points and stayed there."
        return Claim("toy", claim, source, measured, False)
    successes.sort()
    listed = ", ".join(
        f"{DISPLAY_NAMES[o]} lr {_format_lr(lr)}: reached by {n}, stays from {k}"
        for n, k, o, lr in successes
    )
    n, _, o, lr = successes[0]
    measured = (
        f"{budget}. EW reaches x* from all {len(result.start_points)} start points and stays "
        f"there in {len(successes)} other settings (max iterations over start points): {listed}. "
        f"Fastest: {DISPLAY_NAMES[o]} lr {_format_lr(lr)}, reached within {n} iterations."
    )
    return Claim("toy", claim, source, measured, True)
