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
  the budget below; validation and test on the whole splits. The width-128 pair are the Table 3 rows
  themselves; the width-64 pair are named ``<row>-w64``. Every other row (Table 1's copy-memory models
  and the TrellisNet and other Transformer rows) is not trained at this preset: the paper trains each
  for GPU-days (:func:`not_trained` says so, with the paper's budget); its parameters and memory are
  still measured (the tables and the memory benchmark). The budget: 2 cores, one hour for everything.
  In a fresh clone at 89a8715 on 2 quiet cores the four runs took 346 s (weight-tied, width 64),
  489 s (DEQ, 64), 666 s (weight-tied, 128) and 973 s (DEQ, 128; its solves at the row's caps of 31
  forward and 41 backward iterations), two at a time, evaluations included; the four benchmarks 553 s;
  the whole workflow 2,089 s. In probes (a 64-wide DEQ, a 1,000-step schedule, the same settings
  otherwise) validation perplexity was 560 after 200 steps, 430 after 350, 330 after 600 and 300
  after 850, and a tied bigram model (embedding, one hidden layer, softmax) reached 370 after 300,000
  tokens: no model here reaches a bigram's level (about 250) at this budget, so the cpu study shows
  its pairs early in training.
- ``paper``: the paper's rows at their full size with the official scripts' budgets where they exist
  (PAPER.md, "Official scripts"); where none exist the choice is written beside it below.

The size sweep (:func:`size_sweep`, figure ``size_sweep``) pairs each DEQ with its explicit counterpart
at two sizes: at ``cpu`` the trained widths; at ``smoke`` and ``paper`` the paper's small and medium
rows of each family.
"""

from __future__ import annotations

from dataclasses import dataclass

from deq.engine.config import TrainConfig, config_from_dict, to_dict
from deq.rows.configs import COPY_CONFIGS, CONFIGS, CPU_WIDTH, PRESETS

STAND_IN = {"wikitext-103": "ptb"}  # corpus -> the one small presets train on instead (a 10,000-word vocabulary)
PAIR = ("wt103-deq-transformer-small", "wt103-transformer-xl-small-tied-16")  # a DEQ and its weight-tied stack, one cell
FIGURE2_RUNS = PAIR  # Figure 2's contrast: the DEQ and the weight-tied stack of the same cell
# The paper's Figure 3 uses the medium DEQ-Transformer; at cpu the one trained DEQ at the largest width.
FIGURE3_RUNS = {"smoke": "wt103-deq-transformer-medium", "cpu": PAIR[0], "paper": "wt103-deq-transformer-medium"}
SIZE_SWEEP_WIDTHS = (64, 128)  # cpu: the widths each pair trains at (128 is the cpu model preset's own)
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


CPU_STEPS = 600  # optimiser steps of the cpu pair (32 x 32 tokens each)
# Per preset: the settings every language-model run shares, then the copy-memory ones.
LM_BUDGETS = {
    "smoke": dict(max_steps=3, batch_size=2, tgt_len=8, lr=1e-3, pretrain_steps=1, eval_batch_size=2,
                  eval_tgt_len=8, eval_max_tokens=64, test_max_tokens=64, checkpoint_every=2, trace_every=1),
    # The pair's budget (measured: module docstring): 600 steps of 32 segments of 32 tokens, 0.66 epochs of
    # PTB, no segment memory (it doubles a step's time at this width, for little at this perplexity), the
    # official optimiser (Adam, clip 0.25) at a rate for a short run (3e-3 beat 1e-2 and 2e-3 in probes).
    # Pretraining 5% of the steps, the official script's share (16k of 300k). Validation every 100 steps on
    # 20,000 tokens (and at the end, the same); test on the whole split, the paper's metric.
    "cpu": dict(max_steps=CPU_STEPS, batch_size=32, tgt_len=32, mem_len=0, lr=3e-3, warmup_steps=20,
                pretrain_steps=round(CPU_STEPS * 16_000 / 300_000), eval_batch_size=10, eval_tgt_len=32,
                eval_every=100, eval_max_tokens=20_000, test_max_tokens=None, checkpoint_every=100,
                log_every=10, trace_every=20),
    # The official DEQ-Transformer script (v1 run_wt103_deq_transformer.sh with train_transformer.py):
    # batch 56, 150-token segments and memory, Adam 2.5e-4, 16k warm-up steps then cosine to 300k steps,
    # clip 0.25, validation every 5,000 steps with batch 4 (hard-coded there; v2 uses 16) on segments of 150.
    "paper": dict(max_steps=300_000, batch_size=56, tgt_len=150, lr=2.5e-4, warmup_steps=16_000, clip=0.25,
                  eval_batch_size=4, eval_tgt_len=150, eval_every=5_000, eval_max_tokens=None,
                  checkpoint_every=1_000, trace_every=1_000),
}
# TrellisNet rows in the paper preset: the official DEQ-TrellisNet script (v1 run_wt103_deq_trellisnet.sh
# with train_trellisnet.py) trains with Adam 1e-3, clip 0.07, batch 49 on 100-token sequences and
# validates with batch 4 on sequences of the same length; PTB takes locuslab/trellisnet word_PTB's batch 16
# and sequence 110 with the DEQ script's optimiser. Neither states a step count (train_trellisnet.py loops
# until stopped, dividing the rate by 10 at epochs 15, 20 and 23); 300k (WT103) and 50k (PTB, about 95
# epochs) with this project's cosine schedule are ours (docs/fidelity.md).
TRELLIS_PAPER = {
    "wikitext-103": dict(batch_size=49, tgt_len=100, lr=1e-3, clip=0.07, warmup_steps=0, eval_batch_size=4,
                         eval_tgt_len=100),
    "ptb": dict(batch_size=16, tgt_len=110, lr=1e-3, clip=0.07, warmup_steps=0, max_steps=50_000,
                eval_batch_size=4, eval_tgt_len=110),
}
COPY_BUDGETS = {
    "smoke": dict(max_steps=3, batch_size=4, lr=1e-3, copy_T=20, copy_n_train=32, copy_n_test=8,
                  eval_batch_size=8, checkpoint_every=2, trace_every=1),
    # T = 400 with the paper's 20K / 2K sequences; 50 epochs of batch 32 (no official script exists).
    "paper": dict(max_steps=31_250, batch_size=32, lr=1e-3, copy_T=400, copy_n_train=20_000, copy_n_test=2_000,
                  eval_batch_size=100, eval_every=2_500, checkpoint_every=1_000, trace_every=500),
}
# Figure 2's early checkpoint: just after pretraining.
EARLY_STEP = {"smoke": 2, "cpu": LM_BUDGETS["cpu"]["pretrain_steps"] + 10, "paper": 40_000}


def study(preset: str, data_root: str = "data", data_mirror: str | None = None,
          official_code: str = "v1") -> dict[str, Run]:
    """Every run of ``preset``, by name, in the tables' order (Table 1, then 2, then 3; at ``cpu`` the size
    sweep's pairs, smallest width first); the DEQ rows with the solver settings of ``official_code``
    ('v1', the paper's, or 'v2')."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    runs = {}
    if preset == "cpu":
        for width in SIZE_SWEEP_WIDTHS:
            for name in PAIR:
                run = _lm_run(name, preset, data_root, data_mirror, official_code,
                              width=None if width == CPU_WIDTH else width)
                runs[run.name] = run
        return runs
    for name in COPY_CONFIGS:
        settings = dict(model=name, preset=preset, **COPY_BUDGETS[preset])
        runs[name] = Run(name, 1, config_from_dict(settings, source=f"study {preset}/{name}"))
    for name in CONFIGS:
        runs[name] = _lm_run(name, preset, data_root, data_mirror, official_code)
    return runs


def _lm_run(name: str, preset: str, data_root: str, data_mirror: str | None, official_code: str,
            width: int | None = None) -> Run:
    row = CONFIGS[name]
    run_name = name if width is None else f"{name}-w{width}"
    settings = dict(model=name, preset=preset, official_code=official_code, data_root=data_root,
                    data_mirror=data_mirror, width=width, **LM_BUDGETS[preset])
    if preset == "paper" and row.family == "trellis":
        settings.update(TRELLIS_PAPER[row.dataset])
    if preset != "paper" and row.dataset in STAND_IN:
        settings["dataset"] = STAND_IN[row.dataset]
    if row.driver != "deq" or preset == "paper":
        settings.pop("pretrain_steps", None)  # explicit rows have none; paper rows keep their own
    early = EARLY_STEP[preset] if run_name in FIGURE2_RUNS else None
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
            budget = COPY_BUDGETS["paper"]
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
    row = CONFIGS[name]
    budget = dict(LM_BUDGETS["paper"])
    if row.family == "trellis":
        budget.update(TRELLIS_PAPER[row.dataset])
    return budget


def size_sweep(preset: str) -> list[tuple[str, str, str, str]]:
    """(family, size label, DEQ run, explicit run) per point of the size sweep, smallest first."""
    if preset == "cpu":
        return [("transformer", f"width {w}", *(n if w == CPU_WIDTH else f"{n}-w{w}" for n in PAIR))
                for w in SIZE_SWEEP_WIDTHS]
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    return list(PAPER_SIZE_SWEEP)
