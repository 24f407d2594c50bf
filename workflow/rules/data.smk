# Real datasets into the DAG: download (resumable, verified), extract / prepare, and the
# synthetic stand-ins written in the same on-disk formats (config section `data`).
#   data/downloads/<source>/<file>     one downloaded file (mtlp download)
#   data/<nyuv2|cityscapes>/           an extracted MTAN release (mtlp prepare-mtan)
#   data/prepared/celeba_<src>_<size>/ CelebA decoded once, memory-mappable (mtlp prepare-celeba)
#   data/prepared/multimnist_<src>/    Multi-MNIST built from MNIST (mtlp build-multimnist)
#   data/torch/hub/checkpoints/<file>  torchvision ImageNet weights (TORCH_HOME=data/torch)
#   data/checksums.json                sha256 of first downloads that have no known checksum


localrules:
    download,
    download_weights,
    prepare_mtan,
    make_synthetic_celeba,
    prepare_celeba,
    make_synthetic_mnist,
    build_multimnist,


wildcard_constraints:
    src="nyuv2|cityscapes|celeba|mnist",
    file="[A-Za-z0-9_.-]+",
    mtan="nyuv2|cityscapes",
    rawsrc="synthetic|real",
    size="[0-9]+",


rule download:
    output:
        f"{DATA}/downloads/{{src}}/{{file}}",
    log:
        f"{LOGS}/download/{{src}}/{{file}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        args=lambda wildcards: download_args(wildcards.src, wildcards.file),
    shell:
        "mtlp download --source {wildcards.src} --file {wildcards.file} --out {output:q}"
        " {params.args} > {log:q} 2>&1"


rule download_weights:
    output:
        f"{DATA}/torch/hub/checkpoints/{{file}}",
    log:
        f"{LOGS}/download/weights/{{file}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        args=lambda wildcards: download_args("weights", wildcards.file),
    shell:
        "mtlp download --source weights --file {wildcards.file} --out {output:q}"
        " {params.args} > {log:q} 2>&1"


rule prepare_mtan:
    input:
        lambda wildcards: download_files(wildcards.mtan),
    output:
        directory(f"{DATA}/{{mtan}}"),
    log:
        f"{LOGS}/prepare_mtan/{{mtan}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        archives=lambda wildcards, input: " ".join(
            f"--archive {single_quoted(a)}" for a in input
        ),
        sizes="--expect-sizes" if config["data"]["expect_sizes"] else "",
    shell:
        "mtlp prepare-mtan --dataset {wildcards.mtan} {params.archives} --out {output:q}"
        " {params.sizes} > {log:q} 2>&1"


rule make_synthetic_celeba:
    output:
        directory(f"{DATA}/synthetic/celeba"),
    log:
        f"{LOGS}/make_synthetic/celeba.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        settings=lambda wildcards: compact_json(config["celeba"]["synthetic"]),
    shell:
        "mtlp make-synthetic-celeba --settings {params.settings:q} --out {output:q}"
        " > {log:q} 2>&1"


rule prepare_celeba:
    input:
        lambda wildcards: raw_input("celeba", wildcards.rawsrc),
    output:
        directory(f"{DATA}/prepared/celeba_{{rawsrc}}_{{size}}"),
    log:
        f"{LOGS}/prepare_celeba/{{rawsrc}}_{{size}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        raw=lambda wildcards: raw_dir("celeba", wildcards.rawsrc),
    shell:
        "mtlp prepare-celeba --raw {params.raw:q} --size {wildcards.size} --out {output:q}"
        " > {log:q} 2>&1"


rule make_synthetic_mnist:
    output:
        directory(f"{DATA}/synthetic/mnist"),
    log:
        f"{LOGS}/make_synthetic/mnist.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        seed=lambda wildcards: config["multimnist"]["settings"].get("seed", 0),
    shell:
        "mtlp make-synthetic-mnist --seed {params.seed} --out {output:q} > {log:q} 2>&1"


rule build_multimnist:
    input:
        lambda wildcards: raw_input("mnist", wildcards.rawsrc),
    output:
        directory(f"{DATA}/prepared/multimnist_{{rawsrc}}"),
    log:
        f"{LOGS}/build_multimnist/{{rawsrc}}.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        raw=lambda wildcards: raw_dir("mnist", wildcards.rawsrc),
        settings=lambda wildcards: compact_json(config["multimnist"]["settings"]),
    shell:
        "mtlp build-multimnist --mnist {params.raw:q} --settings {params.settings:q}"
        " --out {output:q} > {log:q} 2>&1"
