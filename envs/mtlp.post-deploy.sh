#!/usr/bin/env bash
# Snakemake runs this inside the freshly created envs/mtlp.yaml environment, from the
# workflow's working directory (the repository root): install the package, no deps
# (conda provided them).
set -euo pipefail
python -m pip install --no-deps --editable .
