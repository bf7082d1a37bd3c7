# Tables 1-4 (CSV, numbered like the paper's), each needing only its own runs and benchmark, so
# `snakemake results/table1.csv` trains the copy-memory models and nothing else; then tables.md.


rule table:
    input:
        runs=lambda wildcards: [run_result(name) for name in runs_of_table(int(wildcards.n))],
        benchmark=lambda wildcards: {"1": [], "2": bench_output("memory"), "3": bench_output("memory"),
                                     "4": bench_output("runtime")}[wildcards.n],
        paper_memory=lambda wildcards: paper_memory_input() if wildcards.n in ("2", "3") else [],
    output:
        report("results/table{n}.csv", caption="../report/table.rst", category="Tables",
               labels={"table": "{n}"}),
    log:
        "results/logs/tables/table{n}.log",
    params:
        runs=lambda wildcards: {name: run_dir(name) for name in runs_of_table(int(wildcards.n))},
        preset=PRESET,
    wildcard_constraints:
        n="[1-4]",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/table.py"


rule tables_markdown:
    input:
        expand("results/table{n}.csv", n=(1, 2, 3, 4)),
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
