"""The registry of the paper's rows: every row at a preset, and the model it builds.

One typed :class:`LMConfig` per word-level row of the paper (Tables 2 and 3; the type and its checks
are in :mod:`deq.rows.lm_config`). The registry :data:`CONFIGS` (its data lives in
:mod:`deq.rows.paper_configs`) covers every row of Tables 2-3 that the paper trains itself;
:func:`get_config` returns a row at a preset and :func:`build_model` turns it into a
:class:`~deq.models.lm.LanguageModel` with the row's driver (the DEQ's from :mod:`deq.models.drivers`,
the explicit ones from :mod:`baselines`). :data:`COPY_CONFIGS` holds the rows of Table 1. The rest
of the project imports the rows and their type from here.

Presets (one rule for every row; family, driver, dataset, vocabulary, cutoffs, div_val, dropouts kept):

- ``paper``: the row as registered.
- ``smoke``: tiny, for tests: transformer d_model 32 (2 heads x 16, d_inner 64), TrellisNet
  d_embed = d_out 16 and d_hidden 32; 2 layers; mem_len at most 8; solver caps 4; subsequences of at
  most 4 positions where the row solves in subsequences; one pretraining step if the row pretrains; an
  auxiliary readout after layer 1 if the row has them.
- ``cpu``: a real model scaled for a 2-core CPU: every width of every row times one factor,
  ``width / 500`` (``width`` 128 by default; 500 is the d_model of the DEQ-Transformer small and of the
  WikiText-103 TrellisNets, so those rows become exactly ``width`` wide), the paper's depth kept. One
  factor for the whole registry keeps every ratio between rows: non-embedding parameters scale by the
  factor squared in every row alike, so a DEQ and its explicit counterpart keep the paper's parameter
  ratio (the tables show both). Transformer heads: the attention width n_head x d_head scaled, split
  into heads of about 32 channels; mem_len at most 64; pretrain_steps / 100 (the study sets its own
  pretraining budget, :mod:`deq.study`); solver settings as the paper row.

At every preset the embedding table is at least ``div_val ** len(cutoffs)`` wide, so that every
adaptive cluster keeps one channel or more.

>>> cfg = get_config("wt103-deq-transformer-small", preset="smoke")
>>> cfg.family, cfg.driver, cfg.d_model, cfg.n_token, cfg.preset
('transformer', 'deq', 32, 267735, 'smoke')
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from deq.rows.lm_config import DATASETS, DRIVERS, FAMILIES, PRESETS, LMConfig, _choice
from deq.rows.paper_configs import CONFIGS, with_code

__all__ = ["CONFIGS", "COPY_CONFIGS", "DATASETS", "DRIVERS", "FAMILIES", "PRESETS", "CopyConfig", "LMConfig",
           "get_config", "on_dataset"]


# ---- presets -------------------------------------------------------------------------------------------

SMOKE_RULE = ("transformer d_model 32 (2 x 16 heads, d_inner 64) or TrellisNet d_embed = d_out 16, d_hidden 32; "
              "2 layers; mem_len <= 8; solver caps 4; subsequences <= 4; 1 pretraining step; aux readout after "
              "layer 1")
CPU_WIDTH, CPU_REFERENCE_WIDTH = 128, 500  # the cpu preset scales every width by CPU_WIDTH / 500
CPU_RULE = ("every width x width/500 (the 500-wide rows become `width` wide), the paper's depth, heads of about "
            "32 channels; mem_len <= 64; pretrain_steps / 100")


def _smoke(cfg: LMConfig) -> LMConfig:
    if cfg.family == "transformer":
        cell, d_model = replace(cfg.cell, d_model=32, n_head=2, d_head=16, d_inner=64, d_embed=None), 32
    else:
        cell, d_model = replace(cfg.cell, d_embed=16, d_hidden=32, d_out=16), 16
    solver = cfg.solver and replace(cfg.solver, max_iter=4, backward_max_iter=4, eval_max_iter=4,
                                    subseq_len=min(cfg.solver.subseq_len, 4))
    return replace(cfg, cell=cell, d_embed=max(d_model, cfg.div_val ** len(cfg.cutoffs)), n_layer=2,
                   mem_len=min(cfg.mem_len, 8), solver=solver, aux_every=min(cfg.aux_every, 1),
                   pretrain_steps=min(cfg.pretrain_steps, 1), preset="smoke",
                   derivation=f"[smoke preset: {SMOKE_RULE}] {cfg.derivation}")


def _cpu(cfg: LMConfig, width: int = CPU_WIDTH) -> LMConfig:
    scale = width / CPU_REFERENCE_WIDTH

    def scaled(n: int) -> int:
        return max(1, round(n * scale))

    if cfg.family == "transformer":
        attention = scaled(cfg.cell.n_head * cfg.cell.d_head)
        n_head = max(1, round(attention / 32))
        cell = replace(cfg.cell, d_model=scaled(cfg.cell.d_model), n_head=n_head, d_head=max(1, round(attention / n_head)),
                       d_inner=scaled(cfg.cell.d_inner), d_embed=None)
    else:
        cell = replace(cfg.cell, d_embed=scaled(cfg.cell.d_embed), d_hidden=scaled(cfg.cell.d_hidden),
                       d_out=scaled(cfg.cell.d_out))
    d_embed = max(scaled(cfg.d_embed), cfg.div_val ** len(cfg.cutoffs))
    return replace(cfg, cell=cell, d_embed=d_embed, mem_len=min(cfg.mem_len, 64),
                   pretrain_steps=cfg.pretrain_steps // 100, preset="cpu",
                   derivation=f"[cpu preset at width {width}: {CPU_RULE}] {cfg.derivation}")


def get_config(name: str, preset: str = "paper", code: str = "v1", width: int | None = None,
               paper_depth: bool = False) -> LMConfig:
    """The registered row ``name`` at ``preset`` ('paper', 'smoke' or 'cpu'; rules in the module docstring),
    with the solver settings of official code ``code`` ('v1', the paper's, or 'v2'; see
    :func:`deq.rows.paper_configs.with_code`). ``width`` (cpu preset only; default 128) is the width the
    500-wide rows get: the study's size sweep trains pairs at several widths. ``paper_depth`` keeps the
    paper's depth (``n_layer`` and auxiliary readouts) at a smaller preset's widths, as the benchmarks do
    where the depth ratio drives what they measure."""
    _choice("config", name, CONFIGS)
    _choice("preset", preset, PRESETS)
    if width is not None and (preset != "cpu" or isinstance(width, bool) or not isinstance(width, int) or width < 8):
        raise ValueError(f"width is a cpu-preset setting, an int >= 8; got width={width!r} at preset {preset!r}")
    row = with_code(CONFIGS[name], code)
    scaled = _cpu(row, width or CPU_WIDTH) if preset == "cpu" else {"paper": lambda c: c, "smoke": _smoke}[preset](row)
    return replace(scaled, n_layer=row.n_layer, aux_every=row.aux_every) if paper_depth else scaled


def on_dataset(cfg: LMConfig, dataset: str) -> LMConfig:
    """The row retargeted to another corpus: its vocabulary size, and the cutoffs that fit inside it.

    Used where a small preset trains on WikiText-2 in place of WikiText-103 (33,278 words, so the
    adaptive cutoffs 20000/40000/200000 become 20000 alone); everything else is kept.
    """
    _choice("dataset", dataset, DATASETS)
    n_token = DATASETS[dataset]
    return replace(cfg, dataset=dataset, n_token=n_token, cutoffs=tuple(c for c in cfg.cutoffs if c < n_token))


# ---- Table 1: copy memory ------------------------------------------------------------------------

@dataclass(frozen=True)
class CopyConfig:
    """One row of Table 1. The models are small enough (14-16K parameters) to run at the paper's size
    at every preset; the presets change the task's length T and the training budget instead."""

    model: str  # 'deq-transformer' (deq.models.copy_memory) or a baseline of baselines.copy_memory ('tcn', ...)
    paper_params: int  # parameters as printed in Table 1
    paper_loss: float  # test cross-entropy as printed in Table 1 (T = 400)


COPY_CONFIGS: dict[str, CopyConfig] = {
    "copy-deq-transformer": CopyConfig("deq-transformer", 14_000, 3.5e-6),
    "copy-tcn": CopyConfig("tcn", 16_000, 2.7e-5),
    "copy-lstm": CopyConfig("lstm", 14_000, 0.0501),
    "copy-gru": CopyConfig("gru", 14_000, 0.0491),
}
