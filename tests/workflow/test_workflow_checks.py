"""The workflow's pure helpers (src/mtl_paradigms/workflow_checks.py), without Snakemake."""

from __future__ import annotations

import copy
import math
import shlex
import struct
from pathlib import Path

import pytest
import yaml
from hypothesis import assume, given
from hypothesis import strategies as st
from snakemake.utils import update_config

from mtl_paradigms.workflow_checks import (
    ConfigError,
    check_learning_rates,
    check_method_params,
    coerce_cli_values,
    config_sources,
    fmt_lr,
    quote,
    registry_hyperparameters,
    single_quoted,
    validate_config,
)

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())
DEFAULT = yaml.safe_load((ROOT / "workflow/config/default.yaml").read_text())

positive_floats = st.floats(min_value=0, exclude_min=True, allow_nan=False, allow_infinity=False)


@given(positive_floats)
def test_fmt_lr_gives_back_exactly_the_learning_rate(lr: float) -> None:
    assert float(fmt_lr(lr)) == lr


def ulps_away(x: float, n: int) -> float:
    """The float ``n`` representable values above (below, for n < 0) the positive float x."""
    return struct.unpack("<d", struct.pack("<q", struct.unpack("<q", struct.pack("<d", x))[0] + n))[
        0
    ]


@given(positive_floats, positive_floats)
def test_fmt_lr_of_different_learning_rates_differ(a: float, b: float) -> None:
    assert (fmt_lr(a) == fmt_lr(b)) == (a == b)


@given(positive_floats, st.integers(min_value=-(10**6), max_value=10**6).filter(bool))
def test_fmt_lr_of_neighbouring_learning_rates_differ(a: float, n: int) -> None:
    b = ulps_away(a, n)
    assume(0 < b < math.inf)
    assert fmt_lr(a) != fmt_lr(b)


@pytest.mark.parametrize(
    ("lr", "path"),
    [
        (0.001, "0.001"), (1e-05, "1e-05"), (0.0001, "0.0001"), (0.1, "0.1"), (1, "1"),
        (10, "10"), (0.5, "0.5"), (5e-4, "0.0005"), (3e-5, "3e-05"),
        (0.00123456789, "0.00123456789"), (0.0010000001, "0.0010000001"),
    ],
)  # fmt: skip
def test_fmt_lr_keeps_the_short_paths(lr: float, path: str) -> None:
    assert fmt_lr(lr) == path


@given(st.lists(st.text(), min_size=1, max_size=4))
def test_quoted_words_come_back_whole_from_the_shell(words: list[str]) -> None:
    words = [w.replace("\x00", "") for w in words]
    assert shlex.split(quote(*words)) == words
    assert shlex.split(" ".join(map(single_quoted, words))) == words


def test_single_quoted_keeps_the_former_archive_params() -> None:
    # rule prepare_mtan's params text, unchanged for the paths it had (no rerun)
    assert single_quoted("data/downloads/nyuv2/nyuv2.zip") == "'data/downloads/nyuv2/nyuv2.zip'"


def test_learning_rates_sharing_a_run_directory_are_refused_by_name() -> None:
    config = copy.deepcopy(DEFAULT)
    config["main"]["grid"]["learning_rates"] = [0.001, 0.01]
    config["main"]["grid"]["extra"][0]["learning_rates"] = [0.0010000001]
    check_learning_rates(config)  # the run paths' format keeps them apart

    def six_digits(lr: float) -> str:  # the former format
        return f"{float(lr):g}"

    with pytest.raises(ConfigError) as err:
        check_learning_rates(config, fmt=six_digits)
    message = str(err.value)
    assert "main.grid.extra[0].learning_rates" in message
    assert "main.grid.learning_rates" in message
    assert "0.0010000001" in message
    assert "0.001 " in message
    assert "lr0.001" in message
    config["main"]["stl"]["learning_rates"] = [math.inf]
    with pytest.raises(ConfigError, match=r"main\.stl\.learning_rates: inf is not a finite"):
        check_learning_rates(config)


def test_method_params_are_checked_against_the_registry() -> None:
    known = registry_hyperparameters()
    assert known["cagrad"] == ["c", "rescale"]
    assert known["ew"] == []
    config = {"main": {"grid": {"method_params": {"cagrad": {"c": 0.4}, "rlw": {}}}}}
    check_method_params(config, registry_hyperparameters)
    config["main"]["grid"]["method_params"]["cagrad"] = {"cc": 0.5, "c": 0.4}
    config["celeba"] = {"grid": {"method_params": {"ew": {"x": 1}}}}
    with pytest.raises(ConfigError) as err:
        check_method_params(config, registry_hyperparameters)
    lines = str(err.value).splitlines()
    assert lines == [
        "config main.grid.method_params.cagrad: unknown hyperparameter(s) cc; "
        "the hyperparameters of cagrad are: c, rescale",
        "config celeba.grid.method_params.ew: unknown hyperparameter(s) x; "
        "ew takes no hyperparameters",
    ]


def test_method_params_without_hyperparameters_do_not_load_the_registry() -> None:
    def registry() -> dict[str, list[str]]:
        raise AssertionError("the registry (and torch) loaded for nothing")

    check_method_params(DEFAULT, registry)
    check_method_params({"main": {"grid": {"method_params": {"cagrad": {}}}}}, registry)


def test_schema_errors_are_one_line_each_naming_key_expectation_and_file(
    tmp_path: Path,
) -> None:
    override = {"stagez": {"toy": True}, "toy": {"iteration": 10, "iterations": "many"}}
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(override))
    config = copy.deepcopy(DEFAULT)
    config.update(stagez={"toy": True})
    config["toy"].update(iteration=10, iterations="many")
    sources = config_sources([ROOT / "workflow/config/default.yaml"], [tmp_path / "bad.yaml"])
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA, sources)
    lines = str(err.value).splitlines()
    assert len(lines) == 4, lines
    assert lines[0].startswith("Invalid config (")
    assert "bad.yaml" in lines[0]
    assert lines[1].startswith("  stagez: unknown key; allowed keys at the top level: celeba,")
    assert lines[1].endswith("bad.yaml)")
    assert lines[2].startswith("  toy.iteration: unknown key; allowed keys in toy: adam_betas,")
    assert lines[3] == f"  toy.iterations: 'many' is not of type integer (set in {sources[1][0]})"


def test_schema_errors_on_methods_list_the_valid_names() -> None:
    config = copy.deepcopy(DEFAULT)
    config["main"]["grid"]["methods"] = ["ew", "pcgard"]
    config["main"]["grid"]["method_params"] = {"cagrd": {}}
    with pytest.raises(ConfigError) as err:
        validate_config(config, SCHEMA)
    params, methods = str(err.value).splitlines()[1:]
    assert params.startswith("  main.grid.method_params: unknown key 'cagrd'; valid keys: ")
    assert methods.startswith("  main.grid.methods[1]: 'pcgard' is not one of: ")
    for line in (params, methods):
        assert "adatask, aligned_mtl, auto_lambda, cagrad," in line
    assert methods.endswith("or a string matching ^fixed_from_[a-z0-9_]+$")


def test_schema_defaults_are_filled_in() -> None:
    schema = copy.deepcopy(SCHEMA)
    schema["properties"]["toy"]["properties"]["iterations"]["default"] = 7
    config = copy.deepcopy(DEFAULT)
    del config["toy"]["iterations"]
    validate_config(config, schema)
    assert config["toy"]["iterations"] == 7


def test_command_line_strings_get_the_types_the_schema_asks_for() -> None:
    # `--config 'main={"train": {"epochs": 3}}'`: Snakemake's YAML BaseLoader gives strings
    cli = {
        "main": {
            "train": {"epochs": "3", "lr_gamma": "0.5", "augment": "false"},
            "grid": {"learning_rates": ["0.01", "1e-3"], "method_params": {"cagrad": {"c": "0.4"}}},
        },
        "gradstats": {"lr": "selected", "extract": {"chunk_size": "null"}},
        "toy": {"iterations": "many"},
        "results_dir": "007",
        "figures_dir": 2024,  # `--config figures_dir=2024`: Snakemake parses it as a number
    }
    config = copy.deepcopy(DEFAULT)
    update_config(config, copy.deepcopy(cli))  # as Snakemake merges `--config` last
    coerce_cli_values(config, cli, SCHEMA)
    assert config["main"]["train"]["epochs"] == 3
    assert config["main"]["train"]["lr_gamma"] == 0.5
    assert config["main"]["train"]["augment"] is False
    assert config["main"]["train"]["batch_size"] == 8  # from the file, untouched
    assert config["main"]["grid"]["learning_rates"] == [0.01, 0.001]
    assert config["main"]["grid"]["method_params"] == {"cagrad": {"c": 0.4}}
    assert config["gradstats"]["lr"] == "selected"
    assert config["gradstats"]["extract"]["chunk_size"] is None
    assert config["toy"]["iterations"] == "many"  # left for the schema to refuse
    assert config["results_dir"] == "007"  # a string where the schema asks for one
    assert config["figures_dir"] == "2024"
