"""Multi-task training: batch -> losses -> method -> step, with evaluation, model selection,
divergence handling and checkpoint/resume around it.

Conventions
-----------
* Splits as the paper: validation held out of the MTAN train folder, test = the MTAN val folder
  (:func:`mtl_paradigms.data.mtan.paper_splits`).
* Model selection: every epoch the model is evaluated on validation and test; the selected epoch
  minimises the validation Δm against the single-task baseline (``selection: delta_m``, the
  paper's early stopping) or the summed validation loss (``selection: val_loss``, used for the
  single-task baselines themselves). The reported test metrics are those of the selected epoch.
* Methods follow the scale convention of :mod:`mtl_paradigms.methods.base`: a weighting's
  ``combine`` is back-propagated; for an aggregator the shared parameters receive the aggregated
  direction of the per-task gradients and each head ``(1/T) grad L_t``.
* Divergence: checked once per epoch (no per-step host sync). Let ``L0`` be the summed task
  losses of the run's very first step (the model at initialisation; every task loss is
  non-negative) and ``f`` the ``divergence_factor`` (default 100). A run diverged when an
  epoch's mean training loss of a task, its validation loss or one of its metrics is not finite,
  or when the epoch's summed mean training loss exceeds ``f L0``; training then stops. An epoch
  whose summed validation loss exceeds ``f L0`` is never selected (training goes on: a high
  learning rate can make one epoch's validation loss spike and then recover); a run without any
  selectable epoch diverged too. ``metrics.json`` records ``diverged: true`` with the reason
  (``divergence``). A diverged run is a result, not an error.
* Checkpoint/resume: after every epoch ``checkpoint.pt`` (model, optimizer, scheduler, method
  state, random-number-generator states, history, best epoch) is written atomically; a restarted
  run continues from it and produces the same metrics as an uninterrupted one. A checkpoint is
  resumed only if it carries this run's identity (settings, data, baseline; see
  :mod:`mtl_paradigms.checkpoint`); one of other settings is moved aside and the run starts anew.
* Determinism: the same settings and seed give identical metrics on the CPU (tested).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtl_paradigms.analysis.delta import delta
from mtl_paradigms.checkpoint import (
    CHECKPOINT,
    CheckpointError,
    RunState,
    clean_stale_temporaries,
    data_fingerprint,
    load_checkpoint,
    move_aside,
    run_identity,
    save_checkpoint,
)
from mtl_paradigms.data.mtan import NUM_CLASSES, TASKS, MTANSplit
from mtl_paradigms.data.splits import dataset_tasks, load_splits
from mtl_paradigms.data.transforms import augment_batch
from mtl_paradigms.io import atomic_write, write_json
from mtl_paradigms.methods import Method, make_method
from mtl_paradigms.models import MultiTaskModel, build_model
from mtl_paradigms.optim import SignSGD
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import Task, metric_directions
from mtl_paradigms.updates import StepOutput, Updater, make_updater, task_losses, training_step

__all__ = [
    "CHECKPOINT", "HISTORY", "METRICS", "StepOutput", "TrainSettings", "batched_jacobian",
    "compile_model", "divergence_reason", "evaluate", "make_optimizer", "speed_flags",
    "task_losses", "train", "training_step",
]  # fmt: skip

log = logging.getLogger(__name__)

COMPILED_GRAPHS = 256
"""With ``compile``: graphs torch.compile may keep per code object (``recompile_limit``)."""
METRICS = "metrics.json"
HISTORY = "history.csv"


@dataclass(frozen=True)
class TrainSettings:
    """One training run. Defaults are the paper's NYUv2 setup (Elich et al. 2024, Setups).

    ``tasks`` selects a subset of the dataset's tasks (one task = a single-task baseline);
    ``num_classes`` defaults to the dataset's (13 NYUv2, 7 or 19 Cityscapes). ``lr_step_every``
    halves (``lr_gamma``) the learning rate every so many epochs. ``task_jacobian`` chooses how
    gradient methods get their per-task gradients: one backward per task (``loop``), one
    vectorised backward (``batched``), or ``auto`` (batched on CUDA, the loop on the CPU).
    ``label`` is the name the run is tabulated under (default: the method's;
    ``fixed_from_<method>`` for fixed weights taken from another run). Adam's betas/eps and
    SGD's momentum are not stated in the paper; (0.9, 0.999), 1e-8 and 0.9 are the usual values.
    ``divergence_factor``: how far the summed training loss may grow above the first step's
    before the run counts as diverged, and the validation loss before an epoch is not
    selectable (module doc, "Divergence").

    Speed switches, all off by default (the default path is the one tested for determinism):
    ``fused_optimizer`` uses torch's fused Adam / SGD kernels (same update, other rounding;
    signSGD and AdaTask's per-task Adam have none and run as without it, so that one setting
    serves a whole grid of optimizers);
    ``cudnn_benchmark`` lets cuDNN time its convolution algorithms for the run's shapes (CUDA
    only; the choice, and so the rounding, may differ between runs); ``compile`` compiles the
    encoder and each head with ``torch.compile`` (:func:`compile_model`; the first steps pay the
    compilation, and gradient methods take their per-task gradients with the loop, since the
    batched Jacobian does not run through a compiled graph; ``auto_lambda`` runs eagerly, see
    :attr:`compiled`); ``compile_mode`` ``reduce-overhead`` also replays the compiled graphs as
    CUDA graphs.
    """

    dataset: Literal["nyuv2", "cityscapes", "celeba"] = "nyuv2"
    data_dir: str = "data/nyuv2"
    cityscapes_labels: Literal["label_7", "label_19"] = "label_7"
    num_classes: int | None = None
    val_size: int = 159
    tasks: list[str] | None = None
    arch: Literal["segnet", "deeplabv3", "resnet18"] = "segnet"
    width: float = 1.0
    pretrained: bool = False
    method: str = "ew"
    method_params: dict[str, Any] = field(default_factory=dict)
    label: str | None = None
    optimizer: Literal["adam", "sgd", "signsgd"] = "adam"
    lr: float = 1e-4
    momentum: float = 0.9
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    adam_eps: float = 1e-8
    weight_decay: float = 1e-5
    epochs: int = 200
    batch_size: int = 8
    eval_batch_size: int = 32
    lr_step_every: int = 100
    lr_gamma: float = 0.5
    augment: bool = True
    selection: Literal["delta_m", "val_loss"] = "delta_m"
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = False
    channels_last: bool = False
    task_jacobian: Literal["auto", "loop", "batched"] = "auto"
    fused_optimizer: bool = False
    cudnn_benchmark: bool = False
    compile: bool = False
    compile_mode: Literal["default", "reduce-overhead"] = "default"
    divergence_factor: float = 100.0

    def __post_init__(self) -> None:
        if self.compile_mode != "default" and not self.compile:
            raise SettingsError(
                f"train.compile_mode {self.compile_mode!r} applies only with compile: true"
            )
        if self.compile and self.task_jacobian == "batched":
            raise SettingsError(
                "train.compile: the batched task Jacobian (is_grads_batched) does not run "
                "through a compiled graph; use task_jacobian 'auto' or 'loop' with compile"
            )
        for name in ("lr", "weight_decay", "lr_gamma", "width"):
            if not math.isfinite(getattr(self, name)) or getattr(self, name) < 0:
                raise SettingsError(f"train.{name} must be a finite non-negative number")
        if self.lr <= 0:
            raise SettingsError(f"train.lr must be positive, got {self.lr}")
        if math.isnan(self.divergence_factor) or self.divergence_factor <= 1:
            raise SettingsError(
                f"train.divergence_factor must be above 1 (or .inf to judge only non-finite "
                f"losses), got {self.divergence_factor}"
            )
        for name in ("epochs", "batch_size", "eval_batch_size", "lr_step_every", "val_size"):
            if getattr(self, name) < 1:
                raise SettingsError(f"train.{name} must be at least 1, got {getattr(self, name)}")
        if self.dataset == "celeba":  # tasks are the attributes of the data (data.splits)
            if self.augment:
                raise SettingsError("train.augment: the paper trains CelebA without it; use false")
            return
        known = list(TASKS[self.dataset])
        if self.tasks is not None:
            unknown = [t for t in self.tasks if t not in known]
            if unknown or not self.tasks:
                raise SettingsError(f"train.tasks: {self.tasks} not a non-empty subset of {known}")

    @property
    def task_names(self) -> list[str]:
        return list(self.tasks) if self.tasks is not None else list(TASKS[self.dataset])

    @property
    def classes(self) -> int:
        if self.num_classes is not None:
            return self.num_classes
        if self.dataset == "cityscapes" and self.cityscapes_labels == "label_19":
            return 19
        return NUM_CLASSES[self.dataset]

    @property
    def compiled(self) -> bool:
        """Whether the model runs compiled: ``compile``, except for ``auto_lambda``, whose meta
        step evaluates the model with substituted parameters (``torch.func.functional_call``)
        that a compiled model would recompile at every step. It runs eagerly, so that one
        ``compile`` serves a whole grid of methods."""
        return self.compile and self.method != "auto_lambda"


# ---------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise SettingsError("train.device is 'cuda' but CUDA is not available")
    return torch.device(name)


def batched_jacobian(settings: TrainSettings, device: torch.device) -> bool:
    """Whether gradient methods take the per-task Jacobian in one batched backward:
    ``task_jacobian`` ``batched``, or ``auto`` on CUDA without ``compile``."""
    if settings.task_jacobian == "auto":
        return device.type == "cuda" and not settings.compiled
    return settings.task_jacobian == "batched"


def make_optimizer(
    settings: TrainSettings, params: Sequence[nn.Parameter]
) -> torch.optim.Optimizer:
    # fused=None leaves torch's default (the foreach kernels on CUDA); True, its fused kernels.
    fused = True if settings.fused_optimizer else None
    if settings.optimizer == "adam":
        betas = (settings.adam_betas[0], settings.adam_betas[1])
        return torch.optim.Adam(
            params, lr=settings.lr, betas=betas, eps=settings.adam_eps,
            weight_decay=settings.weight_decay, fused=fused,
        )  # fmt: skip
    if settings.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay,
            fused=fused,
        )  # fmt: skip
    if settings.fused_optimizer:
        log.info("fused_optimizer: signSGD has no fused kernel; its own update runs")
    return SignSGD(
        params, lr=settings.lr, momentum=settings.momentum, weight_decay=settings.weight_decay
    )


def compile_model(model: MultiTaskModel, mode: str = "default") -> None:
    """Compile the encoder and every head in place (``nn.Module.compile`` in torch.compile's
    ``mode``), so that both the weightings' ``model(x)`` and the gradient methods'
    ``representation`` / ``heads_forward`` run compiled, and parameter names (checkpoints) stay
    the same. Compilation happens at the first calls (again for evaluation mode and for a new
    batch size). Run under :func:`speed_flags`, which keeps the compiled backward's buffers for
    the per-task gradients (``retain_graph``)."""
    model.encoder.compile(mode=mode)
    for head in model.heads.values():
        head.compile(mode=mode)


@contextlib.contextmanager
def speed_flags(settings: TrainSettings) -> Iterator[None]:
    """The process-wide switches of a run, restored afterwards: cuDNN's autotuner
    (``cudnn_benchmark``) and, with ``compile``: torch.compile's backward without donated
    buffers (a donated buffer is freed after the first backward, which breaks the second
    backward through the same graph that per-task gradients need), and room for
    ``COMPILED_GRAPHS`` graphs per code object (every head is its own graph, again in
    evaluation mode and for a last, smaller batch; past the limit torch would fall back to eager
    without an error)."""
    previous = torch.backends.cudnn.benchmark
    torch.backends.cudnn.benchmark = previous or settings.cudnn_benchmark
    try:
        with contextlib.ExitStack() as stack:
            if settings.compiled:
                import torch._dynamo.config as dynamo_config
                import torch._functorch.config as functorch_config

                stack.enter_context(functorch_config.patch(donated_buffer=False))
                stack.enter_context(dynamo_config.patch(recompile_limit=COMPILED_GRAPHS))
            yield
    finally:
        torch.backends.cudnn.benchmark = previous


@torch.no_grad()
def evaluate(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    split: MTANSplit,
    batch_size: int,
    autocast: torch.autocast,
    channels_last: bool = False,
) -> tuple[dict[str, float], float]:
    """Metrics (keys ``task/metric``) over the whole split, and the summed mean task loss."""
    model.eval()
    meters = {name: task.meter(split.images.device) for name, task in tasks.items()}
    loss_sum = torch.zeros((), device=split.images.device)
    for start in range(0, len(split), batch_size):
        images = split.images[start : start + batch_size]
        if channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        targets = {name: split.targets[name][start : start + batch_size] for name in tasks}
        with autocast:
            preds = model(images)
        preds = {k: v.float() for k, v in preds.items()}
        for name, task in tasks.items():
            meters[name].update(preds[name], targets[name])
            loss_sum += task.loss(preds[name], targets[name]) * images.shape[0]
    metrics = {
        f"{name}/{metric}": value
        for name, meter in meters.items()
        for metric, value in meter.compute().items()
    }
    model.train()
    return metrics, float(loss_sum) / len(split)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


class TrainCallback(Protocol):
    """An observer of a run (e.g. :class:`mtl_paradigms.gradstats.extract.GradStatsCallback`).

    ``on_step`` runs before every update with the run-wide iteration index (from 0), the model,
    the tasks and the update's batch (augmented); it must change neither the model, its
    gradients, its buffers nor the trainer's random state. ``on_epoch_end`` runs after every epoch
    (``epoch`` counts from 1) and before the checkpoint is written, so what a callback flushes
    there is never written twice by a resumed run. Its ``state_dict`` is saved in the checkpoint;
    its ``identity`` (the settings that shape what it writes) is part of the run's identity.
    """

    def on_step(
        self,
        iteration: int,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        images: Tensor,
        targets: Mapping[str, Tensor],
    ) -> None: ...

    def on_epoch_end(self, epoch: int, model: MultiTaskModel) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...

    def identity(self) -> dict[str, Any]: ...


def load_baseline(path: str | os.PathLike[str] | None) -> dict[str, dict[str, float]] | None:
    """The single-task baseline (``{"val": {...}, "test": {...}}``) written by ``mtlp baseline``."""
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except json.JSONDecodeError as err:
        raise ValueError(
            f"{path}: not a valid baseline file ({err}); delete it and run the workflow again "
            "to rebuild it from the single-task runs"
        ) from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: not a baseline file (no JSON object); delete it and rebuild")
    for key in ("val", "test"):
        if key not in data:
            raise ValueError(f"{path}: baseline file lacks '{key}' metrics")
    return data


def train(
    settings: TrainSettings,
    out_dir: str | os.PathLike[str],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool | None = None,
    stop_after_epochs: int | None = None,
    callbacks: Sequence[TrainCallback] = (),
) -> dict[str, Any]:
    """Train one run into ``out_dir`` (resuming from its checkpoint); return ``metrics.json``.

    ``stop_after_epochs`` ends the process's work after that many epochs *of this call* without
    writing the final results (used to test resumption; a killed run behaves the same way).
    ``callbacks`` observe the run (:class:`TrainCallback`); their state is checkpointed.
    """
    if settings.compiled and callbacks:
        raise SettingsError(
            "train.compile: callbacks (gradient statistics) hook the encoder's layers, which a "
            "compiled encoder would recompile around; set compile to false for these runs"
        )
    with speed_flags(settings):
        return _train(settings, out_dir, baseline, progress, stop_after_epochs, callbacks)


def _train(
    settings: TrainSettings,
    out_dir: str | os.PathLike[str],
    baseline: Mapping[str, Mapping[str, float]] | None,
    progress: bool | None,
    stop_after_epochs: int | None,
    callbacks: Sequence[TrainCallback],
) -> dict[str, Any]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if settings.selection == "delta_m" and baseline is None:
        raise SettingsError("train: selection 'delta_m' needs the single-task baseline metrics")
    device = resolve_device(settings.device)
    # Every kernel used on the CPU is deterministic (SegNet unpools with a scatter rather than
    # max_unpool2d), which tests/train checks; torch.use_deterministic_algorithms is not called
    # because it imports the compiler stack (~2 s per job).
    torch.manual_seed(settings.seed)

    tasks = dataset_tasks(settings)
    directions = metric_directions(tasks)
    splits = load_splits(settings, list(tasks))
    identity = run_identity(
        asdict(settings), data_fingerprint(splits), baseline,
        [callback.identity() for callback in callbacks],
    )  # fmt: skip
    train_split, val_split, test_split = (s.to(device) for s in splits)
    del splits
    model = build_model(
        settings.arch,
        {name: task.out_channels for name, task in tasks.items()},
        width=settings.width,
        pretrained=settings.pretrained,
        single_task=len(tasks) == 1,
    ).to(device)
    if settings.channels_last:
        model = model.to(memory_format=torch.channels_last)
    method = make_method(settings.method, settings.method_params)
    extra_params = method.bind(len(tasks), device)
    method.attach(model)
    if settings.compiled:
        compile_model(model, settings.compile_mode)
    generator = torch.Generator().manual_seed(settings.seed + 1)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=settings.bf16)
    updater = make_updater(
        model, tasks, method, extra_params, autocast,
        lambda params: make_optimizer(settings, params),
        optimizer_name=settings.optimizer, lr=settings.lr, adam_betas=settings.adam_betas,
        adam_eps=settings.adam_eps, weight_decay=settings.weight_decay, generator=generator,
        val_batch=_batch_sampler(val_split, tasks, settings.batch_size, generator),
        batched_jacobian=batched_jacobian(settings, device),
    )  # fmt: skip
    schedulers = [
        torch.optim.lr_scheduler.StepLR(
            o, step_size=settings.lr_step_every, gamma=settings.lr_gamma
        )
        for o in updater.optimizers
    ]

    state = RunState()
    checkpoint = out / CHECKPOINT
    clean_stale_temporaries(out)
    if checkpoint.exists():
        payload = load_checkpoint(checkpoint)
        if payload.get("identity") == identity:
            state = _restore(checkpoint, payload, model, updater, schedulers, method, generator,
                             callbacks)  # fmt: skip
            log.info("resuming %s after epoch %d (run identity %s)", out, state.epoch, identity)
        else:
            aside = move_aside(checkpoint, payload.get("identity"))
            log.warning(
                "%s was written by another run (identity %s; this run: %s): other settings, "
                "data or baseline. Moved it to %s; training from scratch",
                checkpoint, payload.get("identity") or "none recorded", identity, aside.name,
            )  # fmt: skip
        del payload

    baseline_val = dict(baseline["val"]) if baseline is not None else None
    baseline_test = dict(baseline["test"]) if baseline is not None else None
    stop_at = state.epoch + stop_after_epochs if stop_after_epochs is not None else None
    bar = tqdm(
        range(state.epoch, settings.epochs), initial=state.epoch, total=settings.epochs,
        desc=f"train {out}", disable=None if progress is None else not progress, leave=False,
    )  # fmt: skip
    model.train()
    for epoch in bar:
        if state.diverged:
            break
        started = time.perf_counter()
        loss_sum, weight_sum, steps, first_losses = _train_epoch(
            updater, tasks, train_split, settings, generator, callbacks, epoch
        )
        method.epoch_end((loss_sum / steps).detach())
        mean_losses = (loss_sum / steps).tolist()
        if state.initial_loss is None:
            state.initial_loss = float(first_losses.sum())
        _check_divergence(state, settings, epoch + 1, "training", mean_losses, out)
        record: dict[str, Any] = {
            "epoch": epoch + 1,
            "lr": schedulers[0].get_last_lr()[0],
            "path_length": updater.path.total.item(),
        }
        record |= {f"train_loss/{name}": v for name, v in zip(tasks, mean_losses, strict=True)}
        record |= {
            f"weight/{name}": v
            for name, v in zip(tasks, (weight_sum / steps).tolist(), strict=True)
        }
        if not state.diverged:
            val, val_loss = evaluate(
                model, tasks, val_split, settings.eval_batch_size, autocast, settings.channels_last
            )
            test, _ = evaluate(
                model, tasks, test_split, settings.eval_batch_size, autocast, settings.channels_last
            )
            record["val_loss"] = val_loss
            record |= {f"val/{k}": v for k, v in val.items()}
            record |= {f"test/{k}": v for k, v in test.items()}
            if not all(math.isfinite(v) for v in (val_loss, *val.values(), *test.values())):
                # The parameters blew up late in the epoch: the model predicts NaN/inf.
                _mark_diverged(state, epoch + 1, "non-finite evaluation", out)
        if not state.diverged:
            if baseline_val is not None and baseline_test is not None:
                record["val_delta_m"] = delta(val, _restrict(baseline_val, val), directions)
                record["test_delta_m"] = delta(test, _restrict(baseline_test, test), directions)
            score = record["val_delta_m"] if settings.selection == "delta_m" else val_loss
            # An epoch whose validation loss exploded is never selected; training goes on (high
            # learning rates can spike in one epoch and recover). No such epoch: diverged.
            exploded = divergence_reason(
                [val_loss], state.initial_loss, settings.divergence_factor, "validation"
            )
            if exploded is not None:
                state.unselectable = f"epoch {epoch + 1}: {exploded}"
                log.info("%s: epoch %d is not selectable (%s)", out, epoch + 1, exploded)
            elif math.isfinite(score) and (state.best is None or score < state.best["score"]):
                state.best = {"score": score, "epoch": epoch + 1, "val": val, "test": test} | {
                    k: record[k] for k in ("val_delta_m", "test_delta_m") if k in record
                }
        record["seconds"] = time.perf_counter() - started
        state.history.append(record)
        state.epoch = epoch + 1
        for callback in callbacks:
            callback.on_epoch_end(state.epoch, model)
        for scheduler in schedulers:
            scheduler.step()
        _save(checkpoint, state, identity, model, updater, schedulers, method, generator,
              callbacks)  # fmt: skip
        if stop_at is not None and state.epoch >= stop_at:
            return {}
    bar.close()
    if state.best is None and not state.diverged and state.unselectable is not None:
        state.diverged = True
        state.divergence = f"no selectable epoch; the last: {state.unselectable}"
        log.warning("%s diverged: %s", out, state.divergence)
    return _finish(out, settings, state, identity)


def _mark_diverged(state: RunState, epoch: int, reason: str, out: Path) -> None:
    if not state.diverged:
        state.diverged, state.divergence = True, f"epoch {epoch}: {reason}"
        log.warning("%s diverged in epoch %d: %s", out, epoch, reason)


def divergence_reason(
    losses: Sequence[float], initial_loss: float | None, factor: float, what: str = "training"
) -> str | None:
    """Why ``losses`` (one epoch's mean training loss per task, or the summed validation loss)
    mark a run diverged, or ``None``: a non-finite value, or a sum above ``factor`` times the
    first step's summed loss ``initial_loss`` (module doc, "Divergence")."""
    if not all(math.isfinite(v) for v in losses):
        return f"non-finite {what} loss {list(losses)}"
    total = sum(losses)
    usable = initial_loss is not None and math.isfinite(initial_loss) and initial_loss > 0
    if usable and total > factor * initial_loss:  # type: ignore[operator]
        return (
            f"{what} loss {total:.4g} exceeds divergence_factor {factor:g} x the first "
            f"step's loss {initial_loss:.4g}"
        )
    return None


def _check_divergence(
    state: RunState,
    settings: TrainSettings,
    epoch: int,
    what: str,
    losses: Sequence[float],
    out: Path,
) -> None:
    reason = divergence_reason(losses, state.initial_loss, settings.divergence_factor, what)
    if reason is not None:
        _mark_diverged(state, epoch, reason, out)


def _restrict(baseline: Mapping[str, float], metrics: Mapping[str, float]) -> dict[str, float]:
    missing = sorted(set(metrics) - set(baseline))
    if missing:
        raise ValueError(f"baseline lacks metric(s) {missing}")
    return {k: baseline[k] for k in metrics}


def _batch_sampler(
    split: MTANSplit, tasks: Mapping[str, Task], batch_size: int, generator: torch.Generator
) -> Callable[[], tuple[Tensor, dict[str, Tensor]]]:
    """Random batches of ``split`` (for methods that look at validation data: Auto-Lambda)."""

    def sample() -> tuple[Tensor, dict[str, Tensor]]:
        idx = torch.randperm(len(split), generator=generator)[:batch_size].to(split.images.device)
        return split.images[idx], {name: split.targets[name][idx] for name in tasks}

    return sample


def _train_epoch(
    updater: Updater,
    tasks: Mapping[str, Task],
    split: MTANSplit,
    settings: TrainSettings,
    generator: torch.Generator,
    callbacks: Sequence[TrainCallback] = (),
    epoch: int = 0,
) -> tuple[Tensor, Tensor, int, Tensor]:
    """One epoch: the summed per-task losses and weights, the number of steps, and the first
    step's per-task losses."""
    device = split.images.device
    first_iteration = epoch * (len(split) // settings.batch_size)
    order = torch.randperm(len(split), generator=generator).to(device)
    num_tasks = len(tasks)
    loss_sum = torch.zeros(num_tasks, device=device)
    weight_sum = torch.zeros(num_tasks, device=device)
    steps = 0
    # Drop the last incomplete batch (BatchNorm on a single sample is undefined).
    for start in range(0, len(split) - settings.batch_size + 1, settings.batch_size):
        idx = order[start : start + settings.batch_size]
        images = split.images[idx]
        targets = {name: split.targets[name][idx] for name in tasks}
        if settings.augment:
            images, targets = augment_batch(images, targets, generator)
        if settings.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        for callback in callbacks:
            callback.on_step(first_iteration + steps, updater.model, tasks, images, targets)
        out = updater.step(images, targets)
        if steps == 0:
            first_losses = out.losses.detach().clone()
        loss_sum += out.losses
        weight_sum += out.weights.to(weight_sum.dtype)
        steps += 1
    if steps == 0:
        raise SettingsError(
            f"train.batch_size {settings.batch_size} exceeds the {len(split)} training images"
        )
    return loss_sum, weight_sum, steps, first_losses


def _save(
    path: Path,
    state: RunState,
    identity: str,
    model: nn.Module,
    updater: Updater,
    schedulers: Sequence[Any],
    method: Method,
    generator: torch.Generator,
    callbacks: Sequence[TrainCallback] = (),
) -> None:
    parts = {
        "model": model.state_dict(),
        "updater": updater.state_dict(),
        "schedulers": [s.state_dict() for s in schedulers],
        "method": method.state_dict(),
        "generator": generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "callbacks": [callback.state_dict() for callback in callbacks],
    }
    save_checkpoint(path, state, identity, parts)


def _restore(
    path: Path,
    payload: Mapping[str, Any],
    model: nn.Module,
    updater: Updater,
    schedulers: Sequence[Any],
    method: Method,
    generator: torch.Generator,
    callbacks: Sequence[TrainCallback] = (),
) -> RunState:
    """Load a checkpoint of this run's identity into the run's objects."""
    try:
        model.load_state_dict(payload["model"])
        method.load_state_dict(payload["method"])
        updater.load_state_dict(payload["updater"])
        for scheduler, saved in zip(schedulers, payload["schedulers"], strict=True):
            scheduler.load_state_dict(saved)
        generator.set_state(payload["generator"])
        torch.set_rng_state(payload["torch_rng"])
        if payload["cuda_rng"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(payload["cuda_rng"])
        saved_callbacks = payload.get("callbacks", [])
        if len(saved_callbacks) != len(callbacks):
            raise ValueError(
                f"it holds {len(saved_callbacks)} callback state(s), the run has {len(callbacks)}"
            )
        for callback, saved in zip(callbacks, saved_callbacks, strict=True):
            callback.load_state_dict(saved)
        return RunState(**payload["state"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise CheckpointError(
            f"{path}: carries this run's identity but does not fit the run ({reason[:200]}); it "
            "is left as it is: move it away (or delete it) to restart this run from scratch"
        ) from err


def _finish(out: Path, settings: TrainSettings, state: RunState, identity: str) -> dict[str, Any]:
    history = pd.DataFrame(state.history)
    history["run_identity"] = identity
    atomic_write(out / HISTORY, lambda p: history.to_csv(p, index=False))
    best = state.best
    metrics: dict[str, Any] = {
        "settings": asdict(settings),
        "run_identity": identity,
        "diverged": state.diverged,
        "divergence": state.divergence,
        "epochs_run": state.epoch,
        "selected_epoch": best["epoch"] if best else None,
        "val": best["val"] if best else None,
        "test": best["test"] if best else None,
        "val_delta_m": best.get("val_delta_m") if best else None,
        "test_delta_m": best.get("test_delta_m") if best else None,
        "val_loss_selected": best["score"] if best and settings.selection == "val_loss" else None,
    }
    write_json(out / METRICS, metrics)
    return metrics
