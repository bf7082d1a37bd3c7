# Training: one run per row of Tables 1-3 (deq/study.py); a rerun resumes from the run's checkpoint.
# Only result.json is declared: Snakemake deletes a failed job's outputs, and the checkpoint, metrics
# and traces beside it must survive for the resume.


rule train:
    input:
        data_of_run,
    output:
        f"results/runs/{PRESET}/{{run}}/result.json",
    log:
        f"results/logs/train/{PRESET}/{{run}}.log",
    benchmark:
        f"results/benchmarks/{PRESET}/rules/train/{{run}}.tsv"
    params:
        run=run_config,
        folder=lambda wildcards: run_dir(wildcards.run),
    wildcard_constraints:
        run="|".join(STUDY),
    threads: 1
    resources:
        gpu=gpus(config["gpus_per_run"]),
    conda:
        "../envs/deq.yaml"
    script:
        "../scripts/train.py"
