"""What reaches the jobs, and what stops the workflow before any job: dry runs of small
configs layered over the default, in a temporary copy of the workflow."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from test_workflow import BIN, copy_workflow, env

# Only the main experiment, on one panel.
MAIN_ONLY: dict[str, Any] = {
    "stages": {
        "toy": False, "invariance": False, "main": True, "gradstats": False, "celeba": False,
        "multimnist": False,
    },
    "main": {
        "panels": [{"dataset": "cityscapes", "arch": "segnet"}],
        "grid": {"methods": ["ew"], "optimizers": ["adam"], "learning_rates": [0.001],
                 "seeds": [0], "extra": []},
        "stl": {"optimizer": "adam", "learning_rates": [0.001], "seeds": [0]},
    },
}  # fmt: skip


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return copy_workflow(tmp_path_factory.mktemp("workflow"))


def snakemake(
    workdir: Path,
    config: dict[str, Any],
    *args: str,
    name: str = "test",
    over: tuple[str, ...] = (),
) -> subprocess.CompletedProcess[str]:
    """snakemake with ``config`` as a config file over the default (and the config files
    ``over``); stdout and stderr in order, in .stdout."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    extra = ["--configfile", *over, str(path)]
    return subprocess.run(
        [str(BIN / "snakemake"), "--cores", "1", *extra, *args],
        cwd=workdir, env=env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        timeout=300,
    )  # fmt: skip


def shell_commands(output: str) -> list[list[str]]:
    """The shell command of every job of a `--printshellcmds` dry run, as argument lists."""
    return [
        shlex.split(line.removeprefix("Shell command: "))
        for line in output.splitlines()
        if line.startswith("Shell command: ") and line != "Shell command: None"
    ]


def train_settings(output: str) -> list[tuple[dict[str, Any], str]]:
    """(settings, --out) of every `mtlp train` job."""
    runs = []
    for words in shell_commands(output):
        if words[words.index("mtlp") + 1] == "train":
            settings = json.loads(words[words.index("--settings") + 1])
            runs.append((settings, words[words.index("--out") + 1]))
    return runs


def with_main(**grid: Any) -> dict[str, Any]:
    config = json.loads(json.dumps(MAIN_ONLY))
    config["main"]["grid"].update(grid)
    return config


def test_learning_rates_reach_the_runs_exactly(workdir: Path, tmp_path: Path) -> None:
    lr = 0.00123456789
    config = with_main(
        learning_rates=[lr, 0.001, 0.0010000001],
        extra=[
            {"methods": ["uwo"], "optimizers": ["adam"], "learning_rates": [lr], "seeds": [0],
             "train": {"epochs": 3}},
        ],
    )  # fmt: skip
    config["results_dir"] = str(tmp_path / "results")
    config["main"]["stl"]["learning_rates"] = [lr]
    proc = snakemake(workdir, config, "-n", "-p")
    assert proc.returncode == 0, proc.stdout
    runs = {(s["method"], s["lr"]): (s, out) for s, out in train_settings(proc.stdout)}
    # two learning rates that agree to 6 significant digits are two runs
    assert {lr for method, lr in runs if method == "ew"} == {lr, 0.001, 0.0010000001}
    assert runs[("ew", 0.0010000001)][1].endswith("/ew/adam/lr0.0010000001/seed0")
    assert runs[("ew", 0.001)][1].endswith("/ew/adam/lr0.001/seed0")
    assert runs[("ew", lr)][1].endswith("/ew/adam/lr0.00123456789/seed0")
    # the extra sweep's `train` override follows its run, whatever the learning rate
    uwo, out = runs[("uwo", lr)]
    assert uwo["epochs"] == 3, uwo
    assert out.endswith("/uwo/adam/lr0.00123456789/seed0")
    assert all(s["epochs"] == 6 for (method, _), (s, _) in runs.items() if method == "ew")
    stl = [s for s, out in train_settings(proc.stdout) if "/stl-" in out]
    assert stl
    assert all(s["lr"] == lr for s in stl)


@pytest.mark.parametrize(
    ("grid", "named"),
    [
        (
            {"method_params": {"cagrad": {"cc": 0.5}}},
            "config main.grid.method_params.cagrad: unknown hyperparameter(s) cc; "
            "the hyperparameters of cagrad are: c, rescale",
        ),
        (
            {"method_params": {"cagrd": {"c": 0.5}}},
            "main.grid.method_params: unknown key 'cagrd'; valid keys: adatask, aligned_mtl,",
        ),
        (
            {"methods": ["ew", "pcgard"]},
            "main.grid.methods[1]: 'pcgard' is not one of: adatask, aligned_mtl,",
        ),
        (
            {"extra": [{"methods": ["cagrd"], "optimizers": ["adam"], "learning_rates": [0.1],
                        "seeds": [0]}]},
            "main.grid.extra[0].methods[0]: 'cagrd' is not one of: adatask, aligned_mtl,",
        ),
        (
            {"extra": [{"methods": ["fixed_from_cagrd"], "optimizers": ["adam"],
                        "learning_rates": [0.1], "seeds": [0]}]},
            "config main.grid.extra[0].methods: 'fixed_from_cagrd' names no method ('cagrd' is "
            "not one of: adatask, aligned_mtl,",
        ),
    ],
)  # fmt: skip
def test_unknown_methods_and_hyperparameters_stop_the_workflow_before_any_job(
    workdir: Path, tmp_path: Path, grid: dict[str, Any], named: str
) -> None:
    config = with_main(**grid)
    config["results_dir"] = str(tmp_path / "results")
    proc = snakemake(workdir, config, "-n")
    assert proc.returncode != 0
    assert named in proc.stdout
    assert "Building DAG of jobs" not in proc.stdout
    assert not (tmp_path / "results").exists()


def test_unknown_top_level_key_is_answered_in_a_few_lines(workdir: Path, tmp_path: Path) -> None:
    proc = snakemake(workdir, {"stagez": {"toy": True}}, "-n", name="stagez")
    assert proc.returncode != 0
    lines = proc.stdout.strip().splitlines()
    assert len(lines) < 30, proc.stdout
    answer = next(i for i, line in enumerate(lines) if "stagez: unknown key" in line)
    assert answer < 5, proc.stdout
    assert "allowed keys at the top level: celeba, cluster, data," in lines[answer]
    assert "stagez.yaml" in lines[answer]


def test_paths_with_spaces_stay_whole_in_every_shell_command(workdir: Path, tmp_path: Path) -> None:
    results, figures, data = (str(tmp_path / f"my {d}") for d in ("results", "figures", "data"))
    config = {
        "results_dir": results,
        "figures_dir": figures,
        "data": {"dir": data},
        "gradstats": {"lr": "selected"},  # --lr-from <results>/main/runs.csv
        # downloaded and extracted into <data.dir>: --archive, --record
        "main": {"datasets": {"cityscapes": {"source": "real"}}},
    }
    proc = snakemake(
        workdir, config, "-n", "-p", name="spaces", over=("workflow/config/tiny.yaml",)
    )
    assert proc.returncode == 0, proc.stdout
    commands = shell_commands(proc.stdout)
    assert len(commands) > 20
    for words in commands:
        for word in words:
            if str(tmp_path) in word:
                assert any(d in word for d in (results, figures, data)), (word, words)
    claims = next(w for w in commands if w[1:3] == ["gradstats", "claims"])
    panels = [claims[i + 1] for i, w in enumerate(claims) if w == "--panel"]
    assert panels == [f"cityscapes/segnet={results}/gradstats/cityscapes/segnet/gradstats.csv"]
    sources = [claims[i + 1] for i, w in enumerate(claims) if w == "--source"]
    assert sources == ["cityscapes=real"]
    train = next(w for w in commands if w[1:3] == ["gradstats", "train"])
    assert train[train.index("--lr-from") + 1] == f"{results}/main/runs.csv"
    aggregate = next(w for w in commands if w[:2] == ["mtlp", "aggregate"])
    assert aggregate[aggregate.index("--out") + 1] == f"{results}/main/runs.csv"
    prepare = next(w for w in commands if w[:2] == ["mtlp", "prepare-mtan"])
    assert prepare[prepare.index("--archive") + 1] == f"{data}/downloads/cityscapes/cityscapes.zip"
    assert prepare[prepare.index("--out") + 1] == f"{data}/cityscapes"
    verify = next(w for w in commands if w[:2] == ["mtlp", "verify-dataset"])
    assert verify[verify.index("--root") + 1] == f"{data}/cityscapes"
    trains = [w for w in commands if w[1:3] == ["mtlp", "train"]]
    celeba = [w for w in trains if "/runs/celeba/" in w[w.index("--out") + 1]]
    assert celeba
    assert all(w[0] == f"TORCH_HOME={data}/torch" for w in celeba)


def test_nested_command_line_config_takes_numbers_and_booleans(
    workdir: Path, tmp_path: Path
) -> None:
    # Snakemake hands nested `--config` values over as strings ("2", "false", "0.002")
    proc = snakemake(
        workdir,
        MAIN_ONLY,
        "-n",
        "-p",
        "--config",
        f"results_dir={tmp_path / 'results'}",
        'main={"train": {"epochs": 2, "augment": false}, "grid": {"learning_rates": [0.002],'
        ' "method_params": {"ew": {}}}}',
    )
    assert proc.returncode == 0, proc.stdout
    runs = train_settings(proc.stdout)
    assert runs
    for settings, out in runs:
        assert settings["epochs"] == 2
        assert settings["augment"] is False
        assert settings["batch_size"] == 8  # the rest of main.train stays
        if "/stl-" not in out:
            assert settings["lr"] == 0.002
            assert out.endswith("/lr0.002/seed0")


def test_a_run_in_two_sweeps_with_different_train_stops_the_workflow(
    workdir: Path, tmp_path: Path
) -> None:
    config = with_main(
        extra=[
            {"methods": ["ew"], "optimizers": ["adam"], "learning_rates": [0.001], "seeds": [0],
             "train": {"epochs": 3}},
        ],
    )  # fmt: skip
    config["results_dir"] = str(tmp_path / "results")
    proc = snakemake(workdir, config, "-n", "-p", name="collision")
    assert proc.returncode != 0
    assert "cityscapes/segnet/ew/adam/lr0.001/seed0 lies in several sweeps" in proc.stdout


def test_the_method_registry_is_read_once_per_version_of_the_package(
    workdir: Path, tmp_path: Path
) -> None:
    config = with_main(method_params={"cagrad": {"c": 0.25}}, methods=["ew", "cagrad"])
    config["results_dir"] = str(tmp_path / "results")
    cache = workdir / ".snakemake" / "mtlp"
    shutil.rmtree(cache, ignore_errors=True)
    assert snakemake(workdir, config, "-n", name="registry").returncode == 0
    (written,) = cache.glob("registry-*.json")
    assert "cagrad" in json.loads(written.read_text())
    # a cached registry is what the check reads: an unknown hyperparameter of it is refused
    written.write_text(json.dumps({"cagrad": ["c"], "ew": []}))
    config["main"]["grid"]["method_params"] = {"cagrad": {"rescale": 1}}
    proc = snakemake(workdir, config, "-n", name="registry")
    assert proc.returncode != 0
    assert "the hyperparameters of cagrad are: c" in proc.stdout
