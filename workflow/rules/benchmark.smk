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
        gpu=GPUS_PER_RUN and 1,
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/benchmark.py"
