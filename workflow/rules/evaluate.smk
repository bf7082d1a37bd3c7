# Evaluation of trained runs: Figure 2's convergence curves and Figure 3's solver sweep. How much each
# evaluates at the configured preset is deq/presets.py's (EVALUATION, from common.smk).


rule convergence:
    input:
        [run_result(name) for name in FIGURE2_RUNS],
    output:
        f"results/evaluations/{PRESET}/convergence.csv",
    log:
        f"results/logs/convergence/{PRESET}.log",
    benchmark:
        f"results/benchmarks/{PRESET}/rules/convergence.tsv"
    params:
        runs={name: run_dir(name) for name in FIGURE2_RUNS},
        early={name: STUDY[name].early_step for name in FIGURE2_RUNS},
        n_evals=EVALUATION.convergence_evals,
    threads: 1
    resources:
        gpu=gpus(1),
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/convergence.py"


rule sweep:
    input:
        run_result(FIGURE3_RUN),
    output:
        f"results/evaluations/{PRESET}/sweep.csv",
    log:
        f"results/logs/sweep/{PRESET}.log",
    benchmark:
        f"results/benchmarks/{PRESET}/rules/sweep.tsv"
    params:
        run=lambda wildcards, input: os.path.dirname(input[0]),
        tols=list(EVALUATION.sweep_tols),
        caps=list(EVALUATION.sweep_caps),
        max_tokens=EVALUATION.sweep_max_tokens,
    threads: 1
    resources:
        gpu=gpus(1),
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/sweep.py"


# Table 4 at matched perplexity: the trained DEQ and weight-tied pair (Figure 2's runs) timed side by side,
# the DEQ at its loosest forward tolerance within 1% of its best validation perplexity.
rule runtime_trained:
    input:
        [run_result(name) for name in FIGURE2_RUNS],
    output:
        f"results/evaluations/{PRESET}/runtime_trained.csv",
    log:
        f"results/logs/runtime_trained/{PRESET}.log",
    benchmark:
        f"results/benchmarks/{PRESET}/rules/runtime_trained.tsv"
    params:
        deq=lambda wildcards, input: os.path.dirname(input[0]),
        explicit=lambda wildcards, input: os.path.dirname(input[1]),
        max_tokens=EVALUATION.runtime_max_tokens,
        rounds=EVALUATION.runtime_rounds,
    threads: all_cores()
    resources:
        gpu=gpus(1),
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/runtime_trained.py"
