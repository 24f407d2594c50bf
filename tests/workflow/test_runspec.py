"""A run's directory and settings (src/mtl_paradigms/runspec.py), without Snakemake."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import yaml

from mtl_paradigms.runspec import Runs, RunSpec, compact_json, run_path
from mtl_paradigms.workflow_checks import (
    cached_registry_hyperparameters,
    fmt_lr,
    package_fingerprint,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())


@pytest.fixture
def config() -> dict[str, Any]:
    """The default config with the schema's defaults filled in, as the workflow sees it."""
    config = copy.deepcopy(DEFAULT)
    validate_config(config, SCHEMA)
    return config


def test_run_path_is_the_rules_pattern_and_the_runs_directory() -> None:
    pattern = "runs/{dataset}/{arch}/{method}/{optimizer}/lr{lr}/seed{seed}"
    assert run_path("runs") == pattern
    assert run_path("runs", file="metrics.json") == f"{pattern}/metrics.json"
    assert run_path("runs", method="stl-{task}") == pattern.replace("{method}", "stl-{task}")
    assert (
        run_path("r", "celeba", "resnet18")
        == "r/celeba/resnet18/{method}/{optimizer}/lr{lr}/seed{seed}"
    )
    run = RunSpec("nyuv2", "segnet", "pcgrad", "adam", 1e-5, 2)
    assert run.path("res/runs") == "res/runs/nyuv2/segnet/pcgrad/adam/lr1e-05/seed2"
    assert run.label == "nyuv2/segnet/pcgrad/adam/lr1e-05/seed2"
    stl = RunSpec("nyuv2", "segnet", "ew", "adam", 0.001, 0, task="depth", kind="stl")
    assert stl.path("runs") == "runs/nyuv2/segnet/stl-depth/adam/lr0.001/seed0"
    gs = RunSpec("nyuv2", "segnet", "ew", "adam", 0.001, 0, kind="gradstats")
    assert gs.path("results/gradstats") == "results/gradstats/nyuv2/segnet"  # fmt: skip


def test_the_exact_learning_rate_names_the_directory_and_reaches_the_settings(
    config: dict[str, Any],
) -> None:
    lr = 0.00123456789
    run = RunSpec.from_wildcards(
        {"dataset": "nyuv2", "arch": "segnet", "method": "ew", "optimizer": "adam",
         "lr": fmt_lr(lr), "seed": "0"}
    )  # fmt: skip
    assert run.path("runs").endswith("/lr0.00123456789/seed0")
    assert run.lr == lr
    assert run.settings(config)["lr"] == lr
    # two rates equal to 6 significant digits stay two runs
    near = RunSpec("nyuv2", "segnet", "ew", "adam", 0.0010000001, 0)
    assert near.path("runs") != RunSpec("nyuv2", "segnet", "ew", "adam", 0.001, 0).path("runs")


def test_main_settings_merge_in_order(config: dict[str, Any]) -> None:
    main = config["main"]
    main["train"] |= {"epochs": 1, "batch_size": 1, "width": 0.1}
    main["datasets"]["nyuv2"]["train"] = {"epochs": 2, "batch_size": 2}
    main["archs"]["segnet"] = {"width": 0.25}
    main["grid"]["method_params"] = {"cagrad": {"c": 0.25}}
    main["grid"]["methods"] = ["cagrad"]
    main["grid"]["extra"] = []
    run = RunSpec("nyuv2", "segnet", "cagrad", "sgd", 0.1, 3)
    settings = run.settings(config)
    assert settings["epochs"] == 2
    assert settings["batch_size"] == 2
    assert settings["width"] == 0.25
    assert settings | {} == Runs(config).settings(run)
    assert {k: settings[k] for k in ("dataset", "arch", "method", "optimizer", "lr", "seed")} == {
        "dataset": "nyuv2", "arch": "segnet", "method": "cagrad", "optimizer": "sgd", "lr": 0.1,
        "seed": 3,
    }  # fmt: skip
    assert settings["method_params"] == {"c": 0.25}
    assert settings["tasks"] == main["datasets"]["nyuv2"]["tasks"]
    assert settings["selection"] == "delta_m"
    assert settings["data_dir"] == "data/synthetic/nyuv2"  # the generated set


def test_sweep_overrides_follow_their_run(config: dict[str, Any]) -> None:
    grid = config["main"]["grid"]
    epochs = config["main"]["train"]["epochs"]
    grid["extra"] = [
        {"methods": ["uwo"], "optimizers": ["adam"], "learning_rates": [0.00123456789],
         "seeds": [0], "train": {"epochs": epochs + 7}},
    ]  # fmt: skip
    runs = Runs(config)
    dataset, arch = runs.panels()[0]
    inside = RunSpec(dataset, arch, "uwo", "adam", 0.00123456789, 0)
    outside = RunSpec(dataset, arch, "uwo", "adam", 0.00123456789, 1)
    main_run = RunSpec(dataset, arch, grid["methods"][0], grid["optimizers"][0],
                       grid["learning_rates"][0], grid["seeds"][0])  # fmt: skip
    assert runs.settings(inside)["epochs"] == epochs + 7
    assert runs.settings(outside).get("epochs") == epochs
    assert runs.settings(main_run).get("epochs") == epochs
    assert inside in runs.main(dataset, arch)
    assert outside not in runs.main(dataset, arch)
    # the settings of single-task runs take no sweep overrides
    stl = runs.stl(dataset, arch)[0]
    assert runs.settings(stl)["method"] == "ew"
    assert runs.settings(stl)["selection"] == "val_loss"
    assert runs.settings(stl)["tasks"] == [stl.task]


def test_a_run_in_two_sweeps_is_listed_once_and_refused_if_their_train_differ(
    config: dict[str, Any],
) -> None:
    grid = config["main"]["grid"]
    dataset, arch = Runs(config).panels()[0]
    sweep = {"methods": grid["methods"][:1], "optimizers": grid["optimizers"][:1],
             "learning_rates": grid["learning_rates"][:1], "seeds": grid["seeds"][:1]}  # fmt: skip
    run = RunSpec(dataset, arch, sweep["methods"][0], sweep["optimizers"][0],
                  sweep["learning_rates"][0], sweep["seeds"][0])  # fmt: skip
    grid["extra"] = [sweep]  # the same run, same (no) `train`: one run
    runs = Runs(config)
    assert runs.main(dataset, arch).count(run) == 1
    assert runs.settings(run)["method"] == run.method
    grid["extra"] = [sweep | {"train": {"epochs": 99}}]
    with pytest.raises(ValueError, match="lies in several sweeps whose `train` settings differ"):
        Runs(config).settings(run)
    # the collision is refused only for the run that lies in both
    other = RunSpec(dataset, arch, run.method, run.optimizer, run.lr, run.seed + 1000)
    assert Runs(config).settings(other)["seed"] == run.seed + 1000


def test_fixed_from_runs_take_fixed_weights(config: dict[str, Any]) -> None:
    wildcards = SimpleNamespace(dataset="nyuv2", arch="segnet", source="pcgrad", optimizer="adam",
                                lr="0.001", seed="0")  # fmt: skip
    run = RunSpec.from_wildcards(wildcards, method="fixed_from_pcgrad")
    settings = run.settings(config)
    assert settings["method"] == "fixed"
    assert settings["label"] == "fixed_from_pcgrad"
    assert "method_params" not in settings
    assert run.path("runs") == "runs/nyuv2/segnet/fixed_from_pcgrad/adam/lr0.001/seed0"


def test_gradstats_and_celeba_settings(config: dict[str, Any]) -> None:
    config["gradstats"]["train"] = {"epochs": 1}
    runs = Runs(config)
    gs = runs.gradstats()
    assert [(r.dataset, r.arch) for r in gs] == runs.gradstats_panels()
    settings = runs.settings(gs[0])
    assert settings["method"] == "ew"
    assert settings["optimizer"] == "adam"
    assert settings["selection"] == "val_loss"
    assert settings["epochs"] == 1
    if config["gradstats"]["lr"] == "selected":
        assert settings["lr"] == 1e-3
    celeba = runs.celeba()
    assert celeba
    assert all(r.dataset == "celeba" and r.arch == "resnet18" for r in celeba)
    settings = runs.settings(celeba[0])
    assert settings["data_dir"] == runs.celeba_prepared()
    assert settings["augment"] is False
    assert settings["tasks"] == config["celeba"].get("attributes")
    assert celeba[0].path("runs").startswith("runs/celeba/resnet18/")
    wildcards = {"method": celeba[0].method, "optimizer": celeba[0].optimizer,
                 "lr": fmt_lr(celeba[0].lr), "seed": str(celeba[0].seed)}  # fmt: skip
    assert RunSpec.from_wildcards(wildcards, "celeba") == celeba[0]


def test_settings_json_is_compact_sorted_and_computed_once(config: dict[str, Any]) -> None:
    runs = Runs(config)
    run = runs.main(*runs.panels()[0])[0]
    text = runs.settings_json(run)
    assert text == compact_json(runs.settings(run))
    assert json.loads(text) == runs.settings(run)
    assert text == json.dumps(json.loads(text), sort_keys=True, separators=(",", ":"))
    assert runs.settings_json(run) is text


def test_every_listed_run_has_settings(config: dict[str, Any]) -> None:
    runs = Runs(config)
    listed = [r for d, a in runs.panels() for r in runs.stl(d, a) + runs.main(d, a)]
    listed += runs.celeba() + runs.gradstats()
    assert listed
    for run in listed:
        settings = runs.settings(run)
        assert settings["lr"] == run.lr
        assert settings["seed"] == run.seed
    assert len({r.path("runs") for r in listed if r.kind != "gradstats"}) == len(
        [r for r in listed if r.kind != "gradstats"]
    )


def test_a_task_belongs_to_single_task_runs_only() -> None:
    with pytest.raises(ValueError, match="only it, names a task"):
        RunSpec("nyuv2", "segnet", "ew", "adam", 0.1, 0, task="depth")
    with pytest.raises(ValueError, match="only it, names a task"):
        RunSpec("nyuv2", "segnet", "ew", "adam", 0.1, 0, kind="stl")


def test_registry_hyperparameters_are_cached_per_package_version(tmp_path: Path) -> None:
    calls = []

    def compute() -> dict[str, list[str]]:
        calls.append(1)
        return {"cagrad": ["c", "rescale"], "ew": []}

    cached = cached_registry_hyperparameters(tmp_path, compute)
    assert cached() == {"cagrad": ["c", "rescale"], "ew": []}
    assert cached() == {"cagrad": ["c", "rescale"], "ew": []}
    assert len(calls) == 1
    (path,) = tmp_path.glob("registry-*.json")
    assert package_fingerprint() in path.name
    path.write_text("not json")  # a broken cache is read afresh
    assert cached_registry_hyperparameters(tmp_path, compute)() == compute()
    stale = tmp_path / "registry-0.json"
    stale.write_text(json.dumps({"old": []}))
    path.unlink()
    assert cached_registry_hyperparameters(tmp_path, compute)()["cagrad"] == ["c", "rescale"]
    assert not stale.exists()
