# Benchmarks (deq/bench): solvers, memory at the paper's protocol, memory vs depth, runtime ratios.
# Each takes every core, so that nothing else runs beside it while it times.


rule benchmark:
    output:
        csv=f"results/benchmarks/{PRESET}/{{name}}.csv",
        md=report(
            f"results/benchmarks/{PRESET}/{{name}}.md",
            caption="../report/benchmark.rst",
            category="Benchmarks",
            labels={"benchmark": "{name}"},
        ),
    log:
        f"results/logs/benchmark/{PRESET}/{{name}}.log",
    benchmark:
        f"results/benchmarks/{PRESET}/rules/benchmark/{{name}}.tsv"
    params:
        preset=PRESET,
    wildcard_constraints:
        name="|".join(BENCHMARKS),
    threads: all_cores()
    resources:
        gpu=gpus(1),
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/benchmark.py"


# The memory columns of Tables 2-3 at the paper's exact widths (the memory benchmark at the paper preset; the
# CSV's wall_s says how long it took on a CPU): not part of `all`; its CSV is committed, and the tables read it.
# `snakemake --cores 2 results/reference/cpu/memory_paper.csv` (or `make paper-memory`).
rule paper_memory:
    output:
        PAPER_MEMORY_CSV,
    log:
        "results/logs/benchmark/paper_memory.log",
    threads: all_cores()
    resources:
        gpu=gpus(1),
    conda:
        "../envs/deq.yaml"
    shell:
        "python -m deq.report.readme measure memory --preset paper > {log} 2>&1"
