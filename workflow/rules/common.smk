# Shared helpers: config validation and target lists. No rules here.
import json
import os

from snakemake.utils import validate

validate(config, schema="../schemas/config.schema.yaml")

FIGURES = config["figures_dir"]
RESULTS = config["results_dir"]
NOTEBOOK_OUT = f"{RESULTS}/notebooks"
LOGS = f"{RESULTS}/logs"

STAGE_ARTEFACTS = {
    "toy": {
        "figures": ["fig1"],
        "tables": ["table1", "tableA3"],
        "notebook": "toy",
    },
    "invariance": {
        "figures": ["figA1", "figA2"],
        "tables": ["invariance_checks"],
        "notebook": "invariance",
    },
}


def settings_json(section):
    """The validated config section, as compact JSON for `mtlp <verb> --settings`."""
    return json.dumps(config[section], sort_keys=True, separators=(",", ":"))


def figure_files(name):
    return [f"{FIGURES}/{name}.{ext}" for ext in ("pdf", "png")]


def table_files(name):
    return [f"{FIGURES}/{name}.{ext}" for ext in ("csv", "md", "tex")]


def notebook_files(name):
    return [f"{NOTEBOOK_OUT}/{name}.{ext}" for ext in ("ipynb", "html")]


def enabled_stages():
    return [stage for stage, on in config["stages"].items() if on]


def stage_outputs(stage):
    spec = STAGE_ARTEFACTS[stage]
    files = notebook_files(spec["notebook"])
    for name in spec["figures"]:
        files += figure_files(name)
    for name in spec["tables"]:
        files += table_files(name)
    return files


def claims_inputs():
    return [f"{RESULTS}/claims/{stage}.csv" for stage in enabled_stages()]


def all_targets():
    files = [f"{FIGURES}/claims.csv", f"{FIGURES}/claims.md"]
    for stage in enabled_stages():
        files += stage_outputs(stage)
    return files
