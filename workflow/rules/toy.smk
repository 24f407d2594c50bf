# The CAGrad toy: Fig 1, Table 1, Table A3 (Elich et al. 2024).


localrules:
    toy_notebook,


rule toy_simulate:
    output:
        result=f"{RESULTS}/toy/cagrad_toy.npz",
        claims=f"{RESULTS}/claims/toy.csv",
    log:
        f"{LOGS}/toy_simulate.log",
    conda:
        "../../envs/mtlp.yaml"
    resources:
        **cluster_resources("cpu_jobs"),
    params:
        settings=settings_json("toy"),
    shell:
        "mtlp toy --settings {params.settings:q} --out {output.result:q}"
        " --claims {output.claims:q} > {log:q} 2>&1"


rule toy_notebook:
    input:
        notebook="notebooks/toy.ipynb",
        result=rules.toy_simulate.output.result,
    output:
        figure_files("fig1"),
        table_files("table1"),
        table_files("tableA3"),
        notebook=notebook_files("toy")[0],
        html=notebook_files("toy")[1],
    log:
        f"{LOGS}/toy_notebook.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        figures=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "mtlp notebook {input.notebook:q} --output {output.notebook:q} --html {output.html:q}"
        " -p result_path {input.result:q} -p figures_dir {params.figures:q} > {log:q} 2>&1"
