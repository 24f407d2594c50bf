"""The ``mtlp gradstats`` verb and its sub-verbs (registered by :mod:`mtl_paradigms.cli`).

* ``mtlp gradstats train``: train one run with the gradient-statistics callback;
* ``mtlp gradstats checkpoints``: the same statistics from a finished run's saved model states;
* ``mtlp gradstats fig3``: the Fig 3 sub-population experiment;
* ``mtlp gradstats claims``: the stage's claims from the tables.

Heavy imports happen inside the handlers, so ``mtlp --help`` stays fast.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

log = logging.getLogger("mtlp")


def _threads(n: int) -> None:
    import torch

    if n:
        torch.set_num_threads(n)


def _key_value(items: list[str], what: str) -> dict[str, str]:
    out = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"{what}: expected KEY=VALUE, got {item!r}")
        key, value = item.split("=", 1)
        out[key] = value
    return out


def _cmd_train(args: argparse.Namespace) -> None:
    from dataclasses import replace

    from mtl_paradigms.gradstats.extract import GradStatsSettings, selected_lr, train_with_gradstats
    from mtl_paradigms.settings import from_json
    from mtl_paradigms.train import TrainSettings

    _threads(args.threads)
    train_settings = from_json(TrainSettings, args.train_settings, "train")
    settings = from_json(GradStatsSettings, args.settings, "gradstats.extract")
    if args.lr_from is not None:
        lr = selected_lr(args.lr_from, train_settings.dataset, train_settings.arch)
        log.info("learning rate %g: EW + Adam's selection in %s", lr, args.lr_from)
        train_settings = replace(train_settings, lr=lr)
    metrics = train_with_gradstats(train_settings, settings, args.out)
    log.info("%s: gradient statistics written; diverged=%s", args.out, metrics["diverged"])


def _cmd_checkpoints(args: argparse.Namespace) -> None:
    from mtl_paradigms.gradstats.extract import GradStatsSettings, stats_from_checkpoints
    from mtl_paradigms.io import atomic_write
    from mtl_paradigms.settings import from_json
    from mtl_paradigms.train import TrainSettings

    _threads(args.threads)
    train_settings = from_json(TrainSettings, args.train_settings, "train")
    settings = from_json(GradStatsSettings, args.settings, "gradstats.extract")
    table = stats_from_checkpoints(train_settings, settings, args.checkpoints)
    atomic_write(args.out, lambda p: table.to_csv(p, index=False))
    log.info("wrote %s (%d checkpoints)", args.out, table["epoch"].nunique())


def _cmd_fig3(args: argparse.Namespace) -> None:
    from mtl_paradigms.gradstats.fig3 import Fig3Settings, run_fig3
    from mtl_paradigms.io import atomic_write
    from mtl_paradigms.settings import from_json

    _threads(args.threads)
    settings = from_json(Fig3Settings, args.settings, "gradstats.fig3")
    stats, training = run_fig3(settings)
    atomic_write(args.training, lambda p: training.to_csv(p, index=False))
    atomic_write(args.out, lambda p: stats.to_csv(p, index=False))
    log.info("wrote %s and %s", args.out, args.training)


def _cmd_claims(args: argparse.Namespace) -> None:
    import pandas as pd

    from mtl_paradigms.analysis.claims import write_claims
    from mtl_paradigms.analysis.gradstats_claims import gradstats_claims
    from mtl_paradigms.analysis.gradstats_report import load_stats

    panels = {name: load_stats(path) for name, path in _key_value(args.panel, "--panel").items()}
    fig3 = pd.read_csv(args.fig3) if args.fig3 else None
    training = pd.read_csv(args.fig3_training) if args.fig3_training else None
    claims = gradstats_claims(panels, fig3, training, _key_value(args.source, "--source"))
    write_claims(claims, args.out)
    log.info("wrote %s (%d claims)", args.out, len(claims))


def add_gradstats_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``gradstats`` and its sub-verbs on the ``mtlp`` sub-parser collection."""
    parser = sub.add_parser(
        "gradstats", help="per-sample x per-task gradient statistics (Figs 3, 4, A5-A7)"
    )
    verbs = parser.add_subparsers(dest="gradstats_command", required=True, metavar="SUBVERB")

    def settings(p: argparse.ArgumentParser, section: str) -> None:
        p.add_argument("--settings", default="{}", help=f"the {section} settings as a JSON object")

    p = verbs.add_parser("train", help="train one run, extracting statistics every k iterations")
    p.add_argument("--train-settings", required=True, help="the run's TrainSettings as JSON")
    settings(p, "gradstats.extract")
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument(
        "--lr-from", type=Path,
        help="runs.csv of the main experiment: use EW + Adam's selected learning rate",
    )  # fmt: skip
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=_cmd_train)

    p = verbs.add_parser("checkpoints", help="statistics from saved model states of a run")
    p.add_argument(
        "checkpoints", nargs="+", type=Path,
        help="snapshot/checkpoint files, or directories of epoch<e>.pt snapshots",
    )  # fmt: skip
    p.add_argument("--train-settings", required=True, help="the run's TrainSettings as JSON")
    settings(p, "gradstats.extract")
    p.add_argument("--out", required=True, type=Path, help="summary table (.csv)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=_cmd_checkpoints)

    p = verbs.add_parser("fig3", help="the Fig 3 sub-population experiment")
    settings(p, "gradstats.fig3")
    p.add_argument("--out", required=True, type=Path, help="summary table (.csv)")
    p.add_argument("--training", required=True, type=Path, help="training record (.csv)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.set_defaults(func=_cmd_fig3)

    p = verbs.add_parser("claims", help="the stage's claims file from its tables")
    p.add_argument(
        "--panel", action="append", default=[], metavar="DATASET/ARCH=CSV",
        help="a panel's gradstats.csv; repeatable",
    )  # fmt: skip
    p.add_argument("--fig3", type=Path, help="the Fig 3 summary table")
    p.add_argument("--fig3-training", type=Path, help="the Fig 3 training record")
    p.add_argument(
        "--source", action="append", default=[], metavar="DATASET=SOURCE",
        help="data source of a dataset (synthetic or real); repeatable",
    )  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="claims file (.csv)")
    p.set_defaults(func=_cmd_claims)
