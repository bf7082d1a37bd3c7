# Solver benchmark: every solver in deq.SOLVERS (and the torchdeq reference) on the same problems.


rule bench_solvers:
    output:
        csv="results/benchmarks/solvers.csv",
        md=report(
            "results/benchmarks/solvers.md",
            caption="../report/bench_solvers.rst",
            category="Benchmarks",
        ),
    log:
        "results/logs/bench_solvers.log",
    benchmark:
        "results/benchmarks/bench_solvers.time.tsv"
    params:
        preset=preset(),
    threads: 2
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/bench_solvers.py"
