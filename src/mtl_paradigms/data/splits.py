"""One entry point for the trainer: a dataset's tasks and its (train, val, test) splits.

* ``nyuv2`` / ``cityscapes``: the MTAN folders and the paper's hold-out
  (:func:`mtl_paradigms.data.mtan.paper_splits`); dense tasks of :mod:`mtl_paradigms.tasks`.
* ``celeba``: a prepared CelebA folder (:mod:`mtl_paradigms.data.celeba`), the official
  partition; one binary task per attribute (all attributes unless ``tasks`` names some).

Every split has ``images`` ``(N, 3, H, W)`` and ``targets`` (task -> tensor with first
dimension ``N``), ``len()``, ``subset()``, ``batch()`` and ``to()``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from mtl_paradigms.data.celeba import AttributeSplit, attribute_names, celeba_splits
from mtl_paradigms.data.mtan import MTANSplit, paper_splits
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import Task, attribute_tasks, make_tasks

Split = MTANSplit | AttributeSplit
DENSE_DATASETS: tuple[str, ...] = ("nyuv2", "cityscapes")
ATTRIBUTE_DATASETS: tuple[str, ...] = ("celeba",)


class DataSettings(Protocol):
    """What the dispatcher reads of ``TrainSettings``."""

    dataset: str
    data_dir: str
    val_size: int
    seed: int
    tasks: list[str] | None
    cityscapes_labels: str

    @property
    def classes(self) -> int: ...

    @property
    def task_names(self) -> list[str]: ...


def dataset_tasks(settings: DataSettings) -> dict[str, Task]:
    """The run's tasks, keyed by name, in the dataset's order (or the order of ``tasks``)."""
    if settings.dataset in ATTRIBUTE_DATASETS:
        available = attribute_names(settings.data_dir)
        chosen = list(settings.tasks) if settings.tasks is not None else available
        unknown = [t for t in chosen if t not in available]
        if unknown or not chosen:
            raise SettingsError(
                f"train.tasks: {unknown or chosen} not attributes of {settings.data_dir} "
                f"(available: {available})"
            )
        return attribute_tasks(chosen)
    all_tasks = make_tasks(settings.dataset, settings.classes)  # type: ignore[arg-type]
    return {name: all_tasks[name] for name in settings.task_names}


def load_splits(settings: DataSettings, tasks: Sequence[str]) -> tuple[Split, Split, Split]:
    """(train, val, test) of the run's dataset, holding the targets of ``tasks``."""
    if settings.dataset in ATTRIBUTE_DATASETS:
        return celeba_splits(settings.data_dir, list(tasks))
    if settings.dataset not in DENSE_DATASETS:
        raise SettingsError(f"train.dataset: unknown dataset {settings.dataset!r}")
    return paper_splits(
        settings.data_dir, settings.dataset, settings.val_size, settings.seed,  # type: ignore[arg-type]
        tasks=list(tasks), cityscapes_labels=settings.cityscapes_labels,  # type: ignore[arg-type]
    )  # fmt: skip
