# The CelebA-style multi-label run (config section `celeba`): ResNet-18 + one linear layer per
# binary attribute on the prepared CelebA (synthetic in the embedded default, the official
# files in paper.yaml), a small grid of method x optimizer x learning rate x seed, and the
# per-attribute table figures/celeba_attributes.{csv,md,tex}.


localrules:
    celeba_table,


rule train_celeba:
    input:
        data=celeba_prepared(),
        weights=celeba_weights(),
    output:
        metrics=run_path(RUNS, "celeba", "resnet18", file="metrics.json"),
        history=run_path(RUNS, "celeba", "resnet18", file="history.csv"),
    log:
        run_path(f"{LOGS}/train", "celeba", "resnet18") + ".log",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["celeba"]["threads"]
    resources:
        **cluster_resources("gpu_jobs"),
    params:
        settings=lambda wildcards: run_settings(wildcards, "celeba"),
        out=run_path(RUNS, "celeba", "resnet18"),
        torch_home=TORCH_HOME,
    shell:
        "TORCH_HOME={params.torch_home:q} mtlp train --settings {params.settings:q} --out {params.out:q} --threads {threads}"
        " > {log:q} 2>&1"


rule celeba_table:
    input:
        celeba_run_metrics(),
    output:
        table_files("celeba_attributes"),
    log:
        f"{LOGS}/celeba_table.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        stem=lambda wildcards, output: os.path.splitext(output[0])[0],
        reference=config["celeba"]["reference"],
    shell:
        "mtlp attribute-table {input:q} --out {params.stem:q} --reference {params.reference}"
        " > {log:q} 2>&1"
