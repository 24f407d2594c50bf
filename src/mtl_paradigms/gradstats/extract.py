"""Gradient statistics during training (a trainer callback) and from saved checkpoints.

During training (:class:`GradStatsCallback`, passed to :func:`mtl_paradigms.train.train`): every
``every`` iterations (counted over the whole run, the first iteration included) and before that
iteration's update, ``samples`` samples of the batch and at most ``max_tasks`` tasks are drawn at
random (all of them when there are no more), their per-sample x per-task gradients of the shared
parameters are computed (:mod:`.layers`, or :mod:`.persample`'s ``vmap``) and every pair statistic
(:mod:`.stats`) is kept. At the end of each epoch the epoch's pairs are summarised into
``gradstats.csv`` (:data:`~mtl_paradigms.gradstats.SUMMARY_COLUMNS`) by an atomic rewrite that
first drops any rows of that epoch or later; the callback's random generator is saved in the
trainer's checkpoint. A resumed run therefore writes exactly the table of an uninterrupted one
(tested), and the training itself is identical with and without the callback (it draws from its own
generator and touches neither the parameters, their gradients nor the BatchNorm buffers).

From checkpoints (:func:`stats_from_checkpoints`): for each saved model state, the same
statistics on ``checkpoint_batches`` training batches, the same batches for every checkpoint
(drawn, and augmented if the run augments, from a generator seeded by the run's seed). A run
trained with ``save_snapshots: true`` keeps ``snapshots/epoch<e>.pt`` (the model after epoch
``e``) for this; the trainer's own ``checkpoint.pt`` (the last epoch) is accepted as well.
"""

from __future__ import annotations

import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd
import torch
from torch import Tensor
from tqdm.auto import tqdm

from mtl_paradigms.gradstats import SUMMARY_COLUMNS
from mtl_paradigms.gradstats.layers import layerwise_per_sample_task_gradients, supports_layerwise
from mtl_paradigms.gradstats.persample import per_sample_task_gradients
from mtl_paradigms.gradstats.stats import StepStatistics, gradient_statistics, summarise
from mtl_paradigms.io import atomic_path, atomic_write
from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import Task

if TYPE_CHECKING:  # the trainer imports a lot; it is loaded where it is used
    from mtl_paradigms.train import TrainSettings

log = logging.getLogger(__name__)

STATS_FILE = "gradstats.csv"
SNAPSHOT_DIR = "snapshots"
ENGINES: tuple[str, ...] = ("auto", "layerwise", "vmap")
#: Offset of the extraction's generator seed from the run's seed (independent of the trainer's).
SEED_OFFSET = 7919


@dataclass(frozen=True)
class GradStatsSettings:
    """How gradient statistics are extracted (config section ``gradstats.extract``).

    Defaults are the paper's: every 5 iterations, 8 random samples and at most 8 random tasks.
    ``bn``: BatchNorm statistics of the per-sample passes, ``batch`` (the training batch's,
    as constants) or ``eval`` (running statistics); see :mod:`.persample`. ``engine``: how the
    gradients are computed, ``layerwise`` (:mod:`.layers`: one batched forward and ``T``
    backward passes), ``vmap`` (:mod:`.persample`) or ``auto`` (layer-wise where every shared
    layer is supported, else ``vmap``); all give the same numbers up to rounding.
    ``chunk_size``: samples per ``vmap`` chunk (``null``: all at once). ``save_snapshots`` keeps
    the model after every epoch for :func:`stats_from_checkpoints`; ``checkpoint_batches`` is how
    many batches that function uses per checkpoint.
    """

    every: int = 5
    samples: int = 8
    max_tasks: int = 8
    bn: Literal["batch", "eval"] = "batch"
    engine: Literal["auto", "layerwise", "vmap"] = "auto"
    chunk_size: int | None = None
    save_snapshots: bool = False
    checkpoint_batches: int = 4

    def __post_init__(self) -> None:
        for name in ("every", "max_tasks", "checkpoint_batches"):
            value = getattr(self, name)
            if value < 1:
                raise SettingsError(f"gradstats.{name} must be at least 1, got {value}")
        if self.samples < 2:
            raise SettingsError(
                f"gradstats.samples must be at least 2 (inter-sample pairs), got {self.samples}"
            )
        if self.engine not in ENGINES:
            raise SettingsError(
                f"gradstats.engine must be one of {list(ENGINES)}, got {self.engine!r}"
            )
        if self.chunk_size is not None and self.chunk_size < 1:
            raise SettingsError(f"gradstats.chunk_size must be null or >= 1, got {self.chunk_size}")


@dataclass(frozen=True)
class Extraction:
    """One extraction: its statistics, the batch positions of the samples and the task names."""

    statistics: StepStatistics
    samples: list[int]
    tasks: list[str]


def draw_subset(
    batch_size: int, task_names: Sequence[str], settings: GradStatsSettings, generator: Tensor
) -> tuple[list[int], list[str]]:
    """Random samples (sorted batch positions) and tasks (in the model's order) to extract."""
    samples = torch.randperm(batch_size, generator=generator)[: settings.samples]
    names = list(task_names)
    if len(names) > settings.max_tasks:
        chosen = torch.randperm(len(names), generator=generator)[: settings.max_tasks]
        names = [names[i] for i in sorted(chosen.tolist())]
    return sorted(samples.tolist()), names


def extract(
    model: MultiTaskModel,
    tasks: Mapping[str, Task],
    images: Tensor,
    targets: Mapping[str, Tensor],
    settings: GradStatsSettings,
    generator: torch.Generator,
) -> Extraction:
    """Draw a subset of ``images`` and tasks, and compute its gradient statistics."""
    samples, names = draw_subset(images.shape[0], list(tasks), settings, generator)
    idx = torch.as_tensor(samples, device=images.device)
    chosen = {name: tasks[name] for name in names}
    sub_images, sub_targets = images[idx], {name: targets[name][idx] for name in names}
    engine = settings.engine
    if engine == "auto":
        engine = "layerwise" if supports_layerwise(model) else "vmap"
    if engine == "layerwise":
        grads = layerwise_per_sample_task_gradients(
            model, chosen, sub_images, sub_targets, bn=settings.bn, stats_images=images
        )
    else:
        grads = per_sample_task_gradients(
            model, chosen, sub_images, sub_targets, bn=settings.bn, stats_images=images,
            chunk_size=settings.chunk_size,
        )  # fmt: skip
    return Extraction(gradient_statistics(grads), samples, names)


def write_epoch_rows(path: str | os.PathLike[str], rows: pd.DataFrame, epoch: int) -> None:
    """Atomically rewrite ``path`` with ``rows`` replacing every row of ``epoch`` and later."""
    path = Path(path)
    frames = []
    if path.exists():
        old = pd.read_csv(path)
        frames.append(old[old["epoch"] < epoch])
    frames.append(rows)
    kept = [f for f in frames if len(f)]
    table = pd.concat(kept, ignore_index=True) if kept else rows
    table = table.reindex(columns=list(SUMMARY_COLUMNS))
    atomic_write(path, lambda p: table.to_csv(p, index=False))


class GradStatsCallback:
    """Trainer callback (:class:`mtl_paradigms.train.TrainCallback`) writing ``gradstats.csv``."""

    def __init__(self, settings: GradStatsSettings, out_dir: str | os.PathLike[str], seed: int):
        self.settings = settings
        self.out = Path(out_dir)
        self.generator = torch.Generator().manual_seed(seed + SEED_OFFSET)
        self._pairs: list[pd.DataFrame] = []
        self._interference: list[float] = []

    @property
    def path(self) -> Path:
        return self.out / STATS_FILE

    def on_step(
        self,
        iteration: int,
        model: MultiTaskModel,
        tasks: Mapping[str, Task],
        images: Tensor,
        targets: Mapping[str, Tensor],
    ) -> None:
        if iteration % self.settings.every:
            return
        result = extract(model, tasks, images, targets, self.settings, self.generator)
        self._pairs.append(result.statistics.pairs)
        self._interference.append(result.statistics.interference)

    def on_epoch_end(self, epoch: int, model: MultiTaskModel) -> None:
        if self._pairs:
            pairs = pd.concat(self._pairs, ignore_index=True)
            rows = summarise(pairs, self._interference, keys={"epoch": epoch})
            write_epoch_rows(self.path, rows, epoch)
        self._pairs, self._interference = [], []
        if self.settings.save_snapshots:
            snapshot = self.out / SNAPSHOT_DIR / f"epoch{epoch:04d}.pt"
            with atomic_path(snapshot) as tmp:
                torch.save({"epoch": epoch, "model": model.state_dict()}, tmp)

    def state_dict(self) -> dict[str, Any]:
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.generator.set_state(state["generator"])

    def identity(self) -> dict[str, Any]:
        """The settings that shape ``gradstats.csv``: part of the run's identity."""
        return {"gradstats": asdict(self.settings)}


def train_with_gradstats(
    train_settings: TrainSettings,
    settings: GradStatsSettings,
    out_dir: str | os.PathLike[str],
    baseline: Mapping[str, Mapping[str, float]] | None = None,
    progress: bool | None = None,
    stop_after_epochs: int | None = None,
) -> dict[str, Any]:
    """Train one run (:func:`mtl_paradigms.train.train`) with the gradient-statistics callback.

    Writes the trainer's files and ``gradstats.csv`` (plus ``snapshots/`` if asked) into
    ``out_dir``; resumes like the trainer.
    """
    from mtl_paradigms.train import train

    callback = GradStatsCallback(settings, out_dir, train_settings.seed)
    return train(
        train_settings,
        out_dir,
        baseline=baseline,
        progress=progress,
        stop_after_epochs=stop_after_epochs,
        callbacks=[callback],
    )


# ---------------------------------------------------------------------------------------------
# From checkpoints
# ---------------------------------------------------------------------------------------------

_EPOCH_FILE = re.compile(r"epoch(\d+)\.pt$")


def checkpoint_files(paths: Sequence[str | os.PathLike[str]]) -> list[Path]:
    """Checkpoint files from files and directories (a directory gives its ``epoch*.pt``)."""
    files: list[Path] = []
    for item in map(Path, paths):
        if item.is_dir():
            found = sorted(p for p in item.iterdir() if _EPOCH_FILE.search(p.name))
            if not found:
                raise FileNotFoundError(f"{item}: no epoch<e>.pt snapshots in this directory")
            files += found
        elif item.is_file():
            files.append(item)
        else:
            raise FileNotFoundError(f"checkpoint not found: {item}")
    return files


def load_model_state(path: str | os.PathLike[str]) -> tuple[int, dict[str, Tensor]]:
    """``(epoch, model state)`` of a snapshot (``{"epoch", "model"}``) or a trainer checkpoint."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise ValueError(f"{path}: cannot read the checkpoint ({err})") from err
    if not isinstance(payload, Mapping) or "model" not in payload:
        raise ValueError(f"{path}: not a model snapshot or trainer checkpoint (no 'model' entry)")
    if "epoch" in payload:
        epoch = payload["epoch"]
    elif isinstance(payload.get("state"), Mapping) and "epoch" in payload["state"]:
        epoch = payload["state"]["epoch"]
    else:
        raise ValueError(f"{path}: the checkpoint does not say its epoch")
    return int(epoch), payload["model"]


def stats_from_checkpoints(
    train_settings: TrainSettings,
    settings: GradStatsSettings,
    checkpoints: Sequence[str | os.PathLike[str]],
    progress: bool | None = None,
) -> pd.DataFrame:
    """The summary table (one block of rows per checkpoint, ``epoch`` from the checkpoint).

    ``train_settings`` (:class:`mtl_paradigms.train.TrainSettings`) must describe the run that
    wrote the checkpoints (dataset, tasks, architecture, width, seed).
    """
    from mtl_paradigms.data.mtan import paper_splits
    from mtl_paradigms.data.transforms import augment_batch
    from mtl_paradigms.models import build_model
    from mtl_paradigms.tasks import make_tasks
    from mtl_paradigms.train import resolve_device

    files = checkpoint_files(checkpoints)
    device = resolve_device(train_settings.device)
    all_tasks = make_tasks(train_settings.dataset, train_settings.classes)
    tasks = {name: all_tasks[name] for name in train_settings.task_names}
    split, _, _ = paper_splits(
        train_settings.data_dir, train_settings.dataset, train_settings.val_size,
        train_settings.seed, tasks=list(tasks), cityscapes_labels=train_settings.cityscapes_labels,
    )  # fmt: skip
    split = split.to(device)
    batch = train_settings.batch_size
    if len(split) < batch:
        raise SettingsError(f"train.batch_size {batch} exceeds the {len(split)} training images")
    model = build_model(
        train_settings.arch,
        {name: task.out_channels for name, task in tasks.items()},
        width=train_settings.width,
        single_task=len(tasks) == 1,
    ).to(device)
    seed = train_settings.seed + SEED_OFFSET
    blocks = []
    disable = None if progress is None else not progress
    for path in tqdm(files, desc="gradstats checkpoints", disable=disable):
        epoch, state = load_model_state(path)
        try:
            model.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(f"{path}: the model state does not fit the settings ({err})") from err
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(split), generator=generator).to(device)
        num_batches = min(settings.checkpoint_batches, len(split) // batch)
        pairs, interference = [], []
        for b in range(num_batches):
            idx = order[b * batch : (b + 1) * batch]
            images = split.images[idx]
            targets = {name: split.targets[name][idx] for name in tasks}
            if train_settings.augment:
                images, targets = augment_batch(images, targets, generator)
            result = extract(model, tasks, images, targets, settings, generator)
            pairs.append(result.statistics.pairs)
            interference.append(result.statistics.interference)
        blocks.append(
            summarise(pd.concat(pairs, ignore_index=True), interference, keys={"epoch": epoch})
        )
        log.info("%s: epoch %d, %d batches", path, epoch, num_batches)
    table = pd.concat(blocks, ignore_index=True).sort_values("epoch", kind="mergesort")
    return table.reset_index(drop=True).reindex(columns=list(SUMMARY_COLUMNS))


def selected_lr(
    runs_path: str | os.PathLike[str], dataset: str, arch: str, method: str = "ew",
    optimizer: str = "adam",
) -> float:  # fmt: skip
    """The learning rate the main analysis selected for ``method`` x ``optimizer`` on a panel.

    The paper extracts gradient statistics on its best EW + Adam configuration; this reads that
    choice from the main experiment's ``runs.csv`` (:func:`~mtl_paradigms.analysis.grid.
    select_learning_rates`).
    """
    from mtl_paradigms.analysis.grid import load_runs, select_learning_rates

    selection = select_learning_rates(load_runs(runs_path))
    row = selection[
        (selection["dataset"] == dataset)
        & (selection["arch"] == arch)
        & (selection["method"] == method)
        & (selection["optimizer"] == optimizer)
    ]
    if row.empty or not math.isfinite(float(row["lr"].iloc[0])):
        raise ValueError(
            f"{runs_path}: no selected learning rate for {dataset}/{arch} {method} + {optimizer}"
        )
    return float(row["lr"].iloc[0])
