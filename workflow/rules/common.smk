# Helper functions shared by the rules; no rules here. The study itself (which runs) is deq/study.py and
# each preset's budgets deq/presets.py, so the tests and the workflow read one definition.
import functools
import os

from snakemake.exceptions import WorkflowError

from deq.engine.gpus import visible_gpus
from deq.engine.slurm import has_gpus as slurm_has_gpus
from deq.presets import preset
from deq.rows.configs import CONFIGS
from deq.study import FIGURE2_RUNS, dataset_of, not_trained, size_sweep, study

PRESET = config["preset"]
EVALUATION = preset(PRESET).evaluation  # what the evaluate stage asks of the trained runs
STUDY = study(PRESET, config["data_root"], config["data_mirror"], config["official_code"])
NOT_TRAINED = not_trained(PRESET)  # rows of Tables 1-3 this preset does not train, and why
SIZE_SWEEP = size_sweep(PRESET)  # (family, size, DEQ run, explicit run)
FIGURE3_RUN = EVALUATION.figure3_run
BENCHMARKS = ("solvers", "memory", "depth", "runtime")
DEQ_LM_RUNS = [name for name, run in STUDY.items() if run.row in CONFIGS and CONFIGS[run.row].driver == "deq"]


@functools.cache
def use_gpus():
    """Whether jobs ask for GPUs (config key use_gpus; auto: where there are some, so that a CPU machine
    or a CPU-only cluster runs jobs side by side instead of waiting for GPUs that never come). Asked
    when the jobs are made, when the executor is known (not yet while this file is read)."""
    if config["use_gpus"] != "auto":
        return config["use_gpus"] == "always"
    plugin = workflow.executor_plugin
    if plugin is not None and plugin.name == "slurm":  # the submitting host need not have the GPUs
        return slurm_has_gpus()
    return bool(visible_gpus())


def gpus(count):
    """The ``gpu`` resource of a job that uses ``count`` GPUs where jobs use GPUs, else 0."""
    return lambda wildcards: count if use_gpus() else 0


def all_cores():
    """Every core Snakemake may use (benchmarks take them all, so nothing runs beside them while they
    time); 1 where no --cores was given, as in --report or --lint."""
    try:
        return workflow.cores
    except WorkflowError:
        return 1


def run_dir(name):
    return f"results/runs/{PRESET}/{name}"


def run_result(name):
    return f"{run_dir(name)}/result.json"


def runs_of_table(number):
    """The trained runs that are rows of Table ``number`` (a size-sweep width's runs are not)."""
    return [name for name, run in STUDY.items() if run.table == number and name == run.row]


def not_trained_in_table(number):
    return {name: why for name, why in NOT_TRAINED.items()
            if (1 if name not in CONFIGS else CONFIGS[name].paper_table) == number}


def size_sweep_runs():
    return sorted({run for _, _, deq_run, explicit_run in SIZE_SWEEP for run in (deq_run, explicit_run)})


def all_run_results():
    return [run_result(name) for name in STUDY]


def data_of_run(wildcards):
    """The prepared corpus a run reads (nothing for copy memory, which is generated)."""
    dataset = dataset_of(STUDY[wildcards.run])
    return [] if dataset is None else [f"results/data/{dataset}.json"]


def run_config(wildcards):
    return STUDY[wildcards.run].config_dict


def bench_output(name):
    return f"results/benchmarks/{PRESET}/{name}.csv"


# Tables 2-3 at the paper's widths, measured on a CPU by hand (rule paper_memory) and committed. The
# tables read it where it exists; ancient(): its date never makes a table (or the rule) out of date.
PAPER_MEMORY_CSV = "results/reference/cpu/memory_paper.csv"


def paper_memory_input(wildcards=None):
    return [ancient(PAPER_MEMORY_CSV)] if os.path.exists(PAPER_MEMORY_CSV) else []


# Table 4's transformer pair at the paper's widths on a CPU (`make paper-runtime`), committed; read where present.
PAPER_RUNTIME_CSV = "results/reference/cpu/runtime_paper.csv"


def paper_runtime_input():
    return [ancient(PAPER_RUNTIME_CSV)] if os.path.exists(PAPER_RUNTIME_CSV) else []


FIGURES = ("fig2_convergence", "fig2_solver_iterations", "fig3_sweep", "memory_bars", "memory_vs_depth",
           "size_sweep", "training_curves")  # one rule each in figures.smk


def figure_files(stem):
    return [f"results/figures/{stem}.png", f"results/figures/{stem}.pdf"]
