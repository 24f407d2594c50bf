# mtl-paradigms: one `snakemake` call rebuilds every figure and table.
# The rules live in workflow/rules/*.smk; every rule calls the `mtlp` CLI or papermill
# through it, so the logic stays in src/mtl_paradigms.
from snakemake.utils import min_version

min_version("8.20")


configfile: "workflow/config/default.yaml"


include: "workflow/rules/common.smk"
include: "workflow/rules/common_data.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/celeba.smk"
include: "workflow/rules/toy.smk"
include: "workflow/rules/invariance.smk"
include: "workflow/rules/main.smk"
include: "workflow/rules/gradstats.smk"
include: "workflow/rules/claims.smk"


localrules:
    all,


rule all:
    default_target: True
    input:
        all_targets(),
