"""environment.yml and envs/*.yaml must stay consistent with pyproject.toml.

conda is not available here, so consistency is what can be checked: every runtime
dependency of the package appears in each conda environment with the same lower bound,
and no environment asks for a package the project does not declare.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
# PyPI name -> conda-forge name, where they differ.
CONDA_NAME = {"torch": "pytorch", "matplotlib": "matplotlib-base"}
NOT_PACKAGES = {"python", "pip"}
SPEC = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(.*)$")


def parse(spec: str) -> tuple[str, str]:
    match = SPEC.match(spec)
    assert match, f"cannot parse requirement {spec!r}"
    name, constraint = match.groups()
    return name.lower().replace("_", "-"), constraint.replace(" ", "")


def pyproject() -> tuple[dict[str, str], dict[str, str]]:
    """(what `mtlp` and its rules need: the core and the workflow extra, what the whole
    project adds: the docs and dev extras)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    runtime = dict(parse(s) for s in [*project["dependencies"], *extras["workflow"]])
    rest = dict(parse(s) for s in [*extras["docs"], *extras["dev"]])
    return runtime, rest


def conda_env(path: Path) -> tuple[dict[str, str], list[str]]:
    env = yaml.safe_load(path.read_text())
    conda, pip = {}, []
    for dep in env["dependencies"]:
        if isinstance(dep, dict):
            pip += dep.get("pip", [])
        else:
            name, constraint = parse(dep)
            conda[name] = constraint
    return conda, pip


def as_conda(deps: dict[str, str]) -> dict[str, str]:
    return {CONDA_NAME.get(name, name): constraint for name, constraint in deps.items()}


ENV_FILES = [ROOT / "environment.yml", *sorted((ROOT / "envs").glob("*.yaml"))]


@pytest.mark.parametrize("path", ENV_FILES, ids=lambda p: p.name)
def test_environment_matches_pyproject(path: Path) -> None:
    runtime, rest = pyproject()
    conda, _ = conda_env(path)
    packages = {k: v for k, v in conda.items() if k not in NOT_PACKAGES}
    expected = as_conda(runtime)
    if path.name == "environment.yml":
        expected |= as_conda(rest)
    else:
        # Rule environments need what the `mtlp` verbs import, not the workflow engine itself
        # or its executor plugins.
        expected.pop("snakemake")
        expected.pop("snakemake-executor-plugin-slurm")
    assert packages == expected
    python = conda.get("python")
    requires = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    assert python == requires


def test_whole_project_environment_installs_the_package() -> None:
    _, pip = conda_env(ROOT / "environment.yml")
    assert pip == ["--editable ."]


@pytest.mark.parametrize("path", sorted((ROOT / "envs").glob("*.yaml")), ids=lambda p: p.name)
def test_rule_environment_installs_the_package(path: Path) -> None:
    script = path.with_suffix(".post-deploy.sh")
    assert script.is_file(), f"{path.name} needs {script.name} to install mtl-paradigms"
    assert "pip install --no-deps --editable ." in script.read_text()


def test_every_rule_env_is_used_and_exists() -> None:
    rules = "\n".join(p.read_text() for p in (ROOT / "workflow" / "rules").glob("*.smk"))
    used = set(re.findall(r'"\.\./\.\./envs/([^"]+)"', rules))
    assert used, "no rule declares a conda environment"
    assert used == {p.name for p in (ROOT / "envs").glob("*.yaml")}
