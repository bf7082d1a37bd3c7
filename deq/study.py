"""The study the workflow runs: which training runs each preset makes, and their budgets.

A run's folder is ``results/runs/<preset>/<name>/`` (what :mod:`deq.train` writes there). The presets:

- ``smoke``: one run per row of the paper's Tables 1-3 (the four copy-memory models of
  :data:`deq.rows.configs.COPY_CONFIGS`, the twelve word-level rows of
  :data:`deq.rows.configs.CONFIGS`), each the tiny ``smoke`` model trained 3 steps: the whole DAG
  in minutes on a CPU. Its numbers check the plumbing only.
- ``cpu`` (the default): the paper's first claim in miniature. One cell (the DEQ-Transformer small's)
  as a DEQ and as its weight-tied 16-layer stack (same cell, same parameters, the paper's pretraining
  switch), at widths 64 and 128 (the ``cpu`` model preset, which scales every width of the registry by
  one factor and keeps the paper's depth), trained on Penn Treebank (it stands in for WikiText-103) for
  the budget in :mod:`deq.presets`; validation and test on the whole splits. The width-128 pair are the Table 3 rows
  themselves; the width-64 pair are named ``<row>-w64``. Every other row (Table 1's copy-memory models
  and the TrellisNet and other Transformer rows) is not trained at this preset: the paper trains each
  for GPU-days (:func:`not_trained` says so, with the paper's budget); its parameters and memory are
  still measured (the tables and the memory benchmark). The budget: 2 cores, one hour for everything;
  each rule's wall time is recorded in ``results/benchmarks/cpu/rules/`` (Snakemake's benchmark files).
  At this budget the pairs are early in training (their validation perplexity still falls at the last
  evaluation: the runs' ``metrics.jsonl``), so the study compares DEQ and explicit at equal budgets,
  not at convergence.
- ``paper``: the paper's rows at their full size with the official scripts' budgets where they exist
  (PAPER.md, "Official scripts"); where none exist the choice is written beside it in :mod:`deq.presets`.

The size sweep (:func:`size_sweep`, figure ``size_sweep``) pairs each DEQ with its explicit counterpart
at two sizes: at ``cpu`` the trained widths; at ``smoke`` and ``paper`` the paper's small and medium
rows of each family.
"""

from __future__ import annotations

from dataclasses import dataclass

from deq.engine.config import TrainConfig, config_from_dict, to_dict
from deq.presets import PRESETS, Training
from deq.presets import preset as preset_record
from deq.rows.configs import COPY_CONFIGS, CONFIGS, CPU_WIDTH, LMConfig

STAND_IN = {"wikitext-103": "ptb"}  # corpus -> the one small presets train on instead (a 10,000-word vocabulary)
PAIR = ("wt103-deq-transformer-small", "wt103-transformer-xl-small-tied-16")  # a DEQ and its weight-tied stack, one cell
FIGURE2_RUNS = PAIR  # Figure 2's contrast: the DEQ and the weight-tied stack of the same cell
# smoke / paper: the paper's rows, small and medium of each family (DEQ, explicit counterpart).
PAPER_SIZE_SWEEP = (
    ("transformer", "small", "wt103-deq-transformer-small", "wt103-transformer-xl-small-tied-16"),
    ("transformer", "medium", "wt103-deq-transformer-medium", "wt103-transformer-xl-medium-16"),
    ("trellis", "small (PTB)", "ptb-deq-trellisnet", "ptb-trellisnet-60-aux"),
    ("trellis", "medium (WT103)", "wt103-deq-trellisnet", "wt103-trellisnet-70-aux"),
)


@dataclass(frozen=True)
class Run:
    name: str  # the run folder's name: the row's name, or '<row>-w<width>' for a size-sweep width
    table: int  # the paper's table: 1 (copy memory), 2 (PTB), 3 (WikiText-103)
    config: TrainConfig  # what deq.train runs
    early_step: int | None = None  # a checkpoint kept for Figure 2's "early" curve (None: none kept)

    @property
    def row(self) -> str:
        """The registry row the run trains (``config.model``)."""
        return self.config.model

    @property
    def config_dict(self) -> dict:
        """The run's YAML as a plain dict (what the train rule writes to run.yaml)."""
        return to_dict(self.config)


def study(preset: str, data_root: str = "data", data_mirror: str | None = None,
          official_code: str = "v1") -> dict[str, Run]:
    """Every run of ``preset``, by name, in the tables' order (Table 1, then 2, then 3; at ``cpu`` the size
    sweep's pairs, smallest width first); the DEQ rows with the solver settings of ``official_code``
    ('v1', the paper's, or 'v2')."""
    training = preset_record(preset).training
    runs = {}
    if training.widths:
        for width in training.widths:
            for name in PAIR:
                run = _lm_run(name, preset, data_root, data_mirror, official_code,
                              width=None if width == CPU_WIDTH else width)
                runs[run.name] = run
        return runs
    for name in COPY_CONFIGS:
        settings = dict(model=name, preset=preset, **training.copy)
        runs[name] = Run(name, 1, config_from_dict(settings, source=f"study {preset}/{name}"))
    for name in CONFIGS:
        runs[name] = _lm_run(name, preset, data_root, data_mirror, official_code)
    return runs


def _lm_run(name: str, preset: str, data_root: str, data_mirror: str | None, official_code: str,
            width: int | None = None) -> Run:
    row, training = CONFIGS[name], preset_record(preset).training
    run_name = name if width is None else f"{name}-w{width}"
    settings = dict(model=name, preset=preset, official_code=official_code, data_root=data_root,
                    data_mirror=data_mirror, width=width, **_lm_budget(training, row))
    if preset != "paper" and row.dataset in STAND_IN:
        settings["dataset"] = STAND_IN[row.dataset]
    if row.driver != "deq" or preset == "paper":
        settings.pop("pretrain_steps", None)  # explicit rows have none; paper rows keep their own
    early = training.early_step if run_name in FIGURE2_RUNS else None
    if early is not None:
        settings["keep_steps"] = [early]
    return Run(run_name, row.paper_table, config_from_dict(settings, source=f"study {preset}/{run_name}"), early)


def dataset_of(run: Run) -> str | None:
    """The corpus a run reads (None for copy memory, which is generated)."""
    if run.config.is_copy_memory:
        return None
    return run.config.dataset or CONFIGS[run.row].dataset


def not_trained(preset: str) -> dict[str, str]:
    """Rows of Tables 1-3 that ``preset`` does not train, each with why (the tables print it)."""
    runs = {run.row for run in study(preset).values()}
    reasons = {}
    for name in COPY_CONFIGS:
        if name not in runs:
            budget = PRESETS["paper"].training.copy
            reasons[name] = (f"not trained at preset {preset}: the paper's task (T = {budget['copy_T']}) needs about "
                             f"{budget['max_steps']:,} steps of {budget['batch_size']} sequences of "
                             f"{budget['copy_T'] + 20} symbols (days on a CPU)")
    for name, row in CONFIGS.items():
        if name not in runs:
            paper = study_budget(name)
            reasons[name] = (f"not trained at preset {preset}: the paper trains it {paper['max_steps']:,} steps of "
                             f"{paper['batch_size']} x {paper['tgt_len']} tokens (GPU-days); the {preset} study trains "
                             f"the {PAIR[0]} pair instead")
    return reasons


def study_budget(name: str) -> dict:
    """The paper preset's training budget of row ``name`` (steps, batch, segment length)."""
    return _lm_budget(PRESETS["paper"].training, CONFIGS[name])


def _lm_budget(training: Training, row: LMConfig) -> dict:
    """The training settings of a language-model row: the preset's, with what its TrellisNet rows change."""
    return {**training.lm, **(training.trellis.get(row.dataset, {}) if row.family == "trellis" else {})}


def size_sweep(preset: str) -> list[tuple[str, str, str, str]]:
    """(family, size label, DEQ run, explicit run) per point of the size sweep, smallest first."""
    widths = preset_record(preset).training.widths
    if widths:
        return [("transformer", f"width {w}", *(n if w == CPU_WIDTH else f"{n}-w{w}" for n in PAIR)) for w in widths]
    return list(PAPER_SIZE_SWEEP)
