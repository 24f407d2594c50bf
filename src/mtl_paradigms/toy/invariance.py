"""The loss-scale invariance toy of Elich et al. (2024): Figs A1/A2 and the Theory checks.

The toy
-------
Scalar inputs ``x ~ Uniform(low, high)``; task ``t`` regresses ``y_t = s_t * x``
(``target_scales``: "the same depth in different units"). Backbone ``Linear(1, H) - LeakyReLU -
Linear(H, H) - LeakyReLU``; head ``t`` is ``Linear(H, H) - LeakyReLU - Linear(H, 1)``. Task loss
``L_t`` is the L1 loss averaged over the minibatch. Everything runs in ``float64`` by default.

Conventions
-----------
* Setting ``"equal"`` uses ``L_t`` as is; setting ``"scaled"`` multiplies ``L_t`` by the constant
  ``alpha_t`` (``loss_scales``). The *scaled loss* ``alpha_t L_t`` is what the weighting sees.
* The weighting (``mtl_paradigms.methods``; EW: ``w_t = 1/T``; UW-O:
  ``w_t = 1/(T sg[alpha_t L_t])``) gives the combined loss ``sum_t w_t alpha_t L_t``. Standard
  optimizers (``torch.optim.SGD`` with momentum, ``torch.optim.Adam``) step on its gradient.
  :class:`PerTaskAdam` instead keeps one Adam state per task: task ``t`` contributes an Adam
  update computed from the gradient of its own term ``w_t alpha_t L_t``; a parameter receives the
  sum of the updates of the tasks that reach it (backbone: all tasks; head ``t``: task ``t``).
* Seeding: ``seed`` is split into independent streams for the data, the initial weights and the
  minibatch order. Every run of one settings object (any optimizer, weighting, setting) starts
  from the same initial weights and sees the same minibatches, so ``"equal"`` and ``"scaled"``
  runs are comparable step by step.
* Records (tidy, one row per step x quantity x module), ``step`` counted from 1 (the optimizer's
  step count), ``epoch`` from 1:

  - ``loss``: for ``head<t>`` the scaled loss ``alpha_t L_t`` of the minibatch the step used
    (before the step); for ``backbone`` the unweighted sum ``sum_t alpha_t L_t``.
  - ``grad_norm``: Euclidean norm, over the module's parameters, of the gradient of the combined
    loss ``sum_t w_t alpha_t L_t``. For a head this is also the gradient of its own term (a head
    reaches only its own loss); for :class:`PerTaskAdam` the backbone's value is the norm of the
    *summed* per-task gradient, although its update is the sum of per-task Adam updates.
  - ``update_norm``: ``||theta_new - theta_old||`` over the module's parameters.

  A frozen backbone (Fig A1) has no ``backbone`` rows.

Checks
------
:func:`invariance_checks` compares scaled with equal runs in *lockstep* (each update proposed from
the reference run's parameters, see :func:`simulate`), because SGD+UW-O on this L1 toy is chaotic
once its losses are small and amplifies float rounding in free-running runs; free-running
differences are reported beside. The exact checks use ε → 0⁺ (:func:`limit_eps`).
"""

from __future__ import annotations

import dataclasses
import gzip
import io
import logging
import math
import os
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtl_paradigms.analysis.claims import Claim
from mtl_paradigms.io import atomic_write
from mtl_paradigms.methods import Weighting, make_method
from mtl_paradigms.optim.per_task_adam import PerTaskAdam

logger = logging.getLogger(__name__)

Backbone = Literal["frozen", "learnable"]
Setting = Literal["equal", "scaled"]
OptimizerName = Literal["sgd", "adam", "per_task_adam"]

SETTINGS: tuple[Setting, ...] = ("equal", "scaled")
BACKBONE_MODULE = "backbone"
RECORD_COLUMNS = (
    "figure",
    "backbone",
    "run",
    "setting",
    "step",
    "epoch",
    "quantity",
    "module",
    "value",
)
CLAIM_STAGE = "invariance"
CLAIM_SOURCE = "Elich et al. 2024, Theory / Figs A1–A2"


def head_module(task: int) -> str:
    """Module name of the head of task ``task`` (0-based): ``head1``, ``head2``, ..."""
    return f"head{task + 1}"


# --------------------------------------------------------------------------------------------
# Settings
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class InvarianceSettings:
    """Configuration of the invariance toy (defaults reproduce Figs A1/A2).

    ``target_scales`` and ``loss_scales`` have one entry per task. ``sgd_lr`` is the learning rate
    of SGD+momentum with EW, ``sgd_uwo_lr`` that of SGD+momentum with UW-O: UW-O's gradient
    ``(1/T) sum_t grad L_t / L_t`` grows as the losses shrink, and at EW's rate SGD+UW-O turns
    unstable (loss spikes) within a few epochs. ``adam_lr`` serves plain and per-task Adam.
    ``adam_eps`` is the ε of every Adam run in the figures (the paper's 1e-8); the exact checks
    replace it by :func:`limit_eps`. The paper fixes neither the input range nor the units:
    ``input_range`` [0, 1] and ``target_scales`` [1, 5] are our choice. The learning rates are
    chosen so that every run's losses fall visibly within 100 epochs.
    """

    num_samples: int = 256
    batch_size: int = 32
    epochs: int = 100
    hidden: int = 20
    input_range: list[float] = field(default_factory=lambda: [0.0, 1.0])
    target_scales: list[float] = field(default_factory=lambda: [1.0, 5.0])
    loss_scales: list[float] = field(default_factory=lambda: [10.0, 0.1])
    sgd_lr: float = 0.01
    sgd_uwo_lr: float = 0.001
    momentum: float = 0.9
    adam_lr: float = 0.001
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    seed: int = 0
    negative_slope: float = 0.01
    dtype: Literal["float64", "float32"] = "float64"

    def __post_init__(self) -> None:
        for name in ("num_samples", "batch_size", "epochs", "hidden"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be a positive integer, got {getattr(self, name)}")
        if self.batch_size > self.num_samples:
            raise ValueError(
                f"batch_size ({self.batch_size}) must not exceed num_samples ({self.num_samples})"
            )
        if self.seed < 0:
            raise ValueError(f"seed must be non-negative, got {self.seed}")
        _check_finite_list("input_range", self.input_range, length=2)
        low, high = self.input_range
        if not low < high:
            raise ValueError(
                f"input_range must be [low, high] with low < high, got {self.input_range}"
            )
        _check_finite_list("target_scales", self.target_scales)
        _check_finite_list("loss_scales", self.loss_scales, length=len(self.target_scales))
        if any(a <= 0 for a in self.loss_scales):
            raise ValueError(f"loss_scales must be positive, got {self.loss_scales}")
        for name in ("sgd_lr", "sgd_uwo_lr", "adam_lr"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"{name} must be a positive number, got {value}")
        if not 0.0 <= self.momentum < 1.0:
            raise ValueError(f"momentum must lie in [0, 1), got {self.momentum}")
        _check_finite_list("adam_betas", self.adam_betas, length=2)
        if not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ValueError(f"adam_betas must lie in [0, 1), got {self.adam_betas}")
        if not (math.isfinite(self.adam_eps) and self.adam_eps >= 0):
            raise ValueError(f"adam_eps must be a non-negative number, got {self.adam_eps}")
        if not (math.isfinite(self.negative_slope) and 0.0 < self.negative_slope < 1.0):
            raise ValueError(f"negative_slope must lie in (0, 1), got {self.negative_slope}")
        if self.dtype not in ("float64", "float32"):
            raise ValueError(f"dtype must be 'float64' or 'float32', got {self.dtype!r}")

    @property
    def num_tasks(self) -> int:
        return len(self.target_scales)

    @property
    def torch_dtype(self) -> torch.dtype:
        return getattr(torch, self.dtype)

    @property
    def steps_per_epoch(self) -> int:
        """Minibatches per epoch; the last one is smaller when ``batch_size`` does not divide."""
        return math.ceil(self.num_samples / self.batch_size)


def _check_finite_list(name: str, values: Sequence[float], length: int | None = None) -> None:
    if not isinstance(values, list | tuple) or len(values) == 0:
        raise ValueError(f"{name} must be a non-empty list of numbers, got {values!r}")
    if length is not None and len(values) != length:
        raise ValueError(f"{name} must have {length} entries, got {len(values)}: {list(values)}")
    if not all(isinstance(v, int | float) and math.isfinite(v) for v in values):
        raise ValueError(f"{name} must contain finite numbers, got {list(values)}")


def _stream_seeds(seed: int) -> tuple[int, int, int]:
    """Independent seeds for the data, the initial weights and the minibatch order."""
    data, init, batches = np.random.SeedSequence(seed).generate_state(3)
    return int(data), int(init), int(batches)


# --------------------------------------------------------------------------------------------
# Data and model
# --------------------------------------------------------------------------------------------


def make_data(settings: InvarianceSettings) -> tuple[Tensor, Tensor]:
    """Inputs ``x``, shape ``(N, 1)``, and targets ``y = x * target_scales``, shape ``(N, T)``."""
    generator = torch.Generator().manual_seed(_stream_seeds(settings.seed)[0])
    low, high = settings.input_range
    x = low + (high - low) * torch.rand(
        settings.num_samples, 1, generator=generator, dtype=settings.torch_dtype
    )
    scales = torch.tensor(settings.target_scales, dtype=settings.torch_dtype)
    return x, x * scales


class InvarianceToyModel(nn.Module):
    """Hard parameter sharing: a shared backbone and one head per task.

    Every ``nn.Linear`` is initialised like PyTorch's default (weights and biases uniform in
    ``±1/sqrt(fan_in)``) but from ``generator``, so the initial weights depend on the seed only.
    """

    def __init__(
        self,
        num_tasks: int,
        hidden: int,
        negative_slope: float,
        dtype: torch.dtype,
        generator: torch.Generator,
    ) -> None:
        super().__init__()

        def linear(fan_in: int, fan_out: int) -> nn.Linear:
            layer = nn.Linear(fan_in, fan_out, dtype=dtype)
            bound = 1.0 / math.sqrt(fan_in)
            with torch.no_grad():
                layer.weight.uniform_(-bound, bound, generator=generator)
                layer.bias.uniform_(-bound, bound, generator=generator)
            return layer

        self.backbone = nn.Sequential(
            linear(1, hidden),
            nn.LeakyReLU(negative_slope),
            linear(hidden, hidden),
            nn.LeakyReLU(negative_slope),
        )
        self.heads = nn.ModuleList(
            nn.Sequential(linear(hidden, hidden), nn.LeakyReLU(negative_slope), linear(hidden, 1))
            for _ in range(num_tasks)
        )

    def forward(self, x: Tensor) -> Tensor:
        """Predictions of shape ``(batch, T)`` for inputs of shape ``(batch, 1)``."""
        features = self.backbone(x)
        return torch.cat([head(features) for head in self.heads], dim=-1)

    def shared_parameters(self) -> list[nn.Parameter]:
        return list(self.backbone.parameters())

    def task_parameters(self, task: int) -> list[nn.Parameter]:
        return list(self.heads[task].parameters())

    def module_parameters(self) -> dict[str, list[nn.Parameter]]:
        """Parameters by module name: ``head1``, ..., ``headT``, ``backbone``."""
        modules = {head_module(t): self.task_parameters(t) for t in range(len(self.heads))}
        modules[BACKBONE_MODULE] = self.shared_parameters()
        return modules

    def freeze_backbone(self) -> None:
        for p in self.backbone.parameters():
            p.requires_grad_(False)


def build_model(settings: InvarianceSettings) -> InvarianceToyModel:
    """The toy model with the seeded initial weights (identical for every run of ``settings``)."""
    generator = torch.Generator().manual_seed(_stream_seeds(settings.seed)[1])
    return InvarianceToyModel(
        settings.num_tasks,
        settings.hidden,
        settings.negative_slope,
        settings.torch_dtype,
        generator,
    )


def minibatch_order(settings: InvarianceSettings) -> list[list[Tensor]]:
    """Sample indices of every minibatch, ``order[epoch][batch]``, from the seeded generator."""
    generator = torch.Generator().manual_seed(_stream_seeds(settings.seed)[2])
    return [
        list(torch.randperm(settings.num_samples, generator=generator).split(settings.batch_size))
        for _ in range(settings.epochs)
    ]


# --------------------------------------------------------------------------------------------
# Runs
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """An optimizer strategy paired with a loss weighting (``make_method(weighting, params)``)."""

    name: str
    optimizer: OptimizerName
    weighting: str
    weighting_params: Mapping[str, Any] = field(default_factory=dict)
    lr_field: str = ""  # the settings field holding the learning rate; "" = by optimizer

    def learning_rate(self, settings: InvarianceSettings) -> float:
        name = self.lr_field or ("sgd_lr" if self.optimizer == "sgd" else "adam_lr")
        return float(getattr(settings, name))


RUNS: dict[str, RunSpec] = {
    "sgd_ew": RunSpec("sgd_ew", "sgd", "ew"),
    "adam_ew": RunSpec("adam_ew", "adam", "ew"),
    "sgd_uwo": RunSpec("sgd_uwo", "sgd", "uwo", lr_field="sgd_uwo_lr"),
    "adam_per_task": RunSpec("adam_per_task", "per_task_adam", "ew"),
}
RUN_LABELS: dict[str, str] = {
    "sgd_ew": "SGD+mom EW",
    "adam_ew": "Adam EW",
    "sgd_uwo": "SGD+mom UW-O",
    "adam_per_task": "Adam per task",
}
# figure id -> (backbone, runs)
FIGURES: dict[str, tuple[Backbone, tuple[str, ...]]] = {
    "A1": ("frozen", ("sgd_ew", "adam_ew", "sgd_uwo")),
    "A2": ("learnable", ("sgd_ew", "adam_ew", "sgd_uwo", "adam_per_task")),
}


@dataclass(frozen=True)
class Trajectory:
    """One simulated run: its tidy records and, per trained module, parameters and updates.

    ``params[module]`` has shape ``(num_steps + 1, D)``: row ``s`` holds the parameters the step
    ``s + 1`` started from, the last row those after the last step. ``updates[module]`` has shape
    ``(num_steps, D)``: the change the optimizer made in each step. Parameters are flattened in
    ``module_parameters`` order.
    """

    records: pd.DataFrame
    params: dict[str, Tensor]
    updates: dict[str, Tensor]


def _flat(tensors: Iterable[Tensor]) -> Tensor:
    return torch.cat([t.detach().reshape(-1) for t in tensors])


@torch.no_grad()
def _assign(params: Sequence[Tensor], flat: Tensor) -> None:
    """Copy the flat vector ``flat`` into ``params`` in place (optimizer state is untouched)."""
    for param, chunk in zip(params, flat.split([p.numel() for p in params]), strict=True):
        param.copy_(chunk.view_as(param))


@contextmanager
def _single_thread() -> Iterator[None]:
    """Run torch ops on one thread: for this tiny model thread hand-offs cost more than they
    save (about 10x on two cores), and one thread keeps reductions in a fixed order."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def _make_optimizer(
    spec: RunSpec, params: list[nn.Parameter], settings: InvarianceSettings
) -> torch.optim.Optimizer | PerTaskAdam:
    betas = (settings.adam_betas[0], settings.adam_betas[1])
    lr = spec.learning_rate(settings)
    if spec.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=settings.momentum, foreach=False)
    if spec.optimizer == "adam":
        return torch.optim.Adam(params, lr=lr, betas=betas, eps=settings.adam_eps, foreach=False)
    if spec.optimizer == "per_task_adam":
        return PerTaskAdam(params, settings.num_tasks, lr, betas, settings.adam_eps)
    raise ValueError(f"unknown optimizer {spec.optimizer!r}")


def _step_standard(
    optimizer: torch.optim.Optimizer,
    weighting: Weighting,
    scaled_losses: Tensor,
    params: Sequence[nn.Parameter],
) -> Tensor:
    """Back-propagate the combined loss and step; return the flat gradient of ``params``."""
    optimizer.zero_grad(set_to_none=True)
    weighting.combine(scaled_losses).backward()
    grad = _flat(p.grad if p.grad is not None else torch.zeros_like(p) for p in params)
    optimizer.step()
    return grad


def _step_per_task(
    optimizer: PerTaskAdam,
    weighting: Weighting,
    scaled_losses: Tensor,
    task_params: Sequence[Sequence[int]],
) -> Tensor:
    """Per-task gradients of ``w_t alpha_t L_t`` and one :class:`PerTaskAdam` step.

    ``task_params[t]`` lists the indices (into ``optimizer.params``) of the parameters task ``t``
    reaches (backbone and its own head); the other parameters get ``None`` from task ``t`` — not a
    zero gradient, which would create and update a moment estimate for another task's head.
    Returns the flat sum of the per-task gradients (= the combined loss's gradient).
    """
    terms = weighting.weights(scaled_losses) * scaled_losses
    num_tasks = terms.shape[-1]
    task_grads: list[list[Tensor | None]] = []
    summed = [torch.zeros_like(p) for p in optimizer.params]
    for t in range(num_tasks):
        inputs = [optimizer.params[i] for i in task_params[t]]
        grads = torch.autograd.grad(terms[t], inputs, retain_graph=t < num_tasks - 1)
        row: list[Tensor | None] = [None] * len(optimizer.params)
        for i, g in zip(task_params[t], grads, strict=True):
            row[i] = g
            summed[i] += g
        task_grads.append(row)
    optimizer.step(task_grads)
    return _flat(summed)


def simulate(
    settings: InvarianceSettings,
    run: str | RunSpec,
    backbone: Backbone,
    setting: Setting,
    *,
    follow: Trajectory | None = None,
) -> Trajectory:
    """Train the toy once and record every step (see the module docstring for the conventions).

    ``follow`` switches on *lockstep* mode: before every step the parameters are set to those
    ``follow`` had before that step, so this run's optimizer (which keeps its own state) proposes
    its update from exactly the reference's parameters. ``params`` are then the reference's and
    ``updates`` this run's. Comparing update rules in lockstep is immune to the amplification of
    rounding differences by chaotic training dynamics (SGD+UW-O on this L1 toy becomes chaotic once
    the losses are small); a free-running comparison is not.

    Raises ``FloatingPointError`` if an update is non-finite. With ``adam_eps = 0`` Adam divides
    0/0 on a coordinate whose gradients have all been exactly zero so far (with β1 = β2 = 0: whose
    current gradient is zero). The L1 loss produces such coordinates whenever the residual signs
    of an even minibatch balance; rather than masking the 0/0 the run fails loudly. Use
    :func:`limit_eps` for the ε → 0⁺ limit.
    """
    spec = RUNS[run] if isinstance(run, str) else run
    if backbone not in ("frozen", "learnable"):
        raise ValueError(f"backbone must be 'frozen' or 'learnable', got {backbone!r}")
    if setting not in SETTINGS:
        raise ValueError(f"setting must be one of {SETTINGS}, got {setting!r}")
    x, y = make_data(settings)
    model = build_model(settings)
    if backbone == "frozen":
        model.freeze_backbone()
    modules = {
        name: params
        for name, params in model.module_parameters().items()
        if all(p.requires_grad for p in params)
    }
    trainable = [p for params in modules.values() for p in params]
    index = {id(p): i for i, p in enumerate(trainable)}
    task_params = [
        [
            index[id(p)]
            for p in (*model.shared_parameters(), *model.task_parameters(t))
            if id(p) in index
        ]
        for t in range(settings.num_tasks)
    ]
    optimizer = _make_optimizer(spec, trainable, settings)
    weighting = make_method(spec.weighting, dict(spec.weighting_params))
    if not isinstance(weighting, Weighting):
        raise TypeError(f"run {spec.name}: {spec.weighting!r} is not a loss weighting")
    alpha = torch.tensor(
        settings.loss_scales if setting == "scaled" else [1.0] * settings.num_tasks,
        dtype=settings.torch_dtype,
    )

    order = minibatch_order(settings)
    num_steps = sum(len(batches) for batches in order)
    size = sum(p.numel() for p in trainable)
    reference = None if follow is None else _reference(follow, list(modules), num_steps, size)
    losses = torch.empty(num_steps, settings.num_tasks, dtype=torch.float64)
    flat_params = torch.empty(num_steps + 1, size, dtype=x.dtype)
    flat_updates = torch.empty(num_steps, size, dtype=x.dtype)
    flat_grads = torch.empty(num_steps, size, dtype=x.dtype)
    epochs = torch.empty(num_steps, dtype=torch.int64)
    flat_params[0] = _flat(trainable)
    step = 0
    with _single_thread():
        for epoch, batches in enumerate(order, start=1):
            for idx in batches:
                if reference is not None:
                    _assign(trainable, reference[step])
                scaled = alpha * (model(x[idx]) - y[idx]).abs().mean(dim=0)
                if isinstance(optimizer, PerTaskAdam):
                    flat_grads[step] = _step_per_task(optimizer, weighting, scaled, task_params)
                else:
                    flat_grads[step] = _step_standard(optimizer, weighting, scaled, trainable)
                after = _flat(trainable)
                before = flat_params[step] if reference is None else reference[step]
                flat_updates[step] = after - before
                flat_params[step + 1] = after if reference is None else reference[step + 1]
                losses[step] = scaled.detach()
                epochs[step] = epoch
                step += 1

    if not torch.isfinite(flat_updates).all():
        raise FloatingPointError(
            f"run {spec.name} ({backbone}, {setting}): non-finite parameter updates; "
            f"Adam with eps={settings.adam_eps} divided 0/0 — use a positive adam_eps "
            "(limit_eps(settings) for the limit eps -> 0+)"
        )
    sizes = [sum(p.numel() for p in params) for params in modules.values()]
    params = dict(zip(modules, flat_params.split(sizes, dim=1), strict=True))
    updates = dict(zip(modules, flat_updates.split(sizes, dim=1), strict=True))
    grads = dict(zip(modules, flat_grads.split(sizes, dim=1), strict=True))
    records = _records(spec.name, backbone, setting, epochs, losses, grads, updates)
    return Trajectory(records=records, params=params, updates=updates)


def _reference(follow: Trajectory, modules: list[str], num_steps: int, size: int) -> Tensor:
    if list(follow.params) != modules:
        raise ValueError(
            f"follow: trajectory has modules {list(follow.params)}, expected {modules}"
        )
    reference = torch.cat([follow.params[m] for m in modules], dim=1)
    if reference.shape != (num_steps + 1, size):
        raise ValueError(
            f"follow: trajectory of shape {tuple(reference.shape)}, "
            f"expected {(num_steps + 1, size)}"
        )
    return reference


def _records(
    run: str,
    backbone: Backbone,
    setting: Setting,
    epochs: Tensor,
    losses: Tensor,
    grads: Mapping[str, Tensor],
    updates: Mapping[str, Tensor],
) -> pd.DataFrame:
    num_steps = len(epochs)
    blocks: list[tuple[str, str, Tensor]] = []
    for t in range(losses.shape[1]):
        blocks.append(("loss", head_module(t), losses[:, t]))
    if BACKBONE_MODULE in updates:
        blocks.append(("loss", BACKBONE_MODULE, losses.sum(dim=1)))
    for name in updates:
        blocks.append(("grad_norm", name, grads[name].norm(dim=1)))
        blocks.append(("update_norm", name, updates[name].norm(dim=1)))
    steps = np.arange(1, num_steps + 1)
    return pd.DataFrame(
        {
            "backbone": backbone,
            "run": run,
            "setting": setting,
            "step": np.tile(steps, len(blocks)),
            "epoch": np.tile(epochs.numpy(), len(blocks)),
            "quantity": np.repeat([q for q, _, _ in blocks], num_steps),
            "module": np.repeat([m for _, m, _ in blocks], num_steps),
            "value": np.concatenate([v.to(torch.float64).numpy() for _, _, v in blocks]),
        }
    )


def run_invariance(settings: InvarianceSettings, *, progress: bool = True) -> pd.DataFrame:
    """Every run Figs A1 and A2 need, as one tidy frame with columns :data:`RECORD_COLUMNS`.

    A1: frozen backbone x {sgd_ew, adam_ew, sgd_uwo}; A2: learnable backbone x {sgd_ew, adam_ew,
    sgd_uwo, adam_per_task}; each in the ``equal`` and ``scaled`` setting.
    """
    jobs = [
        (figure, backbone, run, setting)
        for figure, (backbone, runs) in FIGURES.items()
        for run in runs
        for setting in SETTINGS
    ]
    start = time.perf_counter()
    frames = []
    for figure, backbone, run, setting in tqdm(jobs, desc="invariance runs", disable=not progress):
        records = simulate(settings, run, backbone, setting).records
        frames.append(records.assign(figure=figure))
    frame = pd.concat(frames, ignore_index=True)[list(RECORD_COLUMNS)]
    logger.info("invariance: %d runs in %.2f s", len(jobs), time.perf_counter() - start)
    return frame


def save_records(records: pd.DataFrame, path: str | os.PathLike[str]) -> Path:
    """Write the records as CSV, atomically, with floats at full precision (``%.17g``).

    A path ending in ``.gz`` is gzip-compressed with a fixed header (no file name, mtime 0), so the
    same records always give the same bytes.
    """

    def write(tmp: Path) -> None:
        if not str(path).endswith(".gz"):
            records.to_csv(tmp, index=False, float_format="%.17g")
            return
        with (
            open(tmp, "wb") as raw,
            gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as compressed,
            io.TextIOWrapper(compressed, encoding="utf-8", newline="") as text,
        ):
            records.to_csv(text, index=False, float_format="%.17g")

    return atomic_write(path, write)


def load_records(path: str | os.PathLike[str]) -> pd.DataFrame:
    return pd.read_csv(path)


# --------------------------------------------------------------------------------------------
# Checks of the Theory statements
# --------------------------------------------------------------------------------------------


def max_relative_difference(values: Tensor, reference: Tensor) -> float:
    """``max_i ||values_i - reference_i|| / ||reference_i||`` over rows (0/0 counts as 0)."""
    diff = (values - reference).norm(dim=-1)
    ratio = torch.where(diff == 0, torch.zeros_like(diff), diff / reference.norm(dim=-1))
    return float(ratio.max())


def trajectory_difference(run: Trajectory, reference: Trajectory, modules: Sequence[str]) -> float:
    """Largest relative difference of the parameters or the updates over steps and ``modules``."""
    return max(
        max(
            max_relative_difference(run.params[m], reference.params[m]),
            max_relative_difference(run.updates[m], reference.updates[m]),
        )
        for m in modules
    )


def update_difference(run: Trajectory, reference: Trajectory, modules: Sequence[str]) -> float:
    """Largest relative difference of the update vectors over steps and ``modules``."""
    return max(max_relative_difference(run.updates[m], reference.updates[m]) for m in modules)


@dataclass(frozen=True)
class Comparison:
    """A run against its reference (see :func:`compare`), free-running and in lockstep."""

    run: str
    backbone: Backbone
    adam_eps: float
    loss_scales: list[float]  # the scales of the compared run (all 1 in the equal setting)
    reference: Trajectory
    free: Trajectory
    lockstep: Trajectory

    def lockstep_difference(self, modules: Sequence[str]) -> float:
        """Largest relative difference of the updates proposed from the reference's parameters."""
        return update_difference(self.lockstep, self.reference, modules)

    def free_difference(self, modules: Sequence[str]) -> float:
        """Largest relative parameter difference of the free-running runs over steps and modules."""
        return max(
            max_relative_difference(self.free.params[m], self.reference.params[m]) for m in modules
        )

    def final_difference(self, modules: Sequence[str]) -> float:
        """Largest relative parameter difference of the free-running runs after the last step."""
        return max(
            max_relative_difference(self.free.params[m][-1:], self.reference.params[m][-1:])
            for m in modules
        )


def compare(
    settings: InvarianceSettings,
    run: str | RunSpec,
    backbone: Backbone,
    reference_run: str | RunSpec | None = None,
    setting: Setting = "scaled",
    reference: Trajectory | None = None,
) -> Comparison:
    """``run`` in ``setting`` against ``reference_run`` (default: ``run``) in the equal setting.

    ``reference`` may pass that reference trajectory when it has already been simulated.
    """
    if reference is None:
        reference = simulate(settings, reference_run or run, backbone, "equal")
    return Comparison(
        run=run if isinstance(run, str) else run.name,
        backbone=backbone,
        adam_eps=settings.adam_eps,
        loss_scales=list(settings.loss_scales)
        if setting == "scaled"
        else [1.0] * settings.num_tasks,
        reference=reference,
        free=simulate(settings, run, backbone, setting),
        lockstep=simulate(settings, run, backbone, setting, follow=reference),
    )


def limit_eps(settings: InvarianceSettings) -> float:
    """The ε of the exact checks: the smallest normal number of ``settings.dtype``.

    It realises the limit ε → 0⁺: ``sqrt(v_hat) + ε`` rounds to ``sqrt(v_hat)`` for every
    ``sqrt(v_hat)`` above ~1e-292 (float64), so updates equal those of ε = 0 bit for bit, while a
    coordinate whose gradients have all been exactly zero gets the update 0/ε = 0 rather than 0/0.
    Such coordinates are real here: the L1 gradient of an output bias is the mean of the residual
    signs, exactly zero when they balance in a minibatch, and with β1 = β2 = 0 (statement 6)
    Adam has no history to fall back on.
    """
    return float(torch.finfo(settings.torch_dtype).tiny)


def odd_minibatches(settings: InvarianceSettings) -> InvarianceSettings:
    """``settings`` with every minibatch of odd size (statement 6's check).

    With an even minibatch the residual signs of the L1 loss can balance, and then a gradient
    coordinate such as an output bias's (the mean residual sign) is exactly zero. With
    β1 = β2 = 0 Adam's update is ``g / |g|``, and for a weighted loss the rounding residual of
    ``sum_i w s_i / n`` (not exactly zero unless ``w`` is a power of two) decides its sign, while EW
    gives 0: the statement then fails on those coordinates for reasons of rounding alone. An odd
    count of signs never sums to zero. ``batch_size`` is rounded up to odd and ``num_samples``
    to the nearest multiple of it.
    """
    batch = settings.batch_size | 1
    samples = batch * max(1, round(settings.num_samples / batch))
    return dataclasses.replace(settings, batch_size=batch, num_samples=samples)


def random_weightings(settings: InvarianceSettings, count: int) -> list[list[float]]:
    """``count`` positive weight vectors, log-uniform in [0.01, 100], seeded by ``seed``."""
    rng = np.random.default_rng([settings.seed, 6])
    return [
        [float(w) for w in 10.0 ** rng.uniform(-2.0, 2.0, size=settings.num_tasks)]
        for _ in range(count)
    ]


def _fmt(values: Sequence[float]) -> str:
    return ", ".join(f"{v:g}" for v in values)


_EXPECT = {
    "invariant": "measured <= tolerance",
    "effect": "measured >= tolerance",
    "drift": "measured >= tolerance (eps > 0 breaks exactness; the size is the finding)",
}
LOCKSTEP_METRIC = "lockstep: max rel. diff. of updates, scaled vs equal, all steps"


def invariance_checks(
    settings: InvarianceSettings,
    *,
    exact_tol: float = 1e-9,
    min_effect: float = 1e-2,
    num_random_weightings: int = 3,
    progress: bool = False,
) -> pd.DataFrame:
    """One row per Theory statement (sub-rows a/b where a statement has two parts).

    Every row compares a run in the ``scaled`` setting with the same run in the ``equal`` setting
    (row 6: a constant weighting with EW), from the same initial weights and minibatches.
    ``measured`` is, unless ``metric`` says otherwise, the *lockstep* difference: the largest
    relative difference ``||u - u_ref|| / ||u_ref||`` of the update vectors of ``modules`` over all
    steps, each update proposed from the reference's parameters (:func:`simulate`, ``follow``).
    ``free_running`` is the largest relative parameter difference when both runs train freely;
    rounding differences grow there wherever the dynamics are chaotic (SGD+UW-O).

    The exact statements (1-6) run with Adam's ε = :func:`limit_eps` (ε → 0⁺), so invariances
    must hold to float rounding (``measured <= exact_tol``) and non-invariances must be real
    (``measured >= min_effect``). Rows 7a/7b rerun (1) and (3) with ``settings.adam_eps`` and
    measure the drift of the free-running parameters at the end of training; they hold when the
    drift is detectable (``>= exact_tol``). Whether it is "slight" is for the reader to judge.
    """
    exact = dataclasses.replace(settings, adam_eps=limit_eps(settings))
    heads = [head_module(t) for t in range(settings.num_tasks)]
    every = [*heads, BACKBONE_MODULE]
    rows: list[dict[str, Any]] = []
    bar = tqdm(total=10, desc="invariance checks", disable=not progress)

    def add(
        sid: str,
        statement: str,
        comparison: Comparison,
        modules: Sequence[str],
        expect: Literal["invariant", "effect", "drift"],
        measured: float | None = None,
        metric: str = LOCKSTEP_METRIC,
    ) -> None:
        lockstep = comparison.lockstep_difference(modules)
        value = lockstep if measured is None else measured
        tolerance = min_effect if expect == "effect" else exact_tol
        holds = value <= tolerance if expect == "invariant" else value >= tolerance
        rows.append(
            {
                "id": sid,
                "statement": statement,
                "run": comparison.run,
                "backbone": comparison.backbone,
                "modules": ", ".join(modules),
                "adam_eps": comparison.adam_eps,
                "loss_scales": _fmt(comparison.loss_scales),
                "metric": metric,
                "measured": value,
                "tolerance": tolerance,
                "expect": _EXPECT[expect],
                "holds": bool(holds),
                "lockstep": lockstep,
                "free_running": comparison.free_difference(modules),
            }
        )
        bar.update()

    # (1) Adam, frozen backbone: the head updates are invariant.
    adam_frozen = compare(exact, "adam_ew", "frozen")
    add("1", "Adam (EW), frozen backbone: head updates are invariant to constant loss scales",
        adam_frozen, heads, "invariant")  # fmt: skip

    # (2) UW-O is invariant everywhere.
    add("2a", "UW-O (SGD+momentum), frozen backbone: head updates are invariant",
        compare(exact, "sgd_uwo", "frozen"), heads, "invariant")  # fmt: skip
    add("2b", "UW-O (SGD+momentum), learnable backbone: invariant on heads and backbone",
        compare(exact, "sgd_uwo", "learnable"), every, "invariant")  # fmt: skip

    # (3) One Adam per task: invariant on the shared weights and the heads.
    add("3", "One Adam per task, learnable backbone: invariant on shared weights and heads",
        compare(exact, "adam_per_task", "learnable"), every, "invariant")  # fmt: skip

    # (4) SGD+momentum: alpha_t acts as a task-specific learning rate.
    sgd = compare(exact, "sgd_ew", "frozen")
    alpha_error = max(
        max_relative_difference(sgd.lockstep.updates[h] / alpha, sgd.reference.updates[h])
        for h, alpha in zip(heads, settings.loss_scales, strict=True)
    )
    first = [
        float(sgd.free.updates[h][0].norm() / sgd.reference.updates[h][0].norm()) for h in heads
    ]
    add("4a", "SGD+momentum, frozen backbone: alpha_t acts as a learning rate (head-t update = "
        "alpha_t x unscaled update)", sgd, heads, "invariant", measured=alpha_error,
        metric="lockstep: max rel. diff. of u_scaled / alpha_t and u_equal (first-step update "
        f"norm ratios: {_fmt(first)})")  # fmt: skip
    add("4b", "SGD+momentum (EW), frozen backbone: not invariant (head updates differ)",
        sgd, heads, "effect")  # fmt: skip

    # (5) Plain Adam on a learnable backbone: not invariant on the shared weights.
    add("5", "Adam (EW), learnable backbone: not invariant on the shared weights",
        compare(exact, "adam_ew", "learnable"), [BACKBONE_MODULE], "effect")  # fmt: skip

    # (6) beta1 = beta2 = 0, frozen backbone: every constant loss weighting reduces to EW.
    sign = odd_minibatches(dataclasses.replace(exact, adam_betas=[0.0, 0.0]))
    weight_sets = random_weightings(settings, num_random_weightings)
    fixed = [RunSpec("adam_fixed", "adam", "fixed", {"weights": w}) for w in weight_sets]
    ew = simulate(sign, "adam_ew", "frozen", "equal")
    comparisons = [compare(sign, spec, "frozen", setting="equal", reference=ew) for spec in fixed]
    worst = max(comparisons, key=lambda c: c.lockstep_difference(heads))
    add("6", "Adam with beta1 = beta2 = 0, frozen backbone: every constant loss weighting gives "
        "EW's head updates", worst, heads, "invariant",
        metric="lockstep: max rel. diff. of updates vs EW, worst of weightings "
        f"{'; '.join(_fmt(w) for w in weight_sets)} (odd minibatches: {sign.num_samples} "
        f"samples in batches of {sign.batch_size})")  # fmt: skip

    # (7) eps > 0 breaks the exact invariance of (1) and (3): drift over the whole training.
    for sid, run, backbone, modules in (
        ("7a", "adam_ew", "frozen", heads),
        ("7b", "adam_per_task", "learnable", every),
    ):
        drift = compare(settings, run, backbone)
        add(sid, f"{RUN_LABELS[run]}, {backbone} backbone, eps = {settings.adam_eps:g}: the "
            f"invariance is not exact, scaled and equal runs drift apart over {settings.epochs} "
            "epochs (the paper calls the drift slight; its size is the measured figure)",
            drift, modules,
            "drift", measured=drift.final_difference(modules),
            metric="free-running: max over modules of the relative parameter difference "
            "(scaled vs equal) after the last step")  # fmt: skip
    bar.close()
    return pd.DataFrame(rows)


def invariance_claims(checks: pd.DataFrame) -> list[Claim]:
    """One claim per row of :func:`invariance_checks`; ``reproduced`` is the row's ``holds``."""
    claims = []
    for r in checks.itertuples(index=False):
        measured = (
            f"{r.metric} = {r.measured:.3g} ({r.expect}, tolerance {r.tolerance:.0e}); "
            f"free-running {r.free_running:.3g}; Adam eps = {r.adam_eps:g}, "
            f"loss scales ({r.loss_scales})"
        )
        claims.append(Claim(CLAIM_STAGE, str(r.statement), CLAIM_SOURCE, measured, bool(r.holds)))
    return claims
