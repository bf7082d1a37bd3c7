# Figures, PNG and PDF each (deq/report/figures.py says how to read them). One rule per figure,
# one script for all: the rule names the plotting function in params.figure.


rule fig2_convergence:
    input:
        rules.convergence.output,
    output:
        png=report("results/figures/fig2_convergence.png", caption="../report/fig2_convergence.rst",
                   category="Figures"),
        pdf="results/figures/fig2_convergence.pdf",
    log:
        "results/logs/figures/fig2_convergence.log",
    params:
        figure="plot_convergence",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"


rule fig2_solver_iterations:
    input:
        [run_result(name) for name in DEQ_LM_RUNS],
    output:
        png=report("results/figures/fig2_solver_iterations.png", caption="../report/fig2_solver_iterations.rst",
                   category="Figures"),
        pdf="results/figures/fig2_solver_iterations.pdf",
    log:
        "results/logs/figures/fig2_solver_iterations.log",
    params:
        figure="plot_solver_iterations",
        metrics={name: f"{run_dir(name)}/metrics.jsonl" for name in DEQ_LM_RUNS},
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"


rule fig3_sweep:
    input:
        rules.sweep.output,
    output:
        png=report("results/figures/fig3_sweep.png", caption="../report/fig3_sweep.rst", category="Figures"),
        pdf="results/figures/fig3_sweep.pdf",
    log:
        "results/logs/figures/fig3_sweep.log",
    params:
        figure="plot_sweep",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"


rule memory_bars:
    input:
        bench_output("memory"),
        paper_memory_input(),
    output:
        png=report("results/figures/memory_bars.png", caption="../report/memory_bars.rst", category="Figures"),
        pdf="results/figures/memory_bars.pdf",
    log:
        "results/logs/figures/memory_bars.log",
    params:
        figure="plot_memory_bars",
        paper_memory=lambda wildcards, input: input[1] if len(input) > 1 else None,
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"


rule memory_vs_depth:
    input:
        bench_output("depth"),
    output:
        png=report("results/figures/memory_vs_depth.png", caption="../report/memory_vs_depth.rst",
                   category="Figures"),
        pdf="results/figures/memory_vs_depth.pdf",
    log:
        "results/logs/figures/memory_vs_depth.log",
    params:
        figure="plot_memory_depth",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"


rule size_sweep:
    input:
        "results/size_sweep.csv",
    output:
        png=report("results/figures/size_sweep.png", caption="../report/size_sweep.rst", category="Figures"),
        pdf="results/figures/size_sweep.pdf",
    log:
        "results/logs/figures/size_sweep.log",
    params:
        figure="plot_size_sweep",
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"


rule training_curves:
    input:
        all_run_results(),
    output:
        png=report("results/figures/training_curves.png", caption="../report/training_curves.rst",
                   category="Figures"),
        pdf="results/figures/training_curves.pdf",
    log:
        "results/logs/figures/training_curves.log",
    params:
        figure="plot_training_curves",
        runs={f"Table {run.table}: {name}" if name == run.row else f"size sweep: {name}": run_dir(name)
              for name, run in STUDY.items()},
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/figure.py"
