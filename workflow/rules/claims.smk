# The claims table: every claim re-derived by the enabled stages, in one place.


localrules:
    claims,


rule claims:
    input:
        claims_inputs(),
    output:
        csv=f"{FIGURES}/claims.csv",
        md=f"{FIGURES}/claims.md",
    log:
        f"{LOGS}/claims.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        stem=lambda wildcards, output: os.path.splitext(output.csv)[0],
    shell:
        "mtlp claims {input:q} --out {params.stem:q} > {log:q} 2>&1"
