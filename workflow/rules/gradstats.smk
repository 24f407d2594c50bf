# Gradient statistics (Elich et al. 2024, "Gradient conflicts"): one EW + Adam training run per
# gradstats panel with per-sample x per-task gradients every few iterations (Figs 4/A5/A6/A7),
# the Fig 3 sub-population experiment, the stage's claims and its notebook.
# The panels (dataset x architecture) come from config `gradstats.panels`; their data and
# training settings from `main` (datasets, archs, train; `gradstats.train` overrides
# main.train). The helper functions live in common.smk.


localrules:
    gradstats_claims,
    gradstats_notebook,


rule gradstats_train:
    input:
        data=lambda wildcards: dataset_input(wildcards.dataset),
        runs=lambda wildcards: gradstats_lr_input(),
    output:
        stats=f"{RESULTS}/gradstats/{{dataset}}/{{arch}}/gradstats.csv",
        metrics=f"{RESULTS}/gradstats/{{dataset}}/{{arch}}/metrics.json",
    log:
        f"{LOGS}/gradstats/{{dataset}}/{{arch}}.log",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["main"]["threads"]
    resources:
        **cluster_resources("gpu_jobs"),
    params:
        train=lambda wildcards: gradstats_train_json(wildcards.dataset, wildcards.arch),
        settings=gradstats_json("extract"),
        lr_from=lambda wildcards, input: (
            quote("--lr-from", input.runs[0]) if input.runs else ""
        ),
        out=lambda wildcards, output: os.path.dirname(output.stats),
    shell:
        "mtlp gradstats train --train-settings {params.train:q} --settings {params.settings:q}"
        " --out {params.out:q} {params.lr_from} --threads {threads} > {log:q} 2>&1"


rule gradstats_fig3:
    output:
        stats=f"{RESULTS}/gradstats/fig3.csv",
        training=f"{RESULTS}/gradstats/fig3_training.csv",
    log:
        f"{LOGS}/gradstats/fig3.log",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["main"]["threads"]
    resources:
        **cluster_resources("cpu_jobs"),
    params:
        settings=gradstats_json("fig3"),
    shell:
        "mtlp gradstats fig3 --settings {params.settings:q} --out {output.stats:q}"
        " --training {output.training:q} --threads {threads} > {log:q} 2>&1"


rule gradstats_claims:
    input:
        panels=gradstats_stats_files(),
        fig3=rules.gradstats_fig3.output.stats,
        training=rules.gradstats_fig3.output.training,
    output:
        f"{RESULTS}/claims/gradstats.csv",
    log:
        f"{LOGS}/gradstats/claims.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        panels=gradstats_panel_args(),
        sources=gradstats_sources_args(),
    shell:
        "mtlp gradstats claims {params.panels} --fig3 {input.fig3:q}"
        " --fig3-training {input.training:q} {params.sources} --out {output:q} > {log:q} 2>&1"


rule gradstats_notebook:
    input:
        notebook="notebooks/gradstats.ipynb",
        panels=gradstats_stats_files(),
        fig3=rules.gradstats_fig3.output.stats,
        training=rules.gradstats_fig3.output.training,
    output:
        gradstats_artefacts(),
        notebook=notebook_files("gradstats")[0],
        html=notebook_files("gradstats")[1],
    log:
        f"{LOGS}/gradstats_notebook.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        figures=lambda wildcards, output: os.path.dirname(output[0]),
        panels=gradstats_panels_json(),
    shell:
        "mtlp notebook {input.notebook:q} --output {output.notebook:q} --html {output.html:q}"
        " -p panels {params.panels:q} -p fig3_stats {input.fig3:q}"
        " -p fig3_training {input.training:q} -p figures_dir {params.figures:q} > {log:q} 2>&1"
