# The invariance derivation checks: Figs A1/A2 and the Theory statements (Elich et al. 2024).


localrules:
    invariance_notebook,


rule invariance_simulate:
    output:
        records=f"{RESULTS}/invariance/records.csv.gz",
        checks=f"{RESULTS}/invariance/checks.csv",
        claims=f"{RESULTS}/claims/invariance.csv",
    log:
        f"{LOGS}/invariance_simulate.log",
    conda:
        "../../envs/mtlp.yaml"
    resources:
        **cluster_resources("cpu_jobs"),
    params:
        settings=settings_json("invariance"),
    shell:
        "mtlp invariance --settings {params.settings:q} --records {output.records:q}"
        " --checks {output.checks:q} --claims {output.claims:q} > {log:q} 2>&1"


rule invariance_notebook:
    input:
        notebook="notebooks/invariance.ipynb",
        records=rules.invariance_simulate.output.records,
        checks=rules.invariance_simulate.output.checks,
    output:
        figure_files("figA1"),
        figure_files("figA2"),
        table_files("invariance_checks"),
        notebook=notebook_files("invariance")[0],
        html=notebook_files("invariance")[1],
    log:
        f"{LOGS}/invariance_notebook.log",
    conda:
        "../../envs/mtlp.yaml"
    params:
        figures=lambda wildcards, output: os.path.dirname(output[0]),
    shell:
        "mtlp notebook {input.notebook:q} --output {output.notebook:q} --html {output.html:q}"
        " -p records_path {input.records:q} -p checks_path {input.checks:q}"
        " -p figures_dir {params.figures:q} > {log:q} 2>&1"
