# The main experiment (Elich et al. 2024): synthetic or real NYUv2/Cityscapes, the training
# grid dataset x architecture x method x optimizer x learning rate x seed, single-task
# baselines, aggregation, and Figs 2/A3/A4, Tables 2/A2/A4-A7.


# Data preparation, baselines, aggregation and the notebook are light: on a cluster they run
# where snakemake runs (workflow/profiles/slurm); only the training runs are submitted.
localrules:
    make_synthetic,
    verify_dataset,
    baseline,
    fixed_weights,
    aggregate_main,
    main_notebook,


wildcard_constraints:
    dataset="nyuv2|cityscapes",
    arch="segnet|deeplabv3",
    method="[a-z0-9_]+",
    task="[a-z0-9_]+",
    optimizer="adam|sgd|signsgd",
    lr="[0-9.e+-]+",
    seed="[0-9]+",


rule make_synthetic:
    output:
        directory("data/synthetic/{dataset}"),
    log:
        f"{LOGS}/make_synthetic/{{dataset}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        settings=lambda wildcards: synthetic_json(wildcards.dataset),
    shell:
        "mtlp make-synthetic --settings {params.settings:q} --out {output:q} > {log:q} 2>&1"


rule verify_dataset:
    input:
        lambda wildcards: mtan_release(wildcards.dataset),
    output:
        f"{RESULTS}/data/{{dataset}}.verified.json",
    log:
        f"{LOGS}/verify_dataset/{{dataset}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        root=lambda wildcards: dataset_dir(wildcards.dataset),
        labels=lambda wildcards: config["main"]["train"].get(
            "cityscapes_labels", "label_7"
        ),
        sizes="--expect-sizes" if config["data"]["expect_sizes"] else "",
    shell:
        "mtlp verify-dataset --dataset {wildcards.dataset} --root {params.root:q}"
        " --labels {params.labels} {params.sizes} --out {output:q} > {log:q} 2>&1"


rule train_stl:
    input:
        data=lambda wildcards: dataset_input(wildcards.dataset),
    output:
        metrics=run_path(RUNS, method="stl-{task}", file="metrics.json"),
        history=run_path(RUNS, method="stl-{task}", file="history.csv"),
    log:
        run_path(f"{LOGS}/train", method="stl-{task}") + ".log",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["main"]["threads"]
    resources:
        **cluster_resources("gpu_jobs"),
    params:
        settings=lambda wildcards: run_settings(wildcards, "stl"),
        out=run_path(RUNS, method="stl-{task}"),
        torch_home=TORCH_HOME,
    shell:
        "TORCH_HOME={params.torch_home:q} mtlp train --settings {params.settings:q}"
        " --out {params.out:q} --threads {threads}"
        " > {log:q} 2>&1"


rule baseline:
    input:
        lambda wildcards: stl_metrics(wildcards.dataset, wildcards.arch),
    output:
        f"{RESULTS}/baselines/{{dataset}}/{{arch}}.json",
    log:
        f"{LOGS}/baseline/{{dataset}}/{{arch}}.log",
    conda:
        "../../envs/mtlp.yaml"
    shell:
        "mtlp baseline {input:q} --out {output:q} > {log:q} 2>&1"


rule train:
    input:
        data=lambda wildcards: dataset_input(wildcards.dataset),
        baseline=f"{RESULTS}/baselines/{{dataset}}/{{arch}}.json",
    output:
        metrics=run_path(RUNS, file="metrics.json"),
        history=run_path(RUNS, file="history.csv"),
    log:
        run_path(f"{LOGS}/train") + ".log",
    wildcard_constraints:
        method="(?!fixed_from_)[a-z0-9_]+",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["main"]["threads"]
    resources:
        **cluster_resources("gpu_jobs"),
    params:
        settings=lambda wildcards: run_settings(wildcards),
        out=run_path(RUNS),
        torch_home=TORCH_HOME,
    shell:
        "TORCH_HOME={params.torch_home:q} mtlp train --settings {params.settings:q}"
        " --out {params.out:q}"
        " --baseline {input.baseline:q} --threads {threads} > {log:q} 2>&1"


rule fixed_weights:
    input:
        run_path(RUNS, method="{source}", file="history.csv"),
    output:
        run_path(f"{RESULTS}/fixed_weights", method="{source}") + ".json",
    log:
        run_path(f"{LOGS}/fixed_weights", method="{source}") + ".log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        beta=config["main"]["grid"].get("fixed_weights_beta", 0.9),
    shell:
        "mtlp fixed-weights {input:q} --beta {params.beta} --out {output:q} > {log:q} 2>&1"


rule train_fixed_from:
    input:
        data=lambda wildcards: dataset_input(wildcards.dataset),
        baseline=f"{RESULTS}/baselines/{{dataset}}/{{arch}}.json",
        weights=rules.fixed_weights.output[0],
    output:
        metrics=run_path(RUNS, method="fixed_from_{source}", file="metrics.json"),
        history=run_path(RUNS, method="fixed_from_{source}", file="history.csv"),
    log:
        run_path(f"{LOGS}/train", method="fixed_from_{source}") + ".log",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["main"]["threads"]
    resources:
        **cluster_resources("gpu_jobs"),
    params:
        settings=lambda wildcards: run_settings(
            wildcards, method=f"fixed_from_{wildcards.source}"
        ),
        out=run_path(RUNS, method="fixed_from_{source}"),
    shell:
        "mtlp train --settings {params.settings:q} --out {params.out:q}"
        " --baseline {input.baseline:q} --fixed-weights {input.weights:q}"
        " --threads {threads} > {log:q} 2>&1"


rule aggregate_main:
    input:
        main_run_metrics(),
    output:
        runs=f"{RESULTS}/main/runs.csv",
        directions=f"{RESULTS}/main/directions.json",
        claims=f"{RESULTS}/claims/main.csv",
    log:
        f"{LOGS}/aggregate_main.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        sources=data_sources_args(),
    shell:
        "mtlp aggregate {input:q} --out {output.runs:q} --directions {output.directions:q}"
        " --claims {output.claims:q} {params.sources} > {log:q} 2>&1"


rule main_notebook:
    input:
        notebook="notebooks/main.ipynb",
        runs=rules.aggregate_main.output.runs,
        directions=rules.aggregate_main.output.directions,
    output:
        main_artefacts(),
        notebook=notebook_files("main")[0],
        html=notebook_files("main")[1],
    log:
        f"{LOGS}/main_notebook.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        figures=lambda wildcards, output: os.path.dirname(output[0]),
        panels=panels_json(),
    shell:
        "mtlp notebook {input.notebook:q} --output {output.notebook:q} --html {output.html:q}"
        " -p runs_path {input.runs:q} -p directions_path {input.directions:q}"
        " -p figures_dir {params.figures:q} -p panels {params.panels:q} > {log:q} 2>&1"
