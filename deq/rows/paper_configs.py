"""The registry data: one :class:`~deq.rows.lm_config.LMConfig` per row of Tables 2-3 the paper trains.

Read :mod:`deq.rows.lm_config` for what the fields mean and :mod:`deq.rows.configs` for the presets
and how a row becomes a model (that module serves these rows; this one never imports it). This file is
only the rows, in the paper's order, each with its ``derivation``. Only two configurations were
released (the WT103 DEQ-Transformer medium adaptive and DEQ-TrellisNet scripts); every other row
reuses the nearest released recipe and solves its widths from the paper's parameter counts, with
the arithmetic in its ``derivation``. ``docs/params.md`` (``python -m deq.rows.params``) shows the
measured counts beside the paper's.

Sources: the official scripts (locuslab/deq ``run_wt103_deq_transformer.sh``,
``run_wt103_deq_trellisnet.sh``; v2 ``DEQ-Sequence/wt103_deq_transformer.sh``), TrellisNet's
``word_PTB`` and ``word_WT103`` defaults (locuslab/trellisnet), and Transformer-XL's WT103 recipes
(base: 16 layers, div_val 1; large: 18 layers, d_embed 1024, div_val 4).
"""

from __future__ import annotations

from dataclasses import replace

from deq.models.cell_configs import TransformerCellConfig, TrellisCellConfig
from deq.rows.lm_config import DATASETS, LMConfig
from deq.settings import SolverSettings

__all__ = ["CODES", "CONFIGS", "with_code"]

PTB, WT103 = "ptb", "wikitext-103"
WT103_CUTOFFS = (20_000, 40_000, 200_000)  # Transformer-XL / DEQ-Transformer adaptive softmax on WT103
SPLIT_CUTOFFS = (2_800, 20_000, 76_000)  # TrellisNet / DEQ-TrellisNet split softmax on WT103

# The DEQ rows follow the code that produced the paper's numbers: locuslab/deq v1 (commit 3fba434,
# DEQModel/), checked file by file in docs/fidelity.md. Its DEQFunc (modules/deq.py) solves with Broyden
# (modules/broyden.py) in both passes: every low-rank pair kept (U, V^T preallocated with `threshold`
# slots), threshold + 1 evaluations of g, and a stop on the whole batch's ||g||_F < 1e-6 sqrt(numel)
# forward and < 2e-10 sqrt(numel) backward (stop_mode 'batch_rms' with tol 1e-6 / 2e-10), with its
# stagnation exit; the same solve at evaluation; segments solved in subsequences (subseq_len).


def v1_solver(f_thres: int, b_thres: int, subseq_len: int) -> SolverSettings:
    """The v1 DEQFunc's solves for a script's ``--f_thres``, ``--b_thres`` and ``--subseq_len``."""
    return SolverSettings(solver="broyden", tol=1e-6, max_iter=f_thres + 1, stop_mode="batch_rms",
                          backward_solver="broyden", backward_tol=2e-10, backward_max_iter=b_thres + 1,
                          eval_solver="broyden", eval_tol=1e-6, eval_max_iter=f_thres + 1,
                          subseq_len=subseq_len, code="v1")


TRELLIS_SOLVER = v1_solver(45, 45, 50)  # run_wt103_deq_trellisnet.sh: f_thres 45, b_thres 45, subseq_len 50
TRANSFORMER_SOLVER = v1_solver(30, 40, 75)  # run_wt103_deq_transformer.sh: f_thres 30, b_thres 40, subseq_len 75
TRANSFORMER_PRETRAIN = 16_000  # run_wt103_deq_transformer.sh: --pretrain_steps 16000
# The later release (locuslab/deq v2 HEAD, DEQ-Sequence/wt103_deq_transformer.sh and lib/solvers.py), a
# named variant (get_config(..., code="v2")): Anderson forward (m 6, lam 1e-4; `threshold` 30 evaluations),
# Broyden backward with b_thres 35 (36 evaluations, every pair kept), relative residual 1e-3 both ways
# (the v2 solvers' default eps; v2 measures it on the whole batch, this project per sample), no
# subsequences, 32k pretraining steps. v2 has no DEQ-TrellisNet, so the TrellisNet rows stay v1.
TRANSFORMER_V2_SOLVER = SolverSettings(solver="anderson", tol=1e-3, max_iter=30, stop_mode="rel",
                                       backward_solver="broyden", backward_tol=1e-3, backward_max_iter=36,
                                       eval_solver="anderson", eval_tol=1e-3, eval_max_iter=30, code="v2")
TRANSFORMER_V2_PRETRAIN = 32_000

# TrellisNet word_PTB width (emsize 400, nhid 1000 + nout 400), its dropouth 0.28.
TRELLIS_PTB = TrellisCellConfig(d_embed=400, d_hidden=1400, d_out=400, dropout=0.28)
# Official DEQ-TrellisNet WT103 width (d_embed 500, nhid 1500 + nout 500), dropouth 0.1.
TRELLIS_WT103 = TrellisCellConfig(d_embed=500, d_hidden=2000, d_out=500, dropout=0.1)


def transformer(d_model: int, n_head: int, d_head: int, d_inner: int) -> TransformerCellConfig:
    """A post-LN cell with the official script's dropout 0.05 (no attention dropout)."""
    return TransformerCellConfig(d_model=d_model, n_head=n_head, d_head=d_head, d_inner=d_inner, dropout=0.05)


SMALL_CELL = transformer(500, 10, 50, 2_500)  # shared by DEQ-Transformer small and its weight-tied stack
MEDIUM_ADAPTIVE_CELL = transformer(700, 10, 70, 48_000)  # the official script
# The paper prints 180M / 45M for all three WT103 TrellisNet rows; the released width gives less.
TRELLIS_WT103_NOTE = ("the released width (nhid 1500 + nout 500) gives 40.0M non-embedding and 174.2M in all; "
                      "the paper's 45M / 180M fit d_hidden ~2134 (nhid ~1634), which no released script uses")
TRELLIS_70 = LMConfig(
    name="wt103-trellisnet-70-aux", paper_table=3, dataset=WT103, n_token=DATASETS[WT103], family="trellis",
    driver="weight_tied", n_layer=70, cell=TRELLIS_WT103, d_embed=500, cutoffs=SPLIT_CUTOFFS, div_val=1,
    mem_len=1, dropout_embed=0.1, dropout_out=0.1, aux_every=25, aux_weight=0.1,
    paper_params=180_000_000, paper_nonembedding_params=45_000_000, paper_ppl=29.2, paper_memory_gb=24.7,
    count_note=TRELLIS_WT103_NOTE,
    derivation="The official DEQ-TrellisNet cell, split softmax and dropouts (0.1), so the two rows differ "
               "only in the driver (the paper gives both 180M / 45M); 70 levels and an auxiliary loss of "
               "weight 0.1 every 25 levels from TrellisNet's word_WT103 defaults, whose own width "
               "(emsize = nout 512, nhid 1500) counts 178.0M / 40.7M, no closer to 45M. Weight-tied: "
               "TrellisNet shares its weights across levels by design.")

ROWS = [
    # ---- Table 2: word-level Penn Treebank --------------------------------------------------------------
    LMConfig(
        name="ptb-trellisnet-60-aux", paper_table=2, dataset=PTB, n_token=DATASETS[PTB], family="trellis",
        driver="weight_tied", n_layer=60, cell=TRELLIS_PTB, d_embed=400, cutoffs=(), div_val=1, mem_len=1,
        dropout_embed=0.45, dropout_out=0.45, aux_every=12, aux_weight=0.05,
        paper_params=24_000_000, paper_nonembedding_params=20_000_000, paper_ppl=57.0, paper_memory_gb=8.5,
        derivation="TrellisNet word_PTB defaults: emsize 400, nhid 1000 + nout 400 (d_hidden 1400), "
                   "dropouti 0.45, dropouth 0.28, dropout 0.45, auxiliary loss 0.05 every 12 levels, tied "
                   "plain softmax (no MoS); 60 levels as the paper's row (the code's default is 58). Not "
                   "modelled: weight dropout 0.5, word dropout 0.1, AR/TAR. Weight norm on (the code's "
                   "default is off) so that the DEQ row has the same cell. Weight-tied by design."),
    LMConfig(
        name="ptb-deq-trellisnet", paper_table=2, dataset=PTB, n_token=DATASETS[PTB], family="trellis",
        driver="deq", n_layer=40, cell=TRELLIS_PTB, d_embed=400, cutoffs=(), div_val=1, mem_len=1,
        dropout_embed=0.45, dropout_out=0.45, solver=TRELLIS_SOLVER, pretrain_steps=30_000,
        paper_params=24_000_000, paper_nonembedding_params=20_000_000, paper_ppl=57.1, paper_memory_gb=1.2,
        derivation="No PTB script was released: the cell, dropouts and softmax of the 60-layer TrellisNet "
                   "row (the paper gives both 24M / 20M); pretraining (40-layer stack, 30k steps) and "
                   "solver settings (v1 Broyden both ways, f_thres 45 / b_thres 45, subsequences of 50) from "
                   "the official WT103 DEQ-TrellisNet script."),
    # ---- Table 3: WikiText-103 --------------------------------------------------------------------------
    TRELLIS_70,
    replace(TRELLIS_70, name="wt103-trellisnet-70-aux-checkpoint", checkpoint=True, paper_memory_gb=5.2,
            derivation="The 70-layer TrellisNet row with torch.utils.checkpoint around every level "
                       "(activations recomputed in the backward); same model, same counts."),
    replace(TRELLIS_70, name="wt103-deq-trellisnet", driver="deq", n_layer=40, aux_every=0, aux_weight=0.0,
            solver=TRELLIS_SOLVER, pretrain_steps=30_000, paper_ppl=29.0, paper_memory_gb=3.3,
            official_params=174_168_738,  # run_wt103_deq_trellisnet.sh's model and SplitCrossEntropyLoss
            derivation="Official script run_wt103_deq_trellisnet.sh: d_embed 500, nhid 1500 + nout 500 "
                       "(d_hidden 2000, d_out 500), dropout / dropouti / dropouth 0.1, tied split softmax "
                       "2800/20000/76000, 40-layer pretraining for 30k steps, f_thres 45 / b_thres 45, "
                       "subseq_len 50 (v1 code: Broyden in both passes with its batch tolerances)."),
    LMConfig(
        name="wt103-transformer-xl-medium-16", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="untied", n_layer=16, cell=transformer(450, 10, 45, 1_250), d_embed=450,
        cutoffs=WT103_CUTOFFS, div_val=1, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        paper_params=165_000_000, paper_nonembedding_params=44_000_000, paper_ppl=24.3, paper_memory_gb=8.5,
        derivation="No config released. Transformer-XL's WT103 base recipe (16 untied layers, adaptive "
                   "softmax 20000/40000/200000 with div_val 1, mem_len 150) at the paper's counts: the "
                   "embedding 165M - 44M = 121M ~ 267,735 x (d + 1) gives d_model = d_embed 450 (10 heads x "
                   "45), "
                   "and 44M / 16 layers gives d_inner 1250. Every layer is this project's transformer cell, "
                   "which has its own input injection (d -> 3d, 0.6M a layer) that a plain Transformer-XL "
                   "layer lacks; the widths are solved with it included. Dropout 0.05 as the DEQ script "
                   "(Transformer-XL base uses 0.1), so the pair differs only in architecture."),
    LMConfig(
        name="wt103-deq-transformer-medium", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="deq", n_layer=2, cell=transformer(480, 10, 48, 42_800), d_embed=480,
        cutoffs=WT103_CUTOFFS, div_val=1, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        solver=TRANSFORMER_SOLVER, pretrain_steps=TRANSFORMER_PRETRAIN,
        paper_params=172_000_000, paper_nonembedding_params=43_000_000, paper_ppl=24.2, paper_memory_gb=2.7,
        derivation="No config released for the non-adaptive medium model: the official adaptive script's "
                   "recipe (dropout 0.05, mem_len 150, 2-layer pretraining for 16k steps, v1 solver) with "
                   "div_val 1 (adaptive softmax only, as Transformer-XL base) and widths from the paper's "
                   "counts: the embedding 172M - 43M = 129M gives d_model = d_embed 480 (10 heads x 48), "
                   "the 43M cell gives d_inner 42,800 (the script's cell is as wide: 48,000 at d 700)."),
    LMConfig(
        name="wt103-transformer-xl-medium-18-adaptive", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="untied", n_layer=18, cell=transformer(700, 7, 70, 890), d_embed=700,
        cutoffs=WT103_CUTOFFS, div_val=4, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        paper_params=110_000_000, paper_nonembedding_params=72_000_000, paper_ppl=23.6, paper_memory_gb=9.0,
        count_note="the same adaptive embedding as wt103-deq-transformer-medium-adaptive (released "
                   "script: d_embed 700, 26.5M with its head projections), so the pair compares like for like; "
                   "the paper's 110M fits d_embed 1024 (Transformer-XL large's): 110.8M with this cell",
        derivation="No config released. Transformer-XL's WT103 large recipe shape (18 untied layers, "
                   "adaptive embedding with div_val 4) on the official DEQ medium adaptive embedding "
                   "(d_embed = d_model 700, cutoffs 20000/40000/200000); 72M / 18 layers = 4.0M a layer. "
                   "With the per-layer injection (d -> 3d) a full-width layer (10 heads x 70) leaves no room "
                   "for a feed-forward, so the DEQ's head width 70 is kept with the most heads that still "
                   "leave a feed-forward at least d_model wide: 7 heads, d_inner 890."),
    LMConfig(
        name="wt103-deq-transformer-medium-adaptive", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="deq", n_layer=2, cell=MEDIUM_ADAPTIVE_CELL, d_embed=700,
        cutoffs=WT103_CUTOFFS, div_val=4, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        solver=TRANSFORMER_SOLVER, pretrain_steps=TRANSFORMER_PRETRAIN,
        paper_params=110_000_000, paper_nonembedding_params=70_000_000, paper_ppl=23.2, paper_memory_gb=3.7,
        official_params=97_691_888,  # run_wt103_deq_transformer.sh's DEQTransformerLM (v1, 3fba434)
        count_note="follows the official script (97.7M, its count exactly), not the paper's 110M; the "
                   "non-embedding count agrees, so the gap is the embedding: d_embed 1024 (Transformer-XL "
                   "large's) would give 110.1M",
        derivation="Official script (v1 run_wt103_deq_transformer.sh, v2 wt103_deq_transformer.sh): d_model "
                   "= d_embed 700, 10 heads x 70, d_inner 48,000 (an early v1 revision had 46,000), tied "
                   "adaptive embedding 20000/40000/200000 with div_val 4, dropout 0.05, no attention "
                   "dropout, mem_len 150, 2-layer pretraining for 16k steps, Broyden f_thres 30 / b_thres 40 "
                   "on subsequences of 75 (v1; v2: 32k steps, Anderson f 30 / Broyden b 35). Chosen over the paper's "
                   "110M because it is the only released configuration and its non-embedding count "
                   "agrees with the paper's; the difference is all in the embedding."),
    LMConfig(
        name="wt103-transformer-xl-small-4", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="untied", n_layer=4, cell=transformer(500, 3, 50, 620), d_embed=500,
        cutoffs=WT103_CUTOFFS, div_val=1, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        paper_params=139_000_000, paper_nonembedding_params=4_900_000, paper_ppl=35.8, paper_memory_gb=4.8,
        derivation="No config released. The embedding 139M - 4.9M = 134.1M gives d_model = d_embed 500 (as "
                   "DEQ-Transformer small); 4.9M / 4 layers = 1.225M a layer. With the per-layer injection "
                   "a full-width layer (10 heads x 50, 2.0M before any feed-forward) does not fit, so the "
                   "small DEQ's head width 50 is kept with the most heads that still leave a feed-forward "
                   "at least d_model wide: 3 heads, d_inner 620."),
    LMConfig(
        name="wt103-transformer-xl-small-tied-16", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="weight_tied", n_layer=16, cell=SMALL_CELL, d_embed=500,
        cutoffs=WT103_CUTOFFS, div_val=1, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        paper_params=138_000_000, paper_nonembedding_params=4_500_000, paper_ppl=34.9, paper_memory_gb=6.8,
        derivation="The DEQ-Transformer small cell applied 16 times from z = 0 (the paper gives both rows "
                   "138M / 4.5M), so the row differs from the DEQ only in the driver; memory of the final "
                   "states, mem_len 150."),
    LMConfig(
        name="wt103-deq-transformer-small", paper_table=3, dataset=WT103, n_token=DATASETS[WT103],
        family="transformer", driver="deq", n_layer=2, cell=SMALL_CELL, d_embed=500,
        cutoffs=WT103_CUTOFFS, div_val=1, mem_len=150, dropout_embed=0.05, dropout_out=0.05,
        solver=TRANSFORMER_SOLVER, pretrain_steps=TRANSFORMER_PRETRAIN,
        paper_params=138_000_000, paper_nonembedding_params=4_500_000, paper_ppl=32.4, paper_memory_gb=1.1,
        derivation="No config released: the official medium script's recipe with div_val 1 and widths from "
                   "the paper's counts: the embedding 138M - 4.5M = 133.5M gives d_model = d_embed 500 "
                   "(Transformer-XL small's 139M - 4.9M agrees; 134.1M), 10 heads x 50; the 4.5M cell gives "
                   "d_inner 2500."),
]

CONFIGS: dict[str, LMConfig] = {cfg.name: cfg for cfg in ROWS}
assert len(CONFIGS) == len(ROWS), "duplicate row names"


CODES = ("v1", "v2")  # the official code a row's solver settings follow (v1: the paper's, the default)


def with_code(cfg: LMConfig, code: str) -> LMConfig:
    """The row with the solver settings and pretraining of official code ``code`` ('v1' as registered,
    'v2' the later release); explicit rows and the DEQ-TrellisNets (no v2 exists) are unchanged."""
    if code not in CODES:
        raise ValueError(f"unknown official code {code!r}; choose from {list(CODES)}")
    if code == "v1" or cfg.driver != "deq" or cfg.family != "transformer":
        return cfg
    return replace(cfg, solver=TRANSFORMER_V2_SOLVER, pretrain_steps=TRANSFORMER_V2_PRETRAIN)
