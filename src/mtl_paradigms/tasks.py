"""Tasks: each task kind is its loss, its metrics and their higher-is-better flags.

Conventions (``shared/spec/data-and-metrics.md``, "Losses" and "Metrics")
--------------------------------------------------------------------------
Shapes are batch-first and channels-first: predictions ``N x C x H x W`` straight from a head.
Targets: segmentation ``N x H x W`` (or ``N x 1 x H x W``) class indices, ``-1`` = ignore (float
label maps as stored by MTAN's preprocessing are cast with ``.long()``); depth ``N x 1 x H x W``
(or ``N x H x W``), ``0`` = invalid; normals ``N x 3 x H x W``, all-zero = invalid; binary
attributes ``N`` (or ``N x 1``) in ``{0, 1}``.

Losses are scalars averaged over the *valid* pixels of the batch (a batch without any valid pixel
gives loss 0, not NaN); invalid pixels contribute neither value nor gradient.

* segmentation: cross-entropy on logits, ignore index ``-1`` (computed as log-softmax + gather,
  equal to ``F.cross_entropy(ignore_index=-1)`` and usable under
  ``torch.use_deterministic_algorithms(True)`` on CUDA, where ``nll_loss2d`` is refused).
* depth: L1 over pixels with target != 0.
* normal: ``1 - <p_hat, g>`` over pixels whose target vector is not all zero, with
  ``p_hat = p / ||p||`` (the prediction is L2-normalised here, not in the model; ``g`` is used as
  given: unit vectors in the data, as MTAN and LibMTL do).
* binary: binary cross-entropy with logits, averaged over the batch.

Metrics are accumulated over a whole split by a :class:`Meter` and computed once at the end, so
they are statistics over all valid pixels of the split, not averages of per-batch values.
``Meter.update`` stays on the device and never synchronises with the host (no ``.item()``,
``.cpu()``, ``bool(tensor)``; counts are added with ``index_add_`` into fixed-size integer
tensors, not with ``torch.bincount``, which on CUDA reads the input's maximum back to the host);
``Meter.compute`` synchronises once.

* segmentation (``miou``, ``pixacc``; higher is better): a ``C x C`` confusion matrix over the
  valid pixels (rows: target, columns: prediction). ``IoU_c = TP/(TP + FP + FN)``; ``miou`` is
  the mean of ``IoU_c`` over the classes *present in the split*, i.e. those occurring in the
  target or in the prediction of some valid pixel (``TP + FP + FN > 0``): a class absent from
  both is skipped (it would be 0/0), never turned into NaN or 0. This is MTAN's per-image rule
  applied to the whole split, and LibMTL's ``SegMetric`` whenever every class occurs.
  ``pixacc = trace / number of valid pixels``. Targets outside ``{-1, 0..C-1}`` are counted and
  make ``compute`` raise.
* depth (``abs_err``, ``rel_err``; lower is better): ``mean |p - g|`` and ``mean |p - g| / g``
  over all valid pixels of the split.
* normal (``mean``, ``median``; lower is better; ``within_11.25``, ``within_22.5``,
  ``within_30``; fractions of pixels with angle strictly below the threshold, higher is better):
  ``angle = degrees(arccos(clamp(<p_hat, g>, -1, 1)))`` in float64 over all valid pixels. Valid
  means "any component of g is non-zero" (MTAN and LibMTL test ``sum(g) != 0``, which also drops
  the rare unit vectors whose components sum to 0). The median cannot keep every angle of a split
  in memory, so the meter keeps a histogram of ``bin_width_deg`` (default 0.01 deg, 18,000 bins
  over [0, 180]) and reports the centre of the bin holding the lower median (the
  ``ceil(n/2)``-th smallest angle, the element ``torch.median`` returns): the result is within
  half a bin (0.005 deg) of ``torch.median`` of all angles. Mean and threshold fractions are exact.
* binary (``accuracy``, ``f1``; higher is better): logit > 0 predicts the positive class;
  ``f1 = 2 TP / (2 TP + FP + FN)``, and 0 when the split has neither a positive target nor a
  positive prediction (scikit-learn's ``zero_division=0``).

Metric keys used by the rest of the project are ``"task/metric"`` (:func:`metric_key`), e.g.
``"segmentation/miou"``; :func:`metric_directions` maps them to higher-is-better.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

TaskKind = Literal["segmentation", "depth", "normal", "binary"]
Device = torch.device | str

IGNORE_INDEX = -1
NORMAL_THRESHOLDS: tuple[float, ...] = (11.25, 22.5, 30.0)


@dataclass(frozen=True)
class MetricSpec:
    """A metric's name (as returned by ``Meter.compute``) and its direction."""

    name: str
    higher_is_better: bool


def metric_key(task: str, metric: str) -> str:
    """The project-wide key of a task's metric: ``"task/metric"``."""
    return f"{task}/{metric}"


# ---------------------------------------------------------------------------------------------
# Shape helpers


def _as_channels(target: Tensor, pred: Tensor, channels: int, what: str) -> Tensor:
    """``target`` as ``N x channels x H x W`` matching ``pred`` (accepts ``N x H x W`` if C=1)."""
    if pred.ndim != 4 or pred.shape[1] != channels:
        raise ValueError(f"{what}: expected predictions N x {channels} x H x W, got {_s(pred)}")
    if channels == 1 and target.ndim == 3:
        target = target.unsqueeze(1)
    if target.shape != pred.shape:
        raise ValueError(f"{what}: target {_s(target)} does not match prediction {_s(pred)}")
    return target


def _seg_target(pred: Tensor, target: Tensor, num_classes: int) -> Tensor:
    if target.ndim == 4 and target.shape[1] == 1:
        target = target.squeeze(1)
    if pred.ndim != 4 or pred.shape[1] != num_classes:
        raise ValueError(f"segmentation: expected logits N x {num_classes} x H x W, got {_s(pred)}")
    if target.shape != pred.shape[:1] + pred.shape[2:]:
        raise ValueError(
            f"segmentation: target {_s(target)} does not match logits {_s(pred)} (N x H x W)"
        )
    return target.long()


def _binary_pair(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    if pred.numel() != target.numel() or pred.shape[:1] != target.shape[:1]:
        raise ValueError(f"binary: prediction {_s(pred)} and target {_s(target)} do not match")
    return pred.reshape(-1), target.reshape(-1)


def _s(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _masked_mean(values: Tensor, valid: Tensor) -> Tensor:
    """Mean of ``values`` over ``valid`` (0 when nothing is valid); no host synchronisation."""
    total = torch.where(valid, values, torch.zeros((), dtype=values.dtype, device=values.device))
    return total.sum() / valid.sum().clamp_min(1)


def _ones_like_index(index: Tensor) -> Tensor:
    return torch.ones(index.shape, dtype=torch.int64, device=index.device)


def _zeros(device: Device, dtype: torch.dtype = torch.int64, n: int | None = None) -> Tensor:
    shape = () if n is None else (n,)
    return torch.zeros(shape, dtype=dtype, device=device)


# ---------------------------------------------------------------------------------------------
# Meters


class Meter(ABC):
    """Accumulates one task's metric statistics over a split, on the device."""

    @abstractmethod
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add a batch; stays on the device (no host synchronisation)."""

    @abstractmethod
    def compute(self) -> dict[str, float]:
        """The metrics over everything added since construction or :meth:`reset`."""

    @abstractmethod
    def reset(self) -> None:
        """Forget everything added."""


class _EmptySplitError(ValueError):
    pass


def _require(count: Tensor, task: str) -> int:
    n = int(count.item())
    if n == 0:
        raise _EmptySplitError(f"{task}: no valid element was accumulated; nothing to compute")
    return n


class ConfusionMatrixMeter(Meter):
    """Segmentation: confusion matrix over the valid pixels of a split."""

    def __init__(self, num_classes: int, device: Device = "cpu") -> None:
        self.num_classes = num_classes
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        c = self.num_classes
        # c*c cells, then one bin that swallows ignored pixels, then one for bad targets.
        self._counts = _zeros(self.device, n=c * c + 2)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        c = self.num_classes
        target = _seg_target(pred, target, c)
        labels = pred.argmax(dim=1)
        in_range = (target >= 0) & (target < c)
        index = torch.where(in_range, target * c + labels, c * c)
        index = torch.where(in_range | (target == IGNORE_INDEX), index, c * c + 1)
        index = index.reshape(-1).to(self.device)
        self._counts.index_add_(0, index, _ones_like_index(index))

    def confusion_matrix(self) -> Tensor:
        """``C x C`` counts; rows are targets, columns predictions (a copy)."""
        c = self.num_classes
        return self._counts[: c * c].reshape(c, c).clone()

    def compute(self) -> dict[str, float]:
        c = self.num_classes
        counts = self._counts.cpu()
        bad = int(counts[c * c + 1])
        if bad:
            raise ValueError(
                f"segmentation: {bad} target pixels are outside {{-1, 0..{c - 1}}} "
                f"(num_classes={c})"
            )
        cm = counts[: c * c].reshape(c, c).to(torch.float64)
        valid = cm.sum()
        _require(valid, "segmentation")
        tp = cm.diagonal()
        union = cm.sum(0) + cm.sum(1) - tp
        present = union > 0
        miou = (tp[present] / union[present]).mean()
        return {"miou": float(miou), "pixacc": float(tp.sum() / valid)}


class DepthMeter(Meter):
    """Depth: absolute and relative error over the valid (target != 0) pixels of a split."""

    def __init__(self, device: Device = "cpu") -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._abs = _zeros(self.device, torch.float64)
        self._rel = _zeros(self.device, torch.float64)
        self._count = _zeros(self.device)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        target = _as_channels(target, pred, 1, "depth")
        pred, target = pred.double(), target.double()
        valid = target != 0
        err = (pred - target).abs()
        zero = torch.zeros((), dtype=torch.float64, device=err.device)
        rel = err / torch.where(valid, target, torch.ones_like(target))
        self._abs += torch.where(valid, err, zero).sum().to(self.device)
        self._rel += torch.where(valid, rel, zero).sum().to(self.device)
        self._count += valid.sum().to(self.device)

    def compute(self) -> dict[str, float]:
        n = _require(self._count, "depth")
        return {"abs_err": float(self._abs) / n, "rel_err": float(self._rel) / n}


def normal_angles(pred: Tensor, target: Tensor) -> tuple[Tensor, Tensor]:
    """Per-pixel angle in degrees (float64, ``N x H x W``) and the validity mask."""
    target = _as_channels(target, pred, 3, "normal")
    valid = (target != 0).any(dim=1)
    p_hat = F.normalize(pred.double(), p=2.0, dim=1)
    cos = (p_hat * target.double()).sum(dim=1).clamp(-1.0, 1.0)
    return torch.rad2deg(torch.acos(cos)), valid


class NormalMeter(Meter):
    """Surface normals: angular error statistics, the median from a fine histogram."""

    def __init__(self, device: Device = "cpu", bin_width_deg: float = 0.01) -> None:
        if not 0 < bin_width_deg <= 180:
            raise ValueError(f"bin_width_deg must be in (0, 180], got {bin_width_deg}")
        self.device = torch.device(device)
        self.bin_width_deg = bin_width_deg
        self.num_bins = math.ceil(180.0 / bin_width_deg - 1e-9)
        self.reset()

    def reset(self) -> None:
        self._hist = _zeros(self.device, n=self.num_bins + 1)  # the last bin: invalid pixels
        self._sum = _zeros(self.device, torch.float64)
        self._count = _zeros(self.device)
        self._within = _zeros(self.device, n=len(NORMAL_THRESHOLDS))

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        angle, valid = normal_angles(pred, target)
        zero = torch.zeros((), dtype=angle.dtype, device=angle.device)
        self._sum += torch.where(valid, angle, zero).sum().to(self.device)
        self._count += valid.sum().to(self.device)
        # Python-scalar thresholds: a tensor of them would be a (synchronising) host copy.
        below = torch.stack([((angle < thr) & valid).sum() for thr in NORMAL_THRESHOLDS])
        self._within += below.to(self.device)
        bins = (angle / self.bin_width_deg).long().clamp(0, self.num_bins - 1)
        bins = torch.where(valid, bins, self.num_bins).reshape(-1).to(self.device)
        self._hist.index_add_(0, bins, _ones_like_index(bins))

    def histogram(self) -> Tensor:
        """Counts of valid angles per bin (bin ``b`` covers ``[b w, (b + 1) w)``), a copy."""
        return self._hist[: self.num_bins].clone()

    def compute(self) -> dict[str, float]:
        n = _require(self._count, "normal")
        cumulative = self._hist[: self.num_bins].cumsum(0).cpu()
        rank = (n - 1) // 2 + 1  # the lower median is the rank-th smallest angle (1-based)
        b = int(torch.searchsorted(cumulative, torch.tensor([rank]))[0])
        within = self._within.cpu().tolist()
        out = {"mean": float(self._sum) / n, "median": (b + 0.5) * self.bin_width_deg}
        for thr, k in zip(NORMAL_THRESHOLDS, within, strict=True):
            out[f"within_{thr:g}"] = k / n
        return out


class BinaryMeter(Meter):
    """Binary attribute: accuracy and F1 of ``logit > 0`` over a split."""

    def __init__(self, device: Device = "cpu") -> None:
        self.device = torch.device(device)
        self.reset()

    def reset(self) -> None:
        self._counts = _zeros(self.device, n=4)  # tn, fp, fn, tp (index = 2 * target + pred)

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        pred, target = _binary_pair(pred, target)
        index = 2 * (target > 0.5).long() + (pred > 0).long()
        index = index.to(self.device)
        self._counts.index_add_(0, index, _ones_like_index(index))

    def compute(self) -> dict[str, float]:
        tn, fp, fn, tp = (int(v) for v in self._counts.cpu())
        n = tn + fp + fn + tp
        if n == 0:
            raise _EmptySplitError("binary: no element was accumulated; nothing to compute")
        denom = 2 * tp + fp + fn
        return {"accuracy": (tp + tn) / n, "f1": 2 * tp / denom if denom else 0.0}


# ---------------------------------------------------------------------------------------------
# Tasks


class Task(ABC):
    """A task: its name, output channels, loss and metrics (with directions)."""

    kind: ClassVar[str]
    metrics: ClassVar[tuple[MetricSpec, ...]]
    name: str

    @property
    @abstractmethod
    def out_channels(self) -> int:
        """Channels of the head's output."""

    @abstractmethod
    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        """Scalar loss, the mean over the valid elements of the batch."""

    @abstractmethod
    def meter(self, device: Device = "cpu") -> Meter:
        """A fresh metric accumulator on ``device``."""

    def __post_init__(self) -> None:  # the subclasses are dataclasses
        _check_name(self.name)

    def metric_keys(self) -> tuple[str, ...]:
        return tuple(metric_key(self.name, m.name) for m in self.metrics)

    def directions(self) -> dict[str, bool]:
        """``"task/metric"`` -> higher is better."""
        return {metric_key(self.name, m.name): m.higher_is_better for m in self.metrics}


def _check_name(name: str) -> None:
    if not name or "/" in name:
        raise ValueError(f"task names must be non-empty and contain no '/', got {name!r}")


@dataclass(frozen=True)
class SegmentationTask(Task):
    num_classes: int
    name: str = "segmentation"
    kind: ClassVar[str] = "segmentation"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("miou", True),
        MetricSpec("pixacc", True),
    )

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.num_classes, bool) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}")

    @property
    def out_channels(self) -> int:
        return self.num_classes

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        # log-softmax + gather is F.cross_entropy(ignore_index=-1) (tested), but unlike CUDA's
        # nll_loss2d it has a deterministic implementation (torch.use_deterministic_algorithms).
        target = _seg_target(pred, target, self.num_classes)
        valid = target != IGNORE_INDEX
        index = torch.where(valid, target, torch.zeros_like(target)).unsqueeze(1)
        nll = -F.log_softmax(pred, dim=1).gather(1, index).squeeze(1)
        return _masked_mean(nll, valid)

    def meter(self, device: Device = "cpu") -> ConfusionMatrixMeter:
        return ConfusionMatrixMeter(self.num_classes, device)


@dataclass(frozen=True)
class DepthTask(Task):
    name: str = "depth"
    kind: ClassVar[str] = "depth"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("abs_err", False),
        MetricSpec("rel_err", False),
    )

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        target = _as_channels(target, pred, 1, "depth")
        return _masked_mean((pred - target).abs(), target != 0)

    def meter(self, device: Device = "cpu") -> DepthMeter:
        return DepthMeter(device)


@dataclass(frozen=True)
class NormalTask(Task):
    name: str = "normal"
    bin_width_deg: float = 0.01
    kind: ClassVar[str] = "normal"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("mean", False),
        MetricSpec("median", False),
        *(MetricSpec(f"within_{t:g}", True) for t in NORMAL_THRESHOLDS),
    )

    @property
    def out_channels(self) -> int:
        return 3

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        target = _as_channels(target, pred, 3, "normal")
        valid = (target != 0).any(dim=1)
        cos = (F.normalize(pred, p=2.0, dim=1) * target).sum(dim=1)
        return _masked_mean(1.0 - cos, valid)

    def meter(self, device: Device = "cpu") -> NormalMeter:
        return NormalMeter(device, self.bin_width_deg)


@dataclass(frozen=True)
class BinaryTask(Task):
    name: str = "binary"
    kind: ClassVar[str] = "binary"
    metrics: ClassVar[tuple[MetricSpec, ...]] = (
        MetricSpec("accuracy", True),
        MetricSpec("f1", True),
    )

    @property
    def out_channels(self) -> int:
        return 1

    def loss(self, pred: Tensor, target: Tensor) -> Tensor:
        pred, target = _binary_pair(pred, target)
        return F.binary_cross_entropy_with_logits(pred, target.to(pred.dtype))

    def meter(self, device: Device = "cpu") -> BinaryMeter:
        return BinaryMeter(device)


TASK_KINDS: tuple[str, ...] = ("segmentation", "depth", "normal", "binary")
DATASET_TASKS: dict[str, tuple[str, ...]] = {
    "nyuv2": ("segmentation", "depth", "normal"),
    "cityscapes": ("segmentation", "depth"),
}


def make_task(kind: TaskKind, num_classes: int | None = None, name: str | None = None) -> Task:
    """One task of ``kind``; ``name`` defaults to the kind. ``num_classes``: segmentation only."""
    if kind == "segmentation":
        if num_classes is None:
            raise ValueError("a segmentation task needs num_classes")
        return SegmentationTask(num_classes, name=name or kind)
    if num_classes is not None:
        raise ValueError(f"num_classes applies to segmentation only, not to {kind!r}")
    if kind == "depth":
        return DepthTask(name=name or kind)
    if kind == "normal":
        return NormalTask(name=name or kind)
    if kind == "binary":
        return BinaryTask(name=name or kind)
    raise ValueError(f"unknown task kind {kind!r}; choose one of {list(TASK_KINDS)}")


def make_tasks(dataset: Literal["nyuv2", "cityscapes"], num_classes: int) -> dict[str, Task]:
    """The dense-prediction tasks of a dataset, keyed by name, in the paper's order.

    NYUv2: segmentation (13 classes in the paper), depth, normal; Cityscapes: segmentation
    (7 classes in the paper), depth.
    """
    if dataset not in DATASET_TASKS:
        raise ValueError(f"unknown dataset {dataset!r}; choose one of {list(DATASET_TASKS)}")
    tasks: dict[str, Task] = {}
    for kind in DATASET_TASKS[dataset]:
        task = make_task(kind, num_classes if kind == "segmentation" else None)  # type: ignore[arg-type]
        tasks[task.name] = task
    return tasks


def attribute_tasks(names: Iterable[str]) -> dict[str, Task]:
    """One binary task per attribute (CelebA: 40), keyed by the attribute name, in order."""
    tasks: dict[str, Task] = {}
    for name in names:
        if name in tasks:
            raise ValueError(f"attribute {name!r} is named twice")
        tasks[name] = make_task("binary", name=name)
    if not tasks:
        raise ValueError("attribute_tasks needs at least one attribute name")
    return tasks


def _task_list(tasks: Mapping[str, Task] | Iterable[Task]) -> list[Task]:
    if isinstance(tasks, Mapping):
        for key, task in tasks.items():
            if key != task.name:
                raise ValueError(f"task mapping key {key!r} differs from the task's name")
        return list(tasks.values())
    return list(tasks)


def metric_directions(tasks: Mapping[str, Task] | Iterable[Task]) -> dict[str, bool]:
    """``"task/metric"`` -> higher is better, for every metric of every task."""
    out: dict[str, bool] = {}
    for task in _task_list(tasks):
        out.update(task.directions())
    return out


def make_meters(
    tasks: Mapping[str, Task] | Iterable[Task], device: Device = "cpu"
) -> dict[str, Meter]:
    """A fresh meter per task, keyed by task name."""
    return {task.name: task.meter(device) for task in _task_list(tasks)}


def compute_metrics(meters: Mapping[str, Meter]) -> dict[str, float]:
    """All meters' metrics, flattened to ``"task/metric"`` keys."""
    return {
        metric_key(task, metric): value
        for task, meter in meters.items()
        for metric, value in meter.compute().items()
    }
