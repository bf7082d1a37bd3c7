"""The presets, each one typed record: what a preset trains with, how it evaluates, how large its
benchmarks are. The study (:mod:`deq.study`), the workflow's rules, the registry's model scaling
(:func:`deq.rows.configs.get_config`), the benchmarks and the config schema all read the names and
numbers from here; a test keeps the schema's ``preset`` enum equal to :data:`PRESETS`.

- ``smoke``: the whole DAG in minutes on a CPU; its numbers check the plumbing only.
- ``cpu`` (the default): a real, scaled-down study, trained pairs within an hour on 2 cores.
- ``paper``: the paper's configurations, for GPUs.

What each preset trains and why is told in :mod:`deq.study`; how a row's model shrinks at each preset
in :mod:`deq.rows.configs`. Torch-free and importing nothing of the project: the workflow plans the
study from it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

__all__ = ["PRESETS", "Benchmarks", "DepthScale", "Evaluation", "GpuScale", "MemoryScale", "Preset", "RuntimeScale",
           "SolverScale", "Training", "preset"]


@dataclass(frozen=True)
class Training:
    """The budgets of a preset's training runs: settings of :class:`deq.engine.config.TrainConfig`."""

    lm: dict  # every language-model run
    early_step: int  # Figure 2's early checkpoint of the DEQ and its weight-tied stack: just after pretraining
    copy: dict | None = None  # Table 1's copy-memory runs (None: the preset trains none)
    trellis: dict = field(default_factory=dict)  # corpus -> what TrellisNet rows set differently (paper preset)
    widths: tuple[int, ...] = ()  # cpu: the widths each pair of the size sweep trains at


@dataclass(frozen=True)
class Evaluation:
    """What the evaluate stage asks of the trained runs (:mod:`deq.evaluate`)."""

    convergence_evals: int  # Figure 2: function evaluations of the convergence curves
    sweep_caps: tuple[int, ...]  # Figure 3: forward caps tried (at the row's evaluation tolerance)
    sweep_max_tokens: int | None  # Figure 3: validation tokens per point (None: the whole split)
    runtime_max_tokens: int | None  # Table 4 at matched perplexity: validation tokens per tolerance tried
    runtime_rounds: int  # Table 4 at matched perplexity: interleaved timing rounds
    figure3_run: str  # Figure 3's run: the paper's medium DEQ-Transformer; at cpu the trained DEQ at the largest width
    sweep_tols: tuple[float, ...] = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)  # Figure 3: tolerances tried


@dataclass(frozen=True)
class Preset:
    name: str
    training: Training
    evaluation: Evaluation
    bench: Benchmarks


# ---- training budgets ------------------------------------------------------------------------------

CPU_STEPS = 600  # optimiser steps of the cpu pair (32 x 32 tokens each)
CPU_PRETRAIN_STEPS = round(CPU_STEPS * 16_000 / 300_000)  # 5% of the steps, the official script's share (16k of 300k)

SMOKE_TRAINING = Training(
    lm=dict(max_steps=3, batch_size=2, tgt_len=8, lr=1e-3, pretrain_steps=1, eval_batch_size=2, eval_tgt_len=8,
            eval_max_tokens=64, test_max_tokens=64, checkpoint_every=2, trace_every=1),
    copy=dict(max_steps=3, batch_size=4, lr=1e-3, copy_T=20, copy_n_train=32, copy_n_test=8, eval_batch_size=8,
              checkpoint_every=2, trace_every=1),
    early_step=2,
)
# The pair's budget (each rule's wall time: Snakemake's benchmark files, see deq.study): 600 steps of 32
# segments of 32 tokens, 0.66 epochs of PTB, no segment memory (it doubles a step's time at this width, for
# little at this perplexity), the official optimiser (Adam, clip 0.25) at a rate for a short run (3e-3 beat
# 1e-2 and 2e-3 in probes). Validation every 100 steps on 20,000 tokens (and at the end, the same); test on
# the whole split, the paper's metric. No copy-memory runs: the paper's task needs days on a CPU
# (deq.study.not_trained).
CPU_TRAINING = Training(
    lm=dict(max_steps=CPU_STEPS, batch_size=32, tgt_len=32, mem_len=0, lr=3e-3, warmup_steps=20,
            pretrain_steps=CPU_PRETRAIN_STEPS, eval_batch_size=10, eval_tgt_len=32, eval_every=100,
            eval_max_tokens=20_000, test_max_tokens=None, checkpoint_every=100, log_every=10, trace_every=20),
    early_step=CPU_PRETRAIN_STEPS + 10,
    widths=(64, 128),  # 128 is the cpu model preset's own width (deq.rows.configs.CPU_WIDTH)
)
PAPER_TRAINING = Training(
    # The official DEQ-Transformer script (v1 run_wt103_deq_transformer.sh with train_transformer.py):
    # batch 56, 150-token segments and memory, Adam 2.5e-4, 16k warm-up steps then cosine to 300k steps,
    # clip 0.25, validation every 5,000 steps with batch 4 (hard-coded there; v2 uses 16) on segments of 150.
    lm=dict(max_steps=300_000, batch_size=56, tgt_len=150, lr=2.5e-4, warmup_steps=16_000, clip=0.25,
            eval_batch_size=4, eval_tgt_len=150, eval_every=5_000, eval_max_tokens=None, checkpoint_every=1_000,
            trace_every=1_000),
    # TrellisNet rows: the official DEQ-TrellisNet script (v1 run_wt103_deq_trellisnet.sh with
    # train_trellisnet.py) trains with Adam 1e-3, clip 0.07, batch 49 on 100-token sequences and validates
    # with batch 4 on sequences of the same length; PTB takes locuslab/trellisnet word_PTB's batch 16 and
    # sequence 110 with the DEQ script's optimiser. Neither states a step count (train_trellisnet.py loops
    # until stopped, dividing the rate by 10 at epochs 15, 20 and 23); 300k (WT103) and 50k (PTB, about 95
    # epochs) with this project's cosine schedule are ours (docs/fidelity.md).
    trellis={
        "wikitext-103": dict(batch_size=49, tgt_len=100, lr=1e-3, clip=0.07, warmup_steps=0, eval_batch_size=4,
                             eval_tgt_len=100),
        "ptb": dict(batch_size=16, tgt_len=110, lr=1e-3, clip=0.07, warmup_steps=0, max_steps=50_000,
                    eval_batch_size=4, eval_tgt_len=110),
    },
    # T = 400 with the paper's 20K / 2K sequences; 50 epochs of batch 32 (no official script exists).
    copy=dict(max_steps=31_250, batch_size=32, lr=1e-3, copy_T=400, copy_n_train=20_000, copy_n_test=2_000,
              eval_batch_size=100, eval_every=2_500, checkpoint_every=1_000, trace_every=500),
    early_step=40_000,
)

# ---- benchmark scales ------------------------------------------------------------------------------

# The sizes of the benchmarks of deq.bench at each preset: smoke exercises the code in seconds, cpu is a
# few minutes on 2 cores, paper the paper's scale (for a GPU where one is present).

@dataclass(frozen=True)
class SolverScale:
    """:mod:`deq.bench.solvers`: our solvers against torchdeq on one transformer-style cell."""

    d_model: int  # cell width
    n_head: int  # attention heads
    d_inner: int  # feed-forward width
    seq_len: int  # tokens per sample
    batch: int  # samples per solve
    rounds: int  # timed rounds after the warm-up round
    max_iter: int = 40  # forward cap (the paper's f_thres is 30)
    backward_max_iter: int = 60  # backward cap
    fixed_nfe: int = 30  # f calls per entry in the forward_fixed_nfe phase
    tol: float = 1e-3  # forward tolerance, relative residual per sample (the DEQ v2 criterion)
    backward_tol: float = 1e-3  # backward tolerance, relative residual per sample


@dataclass(frozen=True)
class MemoryScale:
    """:mod:`deq.bench.memory`: one training step of every row of Tables 2-3 (the paper's protocol: 150 x 15)."""

    preset: str  # widths (and everything else) of get_config's preset: 'paper', 'cpu' or 'smoke'
    paper_depth: bool  # keep the paper row's n_layer (and aux readouts) instead of the preset's
    seq_len: int  # tokens per sample
    batch: int  # samples per step
    fit_batches: tuple[int, ...] = ()  # also measured, for a line in the batch where ``batch`` does not fit

    @property
    def label(self) -> str:
        if self.preset == "paper":
            what = "paper widths"
        else:
            what = f"{self.preset} widths, paper depth" if self.paper_depth else f"{self.preset} preset"
        return f"{what}, {self.seq_len} x {self.batch}"


@dataclass(frozen=True)
class DepthScale:
    """:mod:`deq.bench.depth`: one cell as a weight-tied stack and as a DEQ, at depths 2 ... 64."""

    model_preset: str  # widths of the cells (get_config's preset)
    seq_len: int  # tokens per sample
    batch: int  # samples per step


@dataclass(frozen=True)
class RuntimeScale:
    """:mod:`deq.bench.runtime`: Table 4's pairs, step times interleaved."""

    tgt_len: int  # tokens per segment (the paper's protocol: 150)
    batch: int  # segments per step (the paper's protocol: 15)
    rounds: int  # timed rounds after the warm-up round
    breakdown_repeats: int  # repeats of each separately timed part of the breakdown (median taken)
    dataset: str  # vocabulary: 'wikitext-103' (paper) or 'ptb' (small presets, as for training)
    paper_depth: bool  # explicit rows keep the paper's 18 / 70 layers, not the preset's shrunk depth


@dataclass(frozen=True)
class GpuScale:
    """``python -m deq.bench.gpu``: paper scale on a GPU, or smoke scale on the CPU with ``--shrink``."""

    device: str  # 'cuda', or 'cpu' for the shrunk check
    tp_batch: int  # throughput: segments per step (official script: 56), at the runtime benchmark's segment length
    tp_rounds: int  # throughput: timed rounds after the warm-up round
    needs_s: dict  # part -> seconds it needs at least; a part with less time left is skipped


@dataclass(frozen=True)
class Benchmarks:
    """How large a preset's benchmarks are."""

    solvers: SolverScale
    memory: MemoryScale
    depth: DepthScale
    runtime: RuntimeScale
    gpu: GpuScale | None = None  # the one-shot GPU script runs at paper scale, or shrunk at smoke


SMOKE_CELL = dict(d_model=32, n_head=2, d_inner=64, seq_len=16, batch=2)
CPU_CELL = dict(d_model=256, n_head=4, d_inner=1024, seq_len=128, batch=8)  # the solver issue's setting
SMOKE_BENCH = Benchmarks(
    SolverScale(**SMOKE_CELL, rounds=1, max_iter=12, backward_max_iter=12, fixed_nfe=8),
    MemoryScale("smoke", True, 24, 3),
    DepthScale("smoke", 16, 2), RuntimeScale(8, 2, 3, 2, "ptb", paper_depth=False),
    GpuScale("cpu", 2, 2, {"memory": 2, "runtime": 3, "throughput": 1}))
# Memory at cpu: the protocol at the study's widths and the paper's depths (the depth ratio drives the reduction).
# At paper: the paper's widths, with batches 2 and 4 for the line where batch 15 does not fit (a CPU).
CPU_BENCH = Benchmarks(SolverScale(**CPU_CELL, rounds=5), MemoryScale("cpu", True, 150, 15), DepthScale("cpu", 150, 15),
                       RuntimeScale(64, 4, 6, 3, "ptb", paper_depth=True))
PAPER_BENCH = Benchmarks(
    SolverScale(**CPU_CELL, rounds=10), MemoryScale("paper", True, 150, 15, (2, 4)), DepthScale("paper", 150, 15),
    RuntimeScale(150, 15, 6, 3, "wikitext-103", paper_depth=True),
    GpuScale("cuda", 56, 5, {"memory": 150, "runtime": 120, "throughput": 60}))


# ---- the presets -----------------------------------------------------------------------------------

PRESETS: dict[str, Preset] = {preset.name: preset for preset in (
    Preset("smoke", SMOKE_TRAINING, Evaluation(
        convergence_evals=6, sweep_caps=(1, 2, 4), sweep_max_tokens=64, runtime_max_tokens=64, runtime_rounds=2,
        figure3_run="wt103-deq-transformer-medium"), SMOKE_BENCH),
    Preset("cpu", CPU_TRAINING, Evaluation(
        convergence_evals=60, sweep_caps=(2, 4, 8, 12, 16, 24, 30), sweep_max_tokens=5_000,
        runtime_max_tokens=5_000, runtime_rounds=6, figure3_run="wt103-deq-transformer-small"), CPU_BENCH),
    Preset("paper", PAPER_TRAINING, Evaluation(
        convergence_evals=350, sweep_caps=(5, 10, 15, 20, 30, 40, 50), sweep_max_tokens=None,
        runtime_max_tokens=100_000, runtime_rounds=6, figure3_run="wt103-deq-transformer-medium"), PAPER_BENCH),
)}


def preset(name: str) -> Preset:
    """The preset ``name``; a ``ValueError`` naming the allowed ones otherwise."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {list(PRESETS)}")
    return PRESETS[name]
