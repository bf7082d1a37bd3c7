# deq-harness workflow: the table of contents. Stages live in workflow/rules/, one file each;
# the study (which runs) is deq/study.py, each preset's budgets deq/presets.py; every key of the config is explained
# in config/README.md.
#
#   snakemake --cores 8 all                 the whole study at the configured preset
#   snakemake --cores 2 results/table1.csv  one table (and only what it needs)
#   snakemake --report results/report.html  the report, after a run
import os

from snakemake.utils import min_version, validate

min_version("9.0")


configfile: os.path.join(workflow.basedir, "config/config.yaml")


validate(config, schema="workflow/schemas/config.schema.yaml")


include: "workflow/rules/common.smk"
include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/benchmark.smk"
include: "workflow/rules/tables.smk"
include: "workflow/rules/figures.smk"


# Tables and figures read a few small files and take seconds: on a cluster they run on the submitting
# machine instead of waiting in the queue as jobs of their own (profiles/slurm).
localrules:
    all,
    table,
    size_sweep_table,
    tables_markdown,
    fig2_convergence,
    fig2_solver_iterations,
    fig3_sweep,
    memory_bars,
    memory_vs_depth,
    size_sweep,
    training_curves,


rule all:
    input:
        expand("results/table{n}.csv", n=(1, 2, 3, 4)),
        "results/size_sweep.csv",
        "results/tables.md",
        [bench_output(name) for name in BENCHMARKS],
        [figure_files(stem) for stem in FIGURES],
    default_target: True
