"""One training run of the workflow, as data: where it lives and the TrainSettings it gets.

The Snakemake rules (workflow/rules/*.smk) ask this module, and only this module, for a run's
directory (:func:`run_path`, :meth:`RunSpec.path`), its settings (:meth:`RunSpec.settings`,
:meth:`Runs.settings_json`) and the runs of a config (:meth:`Runs.main`, :meth:`Runs.stl`,
:meth:`Runs.celeba`, :meth:`Runs.gradstats`). Importable and testable without Snakemake or
torch.

A run's settings are merged, later keys winning:

* main grid (``kind="main"``): ``main.train``, the dataset's ``train``, the architecture's
  settings, the run's own keys (dataset, data_dir, arch, optimizer, lr, seed, num_classes of a
  synthetic set), the ``train`` of the sweep (``main.grid`` or one of ``main.grid.extra``)
  that holds the run, then tasks / method / method_params / selection (``fixed_from_<m>``:
  method ``fixed`` labelled with the run's method name);
* single-task baseline (``kind="stl"``): as the main grid, without sweep overrides, one task,
  EW, selection on the validation loss;
* gradient statistics (``kind="gradstats"``): ``main.train``, ``gradstats.train``, the
  dataset's ``train``, the architecture's settings, then EW + Adam at ``gradstats.lr``;
* CelebA (``kind="celeba"``): ``celeba.train``, then the run's own keys.

:class:`Runs` computes what a config implies once (the sweep of each run, every run's JSON),
so a workflow of thousands of jobs asks it cheaply per job.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from mtl_paradigms.workflow_checks import FIXED_FROM, fmt_lr

__all__ = [
    "RunSpec",
    "Runs",
    "compact_json",
    "run_path",
]

Kind = Literal["main", "stl", "gradstats", "celeba"]
STL_PREFIX = "stl-"
CELEBA = ("celeba", "resnet18")  # dataset, architecture of the CelebA-style run


def compact_json(obj: Any) -> str:
    """JSON as the jobs get it on the command line: sorted keys, no spaces."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"))


def run_path(
    root: str,
    dataset: str = "{dataset}",
    arch: str = "{arch}",
    method: str = "{method}",
    optimizer: str = "{optimizer}",
    lr: str = "{lr}",
    seed: str | int = "{seed}",
    file: str | None = None,
) -> str:
    """The one template of a run directory: ``{root}/{dataset}/{arch}/{method}/{optimizer}/
    lr{lr}/seed{seed}``. Left out, a part stays a Snakemake wildcard (``{dataset}``), so
    ``run_path(RUNS)`` is the pattern of a rule's output and ``RunSpec.path`` a run's
    directory; ``lr`` is the text of the path (see :func:`fmt_lr`); ``file``, a file in it."""
    path = f"{root}/{dataset}/{arch}/{method}/{optimizer}/lr{lr}/seed{seed}"
    return path if file is None else f"{path}/{file}"


@dataclass(frozen=True)
class RunSpec:
    """One training run: what names its directory, plus the task of a single-task run."""

    dataset: str
    arch: str
    method: str
    optimizer: str
    lr: float
    seed: int
    task: str | None = None
    kind: Kind = "main"

    def __post_init__(self) -> None:
        object.__setattr__(self, "lr", float(self.lr))
        object.__setattr__(self, "seed", int(self.seed))
        if (self.kind == "stl") != (self.task is not None):
            raise ValueError(f"a single-task run, and only it, names a task: {self}")

    @classmethod
    def from_wildcards(cls, wildcards: Any, kind: Kind = "main", **fixed: Any) -> RunSpec:
        """The run of a job from its wildcards (Snakemake's, or any mapping / namespace);
        ``fixed`` gives the parts the rule's pattern spells out (``dataset="celeba"``)."""

        if kind == "celeba":
            fixed = {"dataset": CELEBA[0], "arch": CELEBA[1], **fixed}

        def get(name: str) -> Any:
            if name in fixed:
                return fixed[name]
            if isinstance(wildcards, Mapping):
                return wildcards[name]
            return getattr(wildcards, name)

        if kind == "stl":
            return cls(get("dataset"), get("arch"), "ew", get("optimizer"), get("lr"),
                       get("seed"), task=get("task"), kind="stl")  # fmt: skip
        return cls(get("dataset"), get("arch"), get("method"), get("optimizer"), get("lr"),
                   get("seed"), kind=kind)  # fmt: skip

    @property
    def name(self) -> str:
        """The method part of the run directory (``stl-<task>`` for a single-task run)."""
        return f"{STL_PREFIX}{self.task}" if self.kind == "stl" else self.method

    @property
    def label(self) -> str:
        """The run's directory below the root (``cityscapes/segnet/ew/adam/lr0.001/seed0``)."""
        return self.path("")[1:]

    def path(self, root: str) -> str:
        """The run's directory under ``root`` (the workflow's ``{results_dir}/runs``); a
        gradient-statistics run lives in ``{root}/{dataset}/{arch}`` (root: its results)."""
        if self.kind == "gradstats":
            return f"{root}/{self.dataset}/{self.arch}"
        return run_path(root, self.dataset, self.arch, self.name, self.optimizer,
                        fmt_lr(self.lr), self.seed)  # fmt: skip

    def settings(self, config: Mapping[str, Any]) -> dict[str, Any]:
        """The run's TrainSettings mapping under ``config`` (the validated workflow config)."""
        return Runs(config).settings(self)


def _panel(panel: Mapping[str, Any]) -> tuple[str, str] | None:
    """(dataset, arch) of a panel entry exactly {dataset, arch} (else it matches no run)."""
    return (panel["dataset"], panel["arch"]) if set(panel) == {"dataset", "arch"} else None


class Runs:
    """The runs of one config and their settings, each derived table computed once.

    The config must not change while this object is used (the workflow's config does not
    after its checks)."""

    def __init__(self, config: Mapping[str, Any]) -> None:
        self.config = config
        self._json: dict[RunSpec, str] = {}
        self._sweep_index: dict[tuple[Any, ...], list[Mapping[str, Any]]] | None = None

    # ---- locations ------------------------------------------------------------------------
    @property
    def data_root(self) -> str:
        return self.config["data"]["dir"]

    def dataset_config(self, dataset: str) -> Mapping[str, Any]:
        return self.config["main"]["datasets"][dataset]

    def dataset_dir(self, dataset: str) -> str:
        """The MTAN folder: generated, given by `data_dir` (used as is), or downloaded."""
        ds = self.dataset_config(dataset)
        if ds["source"] == "synthetic":
            return f"data/synthetic/{dataset}"
        return ds.get("data_dir") or f"{self.data_root}/{dataset}"

    def celeba_prepared(self) -> str:
        celeba = self.config["celeba"]
        return f"{self.data_root}/prepared/celeba_{celeba['source']}_{celeba['size']}"

    # ---- the runs of the config -------------------------------------------------------------
    def panels(self) -> list[tuple[str, str]]:
        return [(p["dataset"], p["arch"]) for p in self.config["main"]["panels"]]

    def sweeps(self) -> list[Mapping[str, Any]]:
        """The main grid and its extra sweeps."""
        grid = self.config["main"]["grid"]
        return [grid, *grid.get("extra", [])]

    def sweep_panels(self, sweep: Mapping[str, Any]) -> list[Mapping[str, Any]]:
        return sweep.get("panels", self.config["main"]["panels"])

    def main(self, dataset: str, arch: str) -> list[RunSpec]:
        """The multi-task runs of a panel, sweep after sweep; a run in two sweeps once."""
        runs = [
            RunSpec(dataset, arch, method, optimizer, lr, seed)
            for sweep in self.sweeps()
            if {"dataset": dataset, "arch": arch} in self.sweep_panels(sweep)
            for method in sweep["methods"]
            for optimizer in sweep["optimizers"]
            for lr in sweep["learning_rates"]
            for seed in sweep["seeds"]
        ]
        return list(dict.fromkeys(runs))

    def stl(self, dataset: str, arch: str) -> list[RunSpec]:
        """The single-task baselines of a panel: task x learning rate x seed."""
        stl = self.config["main"]["stl"]
        return [
            RunSpec(dataset, arch, "ew", stl["optimizer"], lr, seed, task=task, kind="stl")
            for task in self.dataset_config(dataset)["tasks"]
            for lr in stl["learning_rates"]
            for seed in stl["seeds"]
        ]

    def celeba(self) -> list[RunSpec]:
        grid = self.config["celeba"]["grid"]
        return [
            RunSpec(*CELEBA, method, optimizer, lr, seed, kind="celeba")
            for method in grid["methods"]
            for optimizer in grid["optimizers"]
            for lr in grid["learning_rates"]
            for seed in grid["seeds"]
        ]

    def gradstats_panels(self) -> list[tuple[str, str]]:
        panels = [(p["dataset"], p["arch"]) for p in self.config["gradstats"]["panels"]]
        missing = sorted({d for d, _ in panels} - set(self.config["main"]["datasets"]))
        if missing:
            raise ValueError(
                f"config gradstats.panels: dataset(s) {missing} not defined in main.datasets"
            )
        return panels

    def gradstats_run(self, dataset: str, arch: str) -> RunSpec:
        """A panel's gradient-statistics run: EW + Adam at `gradstats.lr` (1e-3 stands for
        `selected`, which the job reads from the main experiment with --lr-from)."""
        gs = self.config["gradstats"]
        lr = 1e-3 if gs["lr"] == "selected" else float(gs["lr"])
        return RunSpec(dataset, arch, "ew", "adam", lr, gs["seed"], kind="gradstats")

    def gradstats(self) -> list[RunSpec]:
        return [self.gradstats_run(d, a) for d, a in self.gradstats_panels()]

    # ---- settings -----------------------------------------------------------------------------
    def sweep_train(self, run: RunSpec) -> Mapping[str, Any]:
        """The training-setting overrides (`train:`) of the sweep that holds a main-grid run;
        a run in several sweeps whose `train` differ is refused (one directory, two runs)."""
        if self._sweep_index is None:
            index: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
            for sweep in self.sweeps():
                train = sweep.get("train", {})
                lrs = {float(lr) for lr in sweep["learning_rates"]}
                for panel in self.sweep_panels(sweep):
                    where = _panel(panel)
                    if where is None:
                        continue
                    for method in sweep["methods"]:
                        for optimizer in sweep["optimizers"]:
                            for lr in lrs:
                                for seed in set(sweep["seeds"]):
                                    key = (*where, method, optimizer, lr, seed)
                                    index.setdefault(key, []).append(train)
            self._sweep_index = index
        found = self._sweep_index.get(
            (run.dataset, run.arch, run.method, run.optimizer, run.lr, run.seed), []
        )
        if any(f != found[0] for f in found):
            raise ValueError(
                f"config main.grid: run {run.label} lies in several sweeps whose `train` "
                f"settings differ ({found}); one run directory cannot hold both"
            )
        return found[0] if found else {}

    def _dataset_keys(self, run: RunSpec) -> dict[str, Any]:
        ds = self.dataset_config(run.dataset)
        keys: dict[str, Any] = {"dataset": run.dataset, "data_dir": self.dataset_dir(run.dataset),
                                "arch": run.arch}  # fmt: skip
        if ds["source"] == "synthetic" and ds["synthetic"].get("num_classes"):
            keys["num_classes"] = ds["synthetic"]["num_classes"]
        return keys

    def settings(self, run: RunSpec) -> dict[str, Any]:
        """The run's TrainSettings mapping (a new dict; see the module's docstring)."""
        config = self.config
        if run.kind == "celeba":
            celeba = config["celeba"]
            return {
                **celeba["train"],
                "dataset": run.dataset,
                "data_dir": self.celeba_prepared(),
                "arch": run.arch,
                "augment": False,
                "selection": "val_loss",
                "tasks": celeba.get("attributes"),
                "method": run.method,
                "method_params": celeba["grid"].get("method_params", {}).get(run.method, {}),
                "optimizer": run.optimizer,
                "lr": run.lr,
                "seed": run.seed,
            }
        main = config["main"]
        ds = self.dataset_config(run.dataset)
        arch = main["archs"][run.arch]
        own = {"optimizer": run.optimizer, "lr": run.lr, "seed": run.seed}
        if run.kind == "gradstats":
            # gradstats.train overrides main.train; dataset and architecture settings still apply
            gs_train = config["gradstats"].get("train", {})
            return {**main["train"], **gs_train, **ds.get("train", {}), **arch,
                    **self._dataset_keys(run), **own, "tasks": ds["tasks"], "method": "ew",
                    "selection": "val_loss"}  # fmt: skip
        settings = {**main["train"], **ds.get("train", {}), **arch, **self._dataset_keys(run),
                    **own}  # fmt: skip
        if run.kind == "stl":
            return settings | {"tasks": [run.task], "method": "ew", "selection": "val_loss"}
        settings |= self.sweep_train(run)
        if run.method.startswith(FIXED_FROM):
            # The weights come from `mtlp fixed-weights` (rule fixed_weights) via --fixed-weights.
            return settings | {"tasks": ds["tasks"], "method": "fixed", "label": run.method,
                               "selection": "delta_m"}  # fmt: skip
        params = main["grid"].get("method_params", {}).get(run.method, {})
        return settings | {"tasks": ds["tasks"], "method": run.method, "method_params": params,
                           "selection": "delta_m"}  # fmt: skip

    def settings_json(self, run: RunSpec) -> str:
        """The run's settings as the job gets them (`mtlp train --settings`), computed once."""
        text = self._json.get(run)
        if text is None:
            text = self._json[run] = compact_json(self.settings(run))
        return text
