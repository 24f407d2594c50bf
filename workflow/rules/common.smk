# Shared helpers: config validation and target lists. No rules here.
import json
import os
import sys

import yaml
from snakemake.exceptions import WorkflowError

try:
    from mtl_paradigms import workflow_checks
except ModuleNotFoundError:  # snakemake's Python lacks the package: the checkout's copy
    sys.path.insert(0, os.path.join(workflow.basedir, "src"))
    from mtl_paradigms import workflow_checks
from mtl_paradigms.runspec import RunSpec, Runs, compact_json, run_path
from mtl_paradigms.workflow_checks import fmt_lr, quote, single_quoted

# Before any job (src/mtl_paradigms/workflow_checks.py): `--config` values typed as the schema
# asks, the schema (with its defaults), fixed_from_<method> sources, method hyperparameters
# (the package's registry) and the learning rates of the run paths. A problem stops the
# workflow with a few lines naming the key, what was expected and the config file.
with open(workflow.source_path("../schemas/config.schema.yaml")) as f:
    CONFIG_SCHEMA = yaml.safe_load(f)
_cli_config = dict(getattr(workflow.config_settings, "config", None) or {})
try:
    workflow_checks.check_config(
        config,
        CONFIG_SCHEMA,
        sources=workflow_checks.config_sources(
            workflow.configfiles, workflow.overwrite_configfiles, _cli_config
        ),
        cli_config=_cli_config,
        # the method registry (imports torch) read once per version of the package
        hyperparameters=workflow_checks.cached_registry_hyperparameters(
            os.path.join(".snakemake", "mtlp")
        ),
        validate=not workflow.modifier.skip_validation,
    )
except workflow_checks.ConfigError as err:
    raise WorkflowError(str(err)) from None

FIGURES = config["figures_dir"]
RESULTS = config["results_dir"]
NOTEBOOK_OUT = f"{RESULTS}/notebooks"
LOGS = f"{RESULTS}/logs"
RUNS = f"{RESULTS}/runs"
DATA = config["data"]["dir"]
# Every run of the config, its directory and its settings (src/mtl_paradigms/runspec.py),
# each computed once however many jobs ask.
RUN_SPECS = Runs(config)

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
    return compact_json(config[section])


def run_settings(wildcards, kind="main", **fixed):
    """The TrainSettings JSON of the run a job's wildcards name (`kind`: main, stl, celeba;
    `fixed`: parts the rule's pattern spells out), from mtl_paradigms.runspec."""
    return RUN_SPECS.settings_json(RunSpec.from_wildcards(wildcards, kind, **fixed))


def run_files(runs, name):
    """`name` (metrics.json, ...) of each run."""
    return [f"{run.path(RUNS)}/{name}" for run in runs]


def figure_files(name):
    return [f"{FIGURES}/{name}.{ext}" for ext in ("pdf", "png")]


def table_files(name):
    return [f"{FIGURES}/{name}.{ext}" for ext in ("csv", "md", "tex")]


def notebook_files(name):
    return [f"{NOTEBOOK_OUT}/{name}.{ext}" for ext in ("ipynb", "html")]


# ---- the main experiment -------------------------------------------------------------
# Paper numbering of the per-panel artefacts (Elich et al. 2024).
PANEL_FIGURE = {"cityscapes": "fig2", "nyuv2": "figA4"}
PANEL_TABLE = {
    ("cityscapes", "segnet"): "tableA4",
    ("cityscapes", "deeplabv3"): "tableA5",
    ("nyuv2", "segnet"): "tableA6",
    ("nyuv2", "deeplabv3"): "tableA7",
}


def main_panels():
    return [(p["dataset"], p["arch"]) for p in config["main"]["panels"]]


def panel_names(dataset, arch):
    return {
        "dataset": dataset,
        "arch": arch,
        "figure": f"{PANEL_FIGURE[dataset]}_{arch}",
        "table": PANEL_TABLE[(dataset, arch)],
    }


def panels_json():
    return json.dumps(
        [panel_names(d, a) for d, a in main_panels()], separators=(",", ":")
    )


def main_artefacts():
    files = figure_files("figA3") + table_files("table2") + table_files("tableA2")
    for dataset, arch in main_panels():
        names = panel_names(dataset, arch)
        files += figure_files(names["figure"]) + table_files(names["table"])
    return files


dataset_config = RUN_SPECS.dataset_config
# the MTAN folder: generated, given by `data_dir` (used as is), or downloaded
dataset_dir = RUN_SPECS.dataset_dir


def mtan_release(dataset):
    """What verify_dataset needs first: the downloaded release, or nothing for `data_dir`."""
    ds = dataset_config(dataset)
    return [] if ds.get("data_dir") else [f"{DATA}/{dataset}"]


def dataset_input(dataset):
    """The training input: the generated synthetic set, or the verification report of a real
    dataset on disk (rule verify_dataset, which fails with a clear message if it is absent).
    """
    if dataset_config(dataset)["source"] == "synthetic":
        return [dataset_dir(dataset), *main_weights()]
    return [f"{RESULTS}/data/{dataset}.verified.json", *main_weights()]


def synthetic_json(dataset):
    return compact_json({"dataset": dataset, **dataset_config(dataset)["synthetic"]})


def stl_metrics(dataset, arch):
    return run_files(RUN_SPECS.stl(dataset, arch), "metrics.json")


def mtl_metrics(dataset, arch):
    # a run in two sweeps is trained once
    return run_files(RUN_SPECS.main(dataset, arch), "metrics.json")


def main_run_metrics():
    files = []
    for dataset, arch in main_panels():
        files += stl_metrics(dataset, arch) + mtl_metrics(dataset, arch)
    return files


def data_sources_args():
    datasets = sorted({dataset for dataset, _ in main_panels()})
    return " ".join(
        quote("--source", f"{d}={dataset_config(d)['source']}") for d in datasets
    )


def enabled_stages():
    return [stage for stage, on in config["stages"].items() if on]


# ---- gradient statistics (workflow/rules/gradstats.smk) --------------------------------
GRADSTATS = f"{RESULTS}/gradstats"
GRADSTATS_FAMILIES = ("fig4", "figA5", "figA6", "figA7")


gradstats_panels = RUN_SPECS.gradstats_panels


def gradstats_json(key):
    """A sub-section of `gradstats` as compact JSON for `mtlp gradstats --settings`."""
    return compact_json(config["gradstats"][key])


def gradstats_train_json(dataset, arch):
    """TrainSettings of a panel's gradient-statistics run (mtl_paradigms.runspec)."""
    return RUN_SPECS.settings_json(RUN_SPECS.gradstats_run(dataset, arch))


def gradstats_lr_input():
    """`lr: selected` takes EW + Adam's learning rate selected by the main experiment."""
    return (
        [f"{RESULTS}/main/runs.csv"] if config["gradstats"]["lr"] == "selected" else []
    )


def gradstats_stats_files():
    return [f"{GRADSTATS}/{d}/{a}/gradstats.csv" for d, a in gradstats_panels()]


def gradstats_panel_args():
    """`--panel <dataset>/<arch>=<gradstats.csv>` of every panel, quoted for the shell."""
    return " ".join(
        quote("--panel", f"{d}/{a}={GRADSTATS}/{d}/{a}/gradstats.csv")
        for d, a in gradstats_panels()
    )


def gradstats_sources_args():
    datasets = sorted({d for d, _ in gradstats_panels()})
    return " ".join(
        quote("--source", f"{d}={dataset_config(d)['source']}") for d in datasets
    )


def gradstats_figure_ids(dataset, arch):
    return {family: f"{family}_{dataset}_{arch}" for family in GRADSTATS_FAMILIES}


def gradstats_panels_json():
    panels = [
        {"dataset": d, "arch": a, "stats": f"{GRADSTATS}/{d}/{a}/gradstats.csv"}
        | gradstats_figure_ids(d, a)
        for d, a in gradstats_panels()
    ]
    return json.dumps(panels, separators=(",", ":"))


def gradstats_artefacts():
    files = figure_files("fig3") + figure_files("gradstats_interference")
    for dataset, arch in gradstats_panels():
        for name in gradstats_figure_ids(dataset, arch).values():
            files += figure_files(name)
    return files


def stage_outputs(stage):
    if stage == "main":
        return notebook_files("main") + main_artefacts()
    if stage == "gradstats":  # gradstats_artefacts(): workflow/rules/gradstats.smk
        return notebook_files("gradstats") + gradstats_artefacts()
    if stage in DATA_STAGE_OUTPUTS:  # workflow/rules/data.smk, celeba.smk
        return DATA_STAGE_OUTPUTS[stage]()
    spec = STAGE_ARTEFACTS[stage]
    files = notebook_files(spec["notebook"])
    for name in spec["figures"]:
        files += figure_files(name)
    for name in spec["tables"]:
        files += table_files(name)
    return files


def claims_inputs():
    # The data stages (celeba, multimnist) make no claims.
    stages = [s for s in enabled_stages() if s not in DATA_STAGE_OUTPUTS]
    return [f"{RESULTS}/claims/{stage}.csv" for stage in stages]


def all_targets():
    files = [f"{FIGURES}/claims.csv", f"{FIGURES}/claims.md"]
    for stage in enabled_stages():
        files += stage_outputs(stage)
    return files


# ---- cluster resources (config section `cluster`, workflow/profiles/slurm) -----------------
CLUSTER_RESOURCE_NAMES = {
    "partition": "slurm_partition",
    "runtime": "runtime",
    "mem_mb": "mem_mb",
    "gpu": "gpu",
    "gpu_model": "gpu_model",
    "extra": "slurm_extra",
}


def cluster_resources(kind):
    """The `resources:` of a job submitted to a cluster: config["cluster"][kind] ("gpu_jobs"
    or "cpu_jobs") in the resource names of snakemake-executor-plugin-slurm. Empty values and
    a GPU model without a GPU are left out, so the cluster's defaults apply. Local runs
    ignore these resources (none of them is limited there).

    Every GPU-capable job also takes one `gpu_slot`, for local runs on one GPU:
    `snakemake --resources gpu_slot=N` runs at most N of them at once, so that N small runs
    share the GPU (unlimited without it, as on a CPU-only machine)."""
    cluster = config.get("cluster", {})
    values = dict(cluster.get(kind, {}))
    if not values.get("gpu"):
        values.pop("gpu", None)
        values.pop("gpu_model", None)
    resources = {
        CLUSTER_RESOURCE_NAMES[key]: value
        for key, value in values.items()
        if value not in ("", None)
    }
    if cluster.get("account"):
        resources["slurm_account"] = cluster["account"]
    # Grouped jobs run one after another in their cluster job; one slot per group job
    # (workflow/profiles/slurm) makes Snakemake size the group job for that.
    resources["group_slot"] = 1
    if kind == "gpu_jobs":
        resources["gpu_slot"] = 1
    return resources
