# Tables 1-4 (CSV, numbered like the paper's) and tables.md, from the runs and the benchmarks.


rule tables:
    input:
        runs=all_run_results(),
        memory=bench_output("memory"),
        runtime=bench_output("runtime"),
    output:
        **{f"table{n}": report(f"results/table{n}.csv", caption=f"../report/table{n}.rst", category="Tables")
           for n in (1, 2, 3, 4)},
        md="results/tables.md",
    log:
        "results/logs/tables.log",
    params:
        runs={name: run_dir(name) for name in STUDY},
        preset=PRESET,
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/tables.py"
