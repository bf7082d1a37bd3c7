# Tables 1-4 (CSV, numbered like the paper's), each needing only its own runs and benchmark, so
# `snakemake results/table1.csv` trains the copy-memory models and nothing else; then tables.md.


rule table:
    input:
        runs=lambda wildcards: [run_result(name) for name in runs_of_table(int(wildcards.n))],
        benchmark=lambda wildcards: {"1": [], "2": bench_output("memory"), "3": bench_output("memory"),
                                     "4": bench_output("runtime")}[wildcards.n],
        trained_runtime=lambda wildcards: [rules.runtime_trained.output[0]] if wildcards.n == "4" else [],
        paper_runtime=lambda wildcards: paper_runtime_input() if wildcards.n == "4" else [],
        paper_memory=lambda wildcards: paper_memory_input() if wildcards.n in ("2", "3") else [],
    output:
        report("results/table{n}.csv", caption="../report/table.rst", category="Tables",
               labels={"table": "{n}"}),
    log:
        "results/logs/tables/table{n}.log",
    params:
        runs=lambda wildcards: {name: run_dir(name) for name in runs_of_table(int(wildcards.n))},
        not_trained=lambda wildcards: not_trained_in_table(int(wildcards.n)),
        preset=PRESET,
    wildcard_constraints:
        n="[1-4]",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/table.py"


# The size sweep: each DEQ and its explicit counterpart at two sizes (deq.study.size_sweep), from their runs.
rule size_sweep_table:
    input:
        [run_result(name) for name in size_sweep_runs()],
    output:
        report("results/size_sweep.csv", caption="../report/size_sweep_table.rst", category="Tables",
               labels={"table": "size sweep"}),
    log:
        "results/logs/tables/size_sweep.log",
    params:
        points=SIZE_SWEEP,
        runs={name: run_dir(name) for name in size_sweep_runs()},
        preset=PRESET,
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/size_sweep.py"


rule tables_markdown:
    input:
        expand("results/table{n}.csv", n=(1, 2, 3, 4)),
        "results/size_sweep.csv",
    output:
        "results/tables.md",
    log:
        "results/logs/tables/tables_md.log",
    params:
        preset=PRESET,
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/tables_markdown.py"
