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
        metrics=f"{RUNS}/celeba/resnet18/{{method}}/{{optimizer}}/lr{{lr}}/seed{{seed}}/metrics.json",
        history=f"{RUNS}/celeba/resnet18/{{method}}/{{optimizer}}/lr{{lr}}/seed{{seed}}/history.csv",
    log:
        f"{LOGS}/train/celeba/resnet18/{{method}}/{{optimizer}}/lr{{lr}}/seed{{seed}}.log",
    conda:
        "../../envs/mtlp.yaml"
    threads: config["celeba"]["threads"]
    resources:
        **cluster_resources("gpu_jobs"),
    params:
        settings=celeba_train_json,
        out=lambda wildcards, output: os.path.dirname(output.metrics),
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
