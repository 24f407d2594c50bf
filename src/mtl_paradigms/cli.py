"""The ``mtlp`` command line: one verb per workflow step, files in, files out.

Snakemake rules call these verbs; each verb takes its stage's settings as JSON
(``--settings``), so the workflow passes exactly the validated config section.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

from mtl_paradigms.data.commands import add_data_commands

log = logging.getLogger("mtlp")


def _settings_arg(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--settings",
        default="{}",
        help="the stage's settings as a JSON object (keys of the config section); "
        "missing keys take the documented defaults",
    )


def _cmd_toy(args: argparse.Namespace) -> None:
    from mtl_paradigms.analysis.claims import write_claims
    from mtl_paradigms.settings import from_json
    from mtl_paradigms.toy.cagrad_toy import ToySettings, run_toy, toy_claims

    settings = from_json(ToySettings, args.settings, "toy")
    result = run_toy(settings)
    result.save(args.out)
    log.info("wrote %s", args.out)
    if args.claims:
        write_claims(toy_claims(result), args.claims)
        log.info("wrote %s", args.claims)


def _cmd_invariance(args: argparse.Namespace) -> None:
    from mtl_paradigms.analysis.claims import write_claims
    from mtl_paradigms.io import atomic_write
    from mtl_paradigms.settings import from_json
    from mtl_paradigms.toy.invariance import (
        InvarianceSettings,
        invariance_checks,
        invariance_claims,
        run_invariance,
        save_records,
    )

    settings = from_json(InvarianceSettings, args.settings, "invariance")
    records = run_invariance(settings)
    save_records(records, args.records)
    log.info("wrote %s", args.records)
    checks = invariance_checks(settings)
    atomic_write(args.checks, lambda p: checks.to_csv(p, index=False))
    log.info("wrote %s", args.checks)
    if args.claims:
        write_claims(invariance_claims(checks), args.claims)
        log.info("wrote %s", args.claims)


def _cmd_make_synthetic(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.synthetic.scenes import SyntheticSettings, write_synthetic_mtan
    from mtl_paradigms.settings import from_json

    settings = from_json(SyntheticSettings, args.settings, "synthetic")
    write_synthetic_mtan(settings, args.out)
    log.info("wrote %s", args.out)


def _cmd_verify_dataset(args: argparse.Namespace) -> None:
    from mtl_paradigms.data.mtan import DatasetError, check_layout, describe, load_mtan
    from mtl_paradigms.io import write_json

    report: dict[str, object] = {"dataset": args.dataset, "root": str(args.root)}
    report["labels"] = args.labels
    for split in ("layout", "train", "val"):
        try:
            if split == "layout":  # every folder (label_7 and label_19), counts
                report["counts"] = check_layout(args.root, args.dataset, args.expect_sizes)
                continue
            loaded = load_mtan(args.root, args.dataset, split, cityscapes_labels=args.labels)
        except DatasetError as err:
            raise DatasetError(
                f"{err}. Expected the MTAN-preprocessed {args.dataset} at {args.root} "
                "({train,val}/{image,label,depth,normal}/<i>.npy for nyuv2; label_7, label_19 "
                "and depth for cityscapes). Put it there, or point "
                f"main.datasets.{args.dataset}.data_dir at it (README, 'Paper scale')."
            ) from err
        report[split] = dict(describe(loaded))
    write_json(args.out, report)
    log.info("%s: %s is a complete MTAN-format dataset", args.root, args.dataset)


def _cmd_train(args: argparse.Namespace) -> None:
    import torch

    from mtl_paradigms.settings import SettingsError, from_json
    from mtl_paradigms.train import TrainSettings, load_baseline, train

    if args.threads:
        torch.set_num_threads(args.threads)
    settings = from_json(TrainSettings, args.settings, "train")
    if args.fixed_weights is not None:
        if settings.method != "fixed":
            raise SettingsError(
                f"train --fixed-weights needs method 'fixed', the settings say {settings.method!r}"
            )
        fixed = json.loads(args.fixed_weights.read_text())
        if fixed["tasks"] != settings.task_names:
            raise SettingsError(
                f"{args.fixed_weights}: weights for tasks {fixed['tasks']}, "
                f"the run trains {settings.task_names}"
            )
        settings = dataclasses.replace(settings, method_params={"weights": fixed["weights"]})
    metrics = train(settings, args.out, baseline=load_baseline(args.baseline))
    log.info(
        "%s: diverged=%s, selected epoch %s, test delta_m %s",
        args.out, metrics["diverged"], metrics["selected_epoch"], metrics["test_delta_m"],
    )  # fmt: skip


def _cmd_fixed_weights(args: argparse.Namespace) -> None:
    from mtl_paradigms.io import write_json
    from mtl_paradigms.runs import fixed_weights_from_history

    fixed = fixed_weights_from_history(args.history, beta=args.beta)
    write_json(args.out, fixed)
    log.info("fixed weights %s (tasks %s) from %s", fixed["weights"], fixed["tasks"], args.history)


def _cmd_baseline(args: argparse.Namespace) -> None:
    from mtl_paradigms.io import write_json
    from mtl_paradigms.runs import build_baseline

    write_json(args.out, build_baseline(args.inputs))
    log.info("wrote %s", args.out)


def _cmd_aggregate(args: argparse.Namespace) -> None:
    from mtl_paradigms.io import atomic_write, write_json
    from mtl_paradigms.runs import metric_directions_of, read_metrics, runs_table

    sources = dict(item.split("=", 1) for item in args.source)
    records = [read_metrics(path) for path in args.inputs]
    table = runs_table(records, sources)
    directions = metric_directions_of(records)
    atomic_write(args.out, lambda p: table.to_csv(p, index=False))
    write_json(args.directions, directions)
    log.info("wrote %s (%d runs) and %s", args.out, len(table), args.directions)
    if args.claims:
        from mtl_paradigms.analysis.claims import write_claims
        from mtl_paradigms.analysis.grid_report import grid_claims

        write_claims(grid_claims(table, directions), args.claims)
        log.info("wrote %s", args.claims)


def _cmd_claims(args: argparse.Namespace) -> None:
    from mtl_paradigms.analysis.claims import merge_claims

    frame = merge_claims(args.inputs, args.out)
    log.info("merged %d claims into %s.{csv,md}", len(frame), args.out)


def _cmd_methods(args: argparse.Namespace) -> None:
    from mtl_paradigms.methods.registry import describe_methods

    rows = describe_methods()
    if args.json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        params = ", ".join(f"{k}={v!r}" for k, v in row["hyperparameters"].items()) or "-"
        print(f"{row['name']:<10} {row['kind']:<11} {params}\n{'':<22}{row['summary']}")


def _cmd_notebook(args: argparse.Namespace) -> None:
    import yaml

    from mtl_paradigms.notebooks import execute_notebook

    params = {key: yaml.safe_load(value) for key, value in args.param}
    execute_notebook(args.notebook, args.output, args.html, params, cwd=args.cwd)
    log.info("wrote %s and %s", args.output, args.html)


def build_parser() -> argparse.ArgumentParser:
    from mtl_paradigms.gradstats.cli import add_gradstats_parser

    parser = argparse.ArgumentParser(
        prog="mtlp",
        description="mtl-paradigms: reproduce multi-task-learning optimization studies.",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    sub = parser.add_subparsers(dest="command", required=True, metavar="VERB")

    p = sub.add_parser("toy", help="run the CAGrad toy (Fig 1, Tables 1/A3)")
    _settings_arg(p)
    p.add_argument("--out", required=True, type=Path, help="result file (.npz)")
    p.add_argument("--claims", type=Path, help="claims file (.csv) to write")
    p.set_defaults(func=_cmd_toy)

    p = sub.add_parser("invariance", help="run the invariance toy and its checks (Figs A1/A2)")
    _settings_arg(p)
    p.add_argument("--records", required=True, type=Path, help="per-step records (.csv.gz)")
    p.add_argument(
        "--checks", required=True, type=Path, help="checks of the Theory statements (.csv)"
    )
    p.add_argument("--claims", type=Path, help="claims file (.csv) to write")
    p.set_defaults(func=_cmd_invariance)

    p = sub.add_parser("make-synthetic", help="write a synthetic dataset in the MTAN format")
    _settings_arg(p)
    p.add_argument("--out", required=True, type=Path, help="dataset directory to create")
    p.set_defaults(func=_cmd_make_synthetic)

    p = sub.add_parser("verify-dataset", help="check a real MTAN-format dataset on disk")
    p.add_argument("--dataset", required=True, choices=["nyuv2", "cityscapes"])
    p.add_argument("--root", required=True, type=Path, help="the dataset folder")
    p.add_argument("--labels", default="label_7", choices=["label_7", "label_19"])
    p.add_argument("--expect-sizes", action="store_true", help="require the MTAN release counts")
    p.add_argument("--out", required=True, type=Path, help="verification report (.json)")
    p.set_defaults(func=_cmd_verify_dataset)

    add_data_commands(sub)

    p = sub.add_parser("train", help="train one run (resumes from its checkpoint)")
    _settings_arg(p)
    p.add_argument("--out", required=True, type=Path, help="run directory")
    p.add_argument("--baseline", type=Path, help="single-task baseline (.json) for delta_m")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch default)")
    p.add_argument(
        "--fixed-weights", type=Path,
        help="weights file from `mtlp fixed-weights` (the settings' method must be 'fixed')",
    )  # fmt: skip
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser(
        "fixed-weights", help="fixed task weights from a run's history (EMA of epoch averages)"
    )
    p.add_argument("history", type=Path, help="history.csv of the source run")
    p.add_argument("--beta", type=float, default=0.9, help="EMA factor (default 0.9)")
    p.add_argument("--out", required=True, type=Path, help="weights file (.json)")
    p.set_defaults(func=_cmd_fixed_weights)

    p = sub.add_parser("baseline", help="single-task baseline from STL runs' metrics.json")
    p.add_argument("inputs", nargs="+", type=Path, help="metrics.json of single-task runs")
    p.add_argument("--out", required=True, type=Path, help="baseline file (.json)")
    p.set_defaults(func=_cmd_baseline)

    p = sub.add_parser("aggregate", help="tidy table of runs from their metrics.json")
    p.add_argument("inputs", nargs="+", type=Path, help="metrics.json of runs")
    p.add_argument("--out", required=True, type=Path, help="runs table (.csv)")
    p.add_argument("--directions", required=True, type=Path, help="higher-is-better flags (.json)")
    p.add_argument("--claims", type=Path, help="claims file (.csv) of the main experiment")
    p.add_argument(
        "--source", action="append", default=[], metavar="DATASET=SOURCE",
        help="data source of a dataset (synthetic or real); repeatable",
    )  # fmt: skip
    p.set_defaults(func=_cmd_aggregate)

    p = sub.add_parser("claims", help="merge per-stage claims files into the claims table")
    p.add_argument("inputs", nargs="*", type=Path, help="per-stage claims files (.csv)")
    p.add_argument("--out", required=True, type=Path, help="output stem (writes .csv and .md)")
    p.set_defaults(func=_cmd_claims)

    p = sub.add_parser("methods", help="list every method with its hyperparameters")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_methods)

    p = sub.add_parser("notebook", help="execute a parameterised notebook and render it to HTML")
    p.add_argument("notebook", type=Path)
    p.add_argument("--output", required=True, type=Path, help="executed notebook (.ipynb)")
    p.add_argument("--html", required=True, type=Path, help="rendered notebook (.html)")
    p.add_argument(
        "-p",
        "--param",
        nargs=2,
        action="append",
        default=[],
        metavar=("NAME", "VALUE"),
        help="notebook parameter (value parsed as YAML); repeatable",
    )
    p.add_argument("--cwd", type=Path, default=Path.cwd(), help="working directory of the kernel")
    p.set_defaults(func=_cmd_notebook)

    add_gradstats_parser(sub)  # mtlp gradstats {train,checkpoints,fig3,claims}
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from mtl_paradigms.settings import SettingsError

    try:
        args.func(args)
    except SettingsError as err:
        log.error("invalid settings: %s", err)
        return 2
    except ValueError as err:  # DatasetError, CheckpointError, bad files: the message names it
        log.error("%s", err)
        return 2
    except OSError as err:  # missing files, permissions, a full disk
        where = f"{err.filename}: " if err.filename else ""
        log.error("%s%s", where, err.strerror or err)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
