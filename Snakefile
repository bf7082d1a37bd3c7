# deq-harness workflow: the table of contents. Stages live in workflow/rules/, one file each.
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/benchmark.smk"


rule all:
    input:
        "results/benchmarks/solvers.csv",
        "results/benchmarks/solvers.md",
