"""Fig 3 of Elich et al. (2024) as an experiment: can high intra-task diversity mimic MTL?

The paper's Fig 3 is a photo collage: one "cat" task needs eye, paw, silhouette and fur
detectors, so its samples may pull the shared weights apart as different tasks would. Here that
is measured on synthetic data made for it.

Data (:func:`make_subpopulation_data`): small RGB images from ``K`` visually distinct
*sub-populations* (up to four "styles": a grey grating, a coloured blob, a checkerboard, a yellow
ring), each with its own binary cue (grating horizontal vs vertical, blob red vs blue, checker
cells of 2 vs 4 pixels, ring radius small vs large), with random position, phase, contrast and
pixel noise. The *positive* class is the union, over sub-populations, of the sub-population's
positive cue.

Two setups train the same network (a small Conv-BN-ReLU encoder, the shared part, and one linear
head per task) from the same initial encoder weights on the same batches with Adam:

* ``single``: one binary task, "is this a positive?" -- a task with high intra-task diversity;
* ``split``: ``K`` binary tasks, task ``k`` = "is this a positive *of sub-population k*?" (the
  single task's label is the OR of the split labels), trained with equal weights (the mean loss).

Every ``every`` iterations the gradient statistics of :mod:`.stats` are extracted exactly as in
the main runs (:func:`mtl_paradigms.gradstats.extract.extract`), and each pair gets a
``pair_type``: an inter-sample pair ``<population>/<class>`` with population
``same_subpopulation`` or ``cross_subpopulation`` and class ``same_class`` or ``cross_class``;
an inter-task pair of the split setup ``own_vs_other`` (one of the two tasks is the sample's own
sub-population) or ``other_vs_other``; ``all`` pools every pair of a comparison. The comparison
the paper's argument asks for is the single task's inter-sample statistics against the split
setup's inter-task statistics. In a binary task two samples of different classes pull the logit
in opposite directions whatever their sub-population, so the inter-sample pairs that isolate
intra-task diversity are those of the *same* class from *different* sub-populations (a cat's eye
and a cat's paw), with same-class pairs of one sub-population as the control.

A held-out test set gives each setup's accuracy on the single task's label (the split setup
predicts "positive" when any of its tasks does), to show that both setups learn.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import pandas as pd
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mtl_paradigms.gradstats.extract import GradStatsSettings, extract
from mtl_paradigms.gradstats.stats import summarise
from mtl_paradigms.models import MultiTaskModel
from mtl_paradigms.settings import SettingsError
from mtl_paradigms.tasks import Task, make_task

log = logging.getLogger(__name__)

STYLES: tuple[str, ...] = ("grating", "blob", "checker", "ring")
SETUPS: tuple[str, ...] = ("single", "split")
SINGLE_TASK = "positive"
TRAINING_COLUMNS = ("setup", "epoch", "train_loss", "test_accuracy")


@dataclass(frozen=True)
class Fig3Settings:
    """The Fig 3 experiment (config section ``gradstats.fig3``)."""

    subpopulations: int = 4
    num_train: int = 512
    num_test: int = 256
    image_size: int = 16
    noise_std: float = 0.15
    channels: int = 16
    epochs: int = 6
    batch_size: int = 32
    lr: float = 1e-3
    every: int = 5
    samples: int = 8
    bn: Literal["batch", "eval"] = "batch"
    seed: int = 0

    def __post_init__(self) -> None:
        if not 2 <= self.subpopulations <= len(STYLES):
            raise SettingsError(
                f"gradstats.fig3.subpopulations must be 2..{len(STYLES)}, got {self.subpopulations}"
            )
        if self.image_size < 12:
            raise SettingsError(f"gradstats.fig3.image_size must be >= 12, got {self.image_size}")
        for name in ("num_train", "num_test", "channels", "epochs", "every"):
            if getattr(self, name) < 1:
                raise SettingsError(f"gradstats.fig3.{name} must be >= 1")
        if not 2 <= self.batch_size <= self.num_train:
            raise SettingsError("gradstats.fig3.batch_size must be in 2..num_train")
        if self.samples < 2:
            raise SettingsError("gradstats.fig3.samples must be >= 2")
        if not (math.isfinite(self.lr) and self.lr > 0) or self.noise_std < 0:
            raise SettingsError("gradstats.fig3: lr must be positive, noise_std non-negative")

    @property
    def extract_settings(self) -> GradStatsSettings:
        return GradStatsSettings(every=self.every, samples=self.samples, bn=self.bn)


# ---------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float, generator: torch.Generator) -> Tensor:
    return low + (high - low) * torch.rand(n, 1, 1, generator=generator)


def _render(style: str, cue: Tensor, size: int, generator: torch.Generator) -> Tensor:
    """``(n, 3, size, size)`` images in [0, 1] of one style; ``cue`` (``n``) in {0, 1}."""
    n = cue.shape[0]
    coords = torch.arange(size, dtype=torch.float32)
    yy, xx = coords.view(1, size, 1), coords.view(1, 1, size)
    c = cue.view(n, 1, 1).float()
    if style == "grating":  # grey sinusoid, horizontal (0) or vertical (1) stripes
        period = _uniform(n, 3.0, 5.0, generator)
        phase = _uniform(n, 0.0, 2 * math.pi, generator)
        axis = yy * (1 - c) + xx * c
        grey = 0.5 + 0.5 * torch.sin(2 * math.pi * axis / period + phase)
        return grey.unsqueeze(1).expand(n, 3, size, size).clone()
    if style == "blob":  # a Gaussian blob, red (0) or blue (1), on dark grey
        cy = _uniform(n, size * 0.25, size * 0.75, generator)
        cx = _uniform(n, size * 0.25, size * 0.75, generator)
        blob = torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * (size / 7) ** 2))
        colour = torch.stack([1 - c, 0.2 * torch.ones_like(c), c], dim=1)  # (n, 3, 1, 1)
        return 0.2 + 0.8 * blob.unsqueeze(1) * colour
    if style == "checker":  # checkerboard with cells of 2 (0) or 4 (1) pixels, random offset
        cell = 2 + 2 * c
        oy = torch.randint(0, 4, (n, 1, 1), generator=generator)
        ox = torch.randint(0, 4, (n, 1, 1), generator=generator)
        board = (torch.div(yy + oy, cell, rounding_mode="floor")
                 + torch.div(xx + ox, cell, rounding_mode="floor")) % 2  # fmt: skip
        tint = torch.tensor([0.9, 0.9, 0.6]).view(1, 3, 1, 1)
        return 0.1 + board.unsqueeze(1) * tint
    if style == "ring":  # a yellow ring of radius size/5 (0) or size/2.7 (1)
        cy = _uniform(n, size * 0.4, size * 0.6, generator)
        cx = _uniform(n, size * 0.4, size * 0.6, generator)
        radius = size / 5 + c * (size / 2.7 - size / 5)
        dist = torch.sqrt((yy - cy) ** 2 + (xx - cx) ** 2)
        ring = torch.exp(-((dist - radius) ** 2) / (2 * 0.8**2))
        colour = torch.tensor([1.0, 0.85, 0.1]).view(1, 3, 1, 1)
        return 0.05 + 0.9 * ring.unsqueeze(1) * colour
    raise ValueError(f"unknown style {style!r}; choose one of {list(STYLES)}")


def make_subpopulation_data(
    settings: Fig3Settings, num: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``(images, subpopulation, positive)``: ``num`` images ``(num, 3, S, S)`` (centred at 0),
    the sub-population index of each and its binary class. Sub-populations are balanced (image
    ``i`` belongs to ``i mod K``), classes drawn at random with probability 1/2."""
    k = settings.subpopulations
    size = settings.image_size
    subpop = torch.arange(num) % k
    positive = (torch.rand(num, generator=generator) < 0.5).long()
    images = torch.empty(num, 3, size, size)
    for s in range(k):
        idx = (subpop == s).nonzero().flatten()
        images[idx] = _render(STYLES[s], positive[idx], size, generator)
    contrast = _uniform(num, 0.7, 1.0, generator).view(num, 1, 1, 1)
    images = contrast * images + settings.noise_std * torch.randn(images.shape, generator=generator)
    return images - 0.5, subpop, positive


def split_targets(subpop: Tensor, positive: Tensor, k: int) -> dict[str, Tensor]:
    """The split setup's labels: task ``sub<k>`` is 1 for the positives of sub-population k."""
    return {f"sub{s}": ((subpop == s) & (positive == 1)).float() for s in range(k)}


def setup_tasks(setup: str, k: int) -> dict[str, Task]:
    names = [SINGLE_TASK] if setup == "single" else [f"sub{s}" for s in range(k)]
    return {name: make_task("binary", name=name) for name in names}


def setup_targets(setup: str, subpop: Tensor, positive: Tensor, k: int) -> dict[str, Tensor]:
    if setup == "single":
        return {SINGLE_TASK: positive.float()}
    return split_targets(subpop, positive, k)


# ---------------------------------------------------------------------------------------------
# Network and training
# ---------------------------------------------------------------------------------------------


def make_encoder(channels: int) -> nn.Sequential:
    """Conv-BN-ReLU x 3 with two max-poolings, global average pooling: ``(N, 2c)`` features."""
    c = channels
    return nn.Sequential(
        nn.Conv2d(3, c, 3, padding=1), nn.BatchNorm2d(c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(2 * c, 2 * c, 3, padding=1), nn.BatchNorm2d(2 * c), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(),
    )  # fmt: skip


def make_model(settings: Fig3Settings, tasks: dict[str, Task]) -> MultiTaskModel:
    """The encoder from ``settings.seed`` (identical in both setups), then one linear head per
    task."""
    torch.manual_seed(settings.seed)
    encoder = make_encoder(settings.channels)
    heads = {name: nn.Linear(2 * settings.channels, 1) for name in tasks}
    return MultiTaskModel(encoder, heads, arch="fig3-cnn")


def _pair_types(
    pairs: pd.DataFrame, samples: list[int], names: list[str], subpop: Tensor, positive: Tensor
) -> np.ndarray:
    """The ``pair_type`` label of each pair (see the module docstring)."""
    idx = torch.as_tensor(samples)
    sp = subpop[idx].numpy()
    cls = positive[idx].numpy()
    task_subpop = np.array([int(n[3:]) if n.startswith("sub") else -1 for n in names])
    labels = np.full(len(pairs), "all", dtype=object)
    first = pairs["first"].to_numpy()
    second = pairs["second"].to_numpy()
    inter_sample = (pairs["comparison"] == "inter_sample").to_numpy()
    a, b = first[inter_sample], second[inter_sample]
    population = np.where(sp[a] == sp[b], "same_subpopulation", "cross_subpopulation")
    label = np.where(cls[a] == cls[b], "same_class", "cross_class")
    labels[inter_sample] = [f"{p}/{c}" for p, c in zip(population, label, strict=True)]
    pairwise = (pairs["variant"] == "pairwise").to_numpy()
    inter_task = (pairs["comparison"] == "inter_task").to_numpy() & pairwise
    own = sp[pairs["fixed"].to_numpy()[inter_task]]
    has_own = (task_subpop[first[inter_task]] == own) | (task_subpop[second[inter_task]] == own)
    labels[inter_task] = np.where(has_own, "own_vs_other", "other_vs_other")
    return labels


def _summarise_epoch(
    pairs: list[pd.DataFrame], interference: list[float], setup: str, epoch: int
) -> pd.DataFrame:
    frame = pd.concat(pairs, ignore_index=True)
    pooled = frame[frame["pair_type"] != "all"].assign(pair_type="all")
    both = pd.concat([frame, pooled], ignore_index=True)
    return summarise(both, interference, keys={"setup": setup, "epoch": epoch}, by=["pair_type"])


def run_setup(
    settings: Fig3Settings,
    setup: str,
    data: tuple[Tensor, Tensor, Tensor],
    test: tuple[Tensor, Tensor, Tensor],
    progress: bool | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train one setup; its per-epoch gradient statistics and its training record."""
    if setup not in SETUPS:
        raise ValueError(f"unknown setup {setup!r}; choose one of {list(SETUPS)}")
    k = settings.subpopulations
    images, subpop, positive = data
    targets = setup_targets(setup, subpop, positive, k)
    tasks = setup_tasks(setup, k)
    model = make_model(settings, tasks)
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.lr)
    order_gen = torch.Generator().manual_seed(settings.seed + 1)
    extract_gen = torch.Generator().manual_seed(settings.seed + 2)
    gs = settings.extract_settings
    summaries, training = [], []
    iteration = 0
    disable = None if progress is None else not progress
    for epoch in tqdm(range(1, settings.epochs + 1), desc=f"fig3 {setup}", disable=disable):
        model.train()
        order = torch.randperm(len(images), generator=order_gen)
        pairs: list[pd.DataFrame] = []
        interference: list[float] = []
        loss_sum, steps = 0.0, 0
        for start in range(0, len(images) - settings.batch_size + 1, settings.batch_size):
            idx = order[start : start + settings.batch_size]
            x = images[idx]
            y = {name: t[idx] for name, t in targets.items()}
            if iteration % gs.every == 0:
                result = extract(model, tasks, x, y, gs, extract_gen)
                step_pairs = result.statistics.pairs
                step_pairs["pair_type"] = _pair_types(
                    step_pairs, result.samples, result.tasks, subpop[idx], positive[idx]
                )
                pairs.append(step_pairs)
                interference.append(result.statistics.interference)
            optimizer.zero_grad(set_to_none=True)
            preds = model(x)
            loss = torch.stack([task.loss(preds[n], y[n]) for n, task in tasks.items()]).mean()
            loss.backward()
            optimizer.step()
            loss_sum += float(loss.detach())
            steps += 1
            iteration += 1
        if pairs:
            summaries.append(_summarise_epoch(pairs, interference, setup, epoch))
        training.append(
            {
                "setup": setup,
                "epoch": epoch,
                "train_loss": loss_sum / max(steps, 1),
                "test_accuracy": heldout_accuracy(model, setup, test),
            }
        )
    return pd.concat(summaries, ignore_index=True), pd.DataFrame(training, columns=TRAINING_COLUMNS)


@torch.no_grad()
def heldout_accuracy(
    model: MultiTaskModel, setup: str, test: tuple[Tensor, Tensor, Tensor]
) -> float:
    """Accuracy on the single task's label (split: positive when any task says so)."""
    images, _, positive = test
    model.eval()
    preds = model(images)
    model.train()
    logits = torch.cat([p.reshape(-1, 1) for p in preds.values()], dim=1)
    predicted = (logits > 0).any(dim=1).long()
    return float((predicted == positive).float().mean())


def run_fig3(
    settings: Fig3Settings, progress: bool | None = None
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Both setups on the same data; ``(statistics, training)`` tables (``setup`` column)."""
    generator = torch.Generator().manual_seed(settings.seed)
    data = make_subpopulation_data(settings, settings.num_train, generator)
    test = make_subpopulation_data(settings, settings.num_test, generator)
    stats, training = [], []
    for setup in SETUPS:
        s, t = run_setup(settings, setup, data, test, progress)
        stats.append(s)
        training.append(t)
        log.info("fig3 %s: test accuracy %.3f", setup, t["test_accuracy"].iloc[-1])
    return pd.concat(stats, ignore_index=True), pd.concat(training, ignore_index=True)
