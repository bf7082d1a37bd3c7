# Helper functions shared by the rules; no rules here. The study itself (runs and budgets per preset)
# is deq/study.py, so the tests and the workflow read one definition.
import os

from snakemake.exceptions import WorkflowError

from deq.engine.gpus import visible_gpus
from deq.models.configs import CONFIGS
from deq.study import FIGURE2_RUNS, FIGURE3_RUN, dataset_of, study

PRESET = config["preset"]
STUDY = study(PRESET, config["data_root"], config["data_mirror"], config["official_code"])
BENCHMARKS = ("solvers", "memory", "depth", "runtime")
DEQ_LM_ROWS = [name for name in STUDY if name in CONFIGS and CONFIGS[name].driver == "deq"]  # Figure 2, left
# A job asks for GPUs only where there are some, so that a CPU machine runs jobs side by side.
GPUS_PER_RUN = config["gpus_per_run"] if visible_gpus() else 0


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
    return [name for name, run in STUDY.items() if run.table == number]


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


FIGURES = ("fig2_convergence", "fig2_solver_iterations", "fig3_sweep", "memory_bars", "memory_vs_depth",
           "training_curves")  # one rule each in figures.smk


def figure_files(stem):
    return [f"results/figures/{stem}.png", f"results/figures/{stem}.pdf"]
