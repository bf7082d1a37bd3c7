"""The study the workflow runs: which training runs each preset makes, and their budgets.

One run per row of the paper's Tables 1-3 (the four copy-memory models of
:data:`deq.models.configs.COPY_CONFIGS`, the twelve word-level rows of
:data:`deq.models.configs.CONFIGS`); a run's name is its row's name, and its folder is
``results/runs/<preset>/<name>/`` (what :mod:`deq.train` writes there). The presets:

- ``smoke``: tiny models (the ``smoke`` model preset), 3 steps, a few hundred evaluation tokens and a
  copy task of length 20+20: the whole DAG in minutes on a CPU. Its numbers check the plumbing only.
- ``cpu``: the ``cpu`` model preset (width 128, a quarter of the depth) trained 60 steps of 8 x 64
  tokens (DEQ rows: the first 12 as the weight-tied stack), with validation on the first 3,000 and
  test on the first 10,000 tokens of each split. WikiText-103 rows train on WikiText-2 in its place
  (:func:`deq.models.configs.on_dataset`), and the tables say so. Table 1 keeps the paper's task
  definition (T = 400, 20,000 training sequences) with 30 steps of 16 and 250 test sequences: the
  DEQ-Transformer's step on 420-long sequences takes about 6 s on one core. These budgets are what
  fits the hour: a DEQ-TrellisNet step (Broyden to its cap of 45, both passes) takes about 3.5 s on
  one core, and the four benchmarks take about 16 minutes of the machine by themselves.
- ``paper``: the paper's rows at their full size with the official scripts' budgets where they exist
  (PAPER.md, "Official scripts"); where none exist the choice is written beside it below.

The budgets are chosen so that ``cpu`` finishes within an hour on 2 cores (README, "Presets").
"""

from __future__ import annotations

from dataclasses import dataclass

from deq.engine.config import TrainConfig, config_from_dict, to_dict
from deq.models.configs import COPY_CONFIGS, CONFIGS, PRESETS

STAND_IN = {"wikitext-103": "wikitext-2"}  # corpus -> the one small presets train on instead
FIGURE2_RUNS = ("wt103-deq-transformer-small", "wt103-transformer-xl-small-tied-16")  # DEQ and weight-tied, one cell
FIGURE3_RUN = "wt103-deq-transformer-medium"  # the paper's Figure 3: medium DEQ-Transformer, no adaptive embedding


@dataclass(frozen=True)
class Run:
    name: str  # the row's name, also the run folder's
    table: int  # the paper's table: 1 (copy memory), 2 (PTB), 3 (WikiText-103)
    config: TrainConfig  # what deq.train runs
    early_step: int | None = None  # a checkpoint kept for Figure 2's "early" curve (None: none kept)

    @property
    def config_dict(self) -> dict:
        """The run's YAML as a plain dict (what the train rule writes to run.yaml)."""
        return to_dict(self.config)


# Per preset: the settings every language-model run shares, then the copy-memory ones.
LM_BUDGETS = {
    "smoke": dict(max_steps=3, batch_size=2, tgt_len=8, lr=1e-3, pretrain_steps=1, eval_batch_size=2,
                  eval_tgt_len=8, eval_max_tokens=64, test_max_tokens=64, checkpoint_every=2, trace_every=1),
    "cpu": dict(max_steps=60, batch_size=8, tgt_len=64, lr=1e-3, warmup_steps=6, pretrain_steps=12,
                eval_batch_size=10, eval_tgt_len=64, eval_every=30, eval_max_tokens=3_000,
                test_max_tokens=10_000, checkpoint_every=20, trace_every=4),
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
    "cpu": dict(max_steps=30, batch_size=16, lr=1e-3, copy_T=400, copy_n_train=20_000, copy_n_test=250,
                eval_batch_size=50, eval_every=15, checkpoint_every=10, trace_every=5),
    # T = 400 with the paper's 20K / 2K sequences; 50 epochs of batch 32 (no official script exists).
    "paper": dict(max_steps=31_250, batch_size=32, lr=1e-3, copy_T=400, copy_n_train=20_000, copy_n_test=2_000,
                  eval_batch_size=100, eval_every=2_500, checkpoint_every=1_000, trace_every=500),
}
EARLY_STEP = {"smoke": 2, "cpu": 20, "paper": 40_000}  # Figure 2's early checkpoint: just after pretraining


def study(preset: str, data_root: str = "data", data_mirror: str | None = None,
          official_code: str = "v1") -> dict[str, Run]:
    """Every run of ``preset``, by name, in the tables' order (Table 1, then 2, then 3); the DEQ rows with
    the solver settings of ``official_code`` ('v1', the paper's, or 'v2')."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    runs = {}
    for name in COPY_CONFIGS:
        settings = dict(model=name, preset=preset, **COPY_BUDGETS[preset])
        runs[name] = Run(name, 1, config_from_dict(settings, source=f"study {preset}/{name}"))
    for name, row in CONFIGS.items():
        settings = dict(model=name, preset=preset, official_code=official_code, data_root=data_root,
                        data_mirror=data_mirror, **LM_BUDGETS[preset])
        if preset == "paper" and row.family == "trellis":
            settings.update(TRELLIS_PAPER[row.dataset])
        if preset != "paper" and row.dataset in STAND_IN:
            settings["dataset"] = STAND_IN[row.dataset]
        if row.driver != "deq" or preset == "paper":
            settings.pop("pretrain_steps", None)  # explicit rows have none; paper rows keep their own
        early = EARLY_STEP[preset] if name in FIGURE2_RUNS else None
        if early is not None:
            settings["keep_steps"] = [early]
        runs[name] = Run(name, row.paper_table, config_from_dict(settings, source=f"study {preset}/{name}"), early)
    return runs


def dataset_of(run: Run) -> str | None:
    """The corpus a run reads (None for copy memory, which is generated)."""
    if run.config.is_copy_memory:
        return None
    return run.config.dataset or CONFIGS[run.name].dataset
