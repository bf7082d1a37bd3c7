"""One typed config per word-level row of the paper (Tables 2 and 3), and the model it builds.

An :class:`LMConfig` holds everything needed to build one row: the dataset's vocabulary, the cell
(one :class:`TransformerCellConfig` or :class:`TrellisCellConfig`), the driver that runs it (DEQ,
weight-tied or untied stack), the adaptive embedding/softmax and the dropouts, plus the paper's
numbers for the row and a ``derivation`` saying where every setting came from. The registry
:data:`CONFIGS` (its data lives in :mod:`deq.models.paper_configs`) covers every row of Tables 2-3
that the paper trains itself; :func:`get_config` returns a row at a preset and :func:`build_model`
turns it into a :class:`~deq.models.lm.LanguageModel`.

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

import math
from dataclasses import dataclass, replace

from collections.abc import Callable

from torch import nn

from baselines.copy_memory import PAPER_CONFIGS as COPY_BASELINES
from baselines.copy_memory import build_copy_memory_model
from baselines.drivers import UntiedStackDriver, WeightTiedDriver
from deq.models.copy_memory import DEQCopyModel
from deq.models.drivers import DEQDriver, SolverSettings
from deq.models.lm import LanguageModel
from deq.models.transformer import TransformerCell, TransformerCellConfig
from deq.models.trellis import TrellisCell, TrellisCellConfig

__all__ = ["CONFIGS", "COPY_CONFIGS", "DATASETS", "DRIVERS", "FAMILIES", "PRESETS", "CopyConfig", "LMConfig",
           "build_model", "get_config", "on_dataset"]

# name -> vocabulary size (PAPER.md, Data). WikiText-2 stands in for WikiText-103 at small presets.
DATASETS = {"ptb": 10_000, "wikitext-2": 33_278, "wikitext-103": 267_735}
FAMILIES = ("transformer", "trellis")
DRIVERS = ("deq", "weight_tied", "untied")
PRESETS = ("smoke", "cpu", "paper")
_CELL_CONFIGS = {"transformer": TransformerCellConfig, "trellis": TrellisCellConfig}


def _choice(name: str, value: object, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {name} {value!r}; choose from {list(allowed)}")


def _positive_int(name: str, value: object, minimum: int = 1) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {name}={value!r}")


@dataclass(frozen=True)
class LMConfig:
    name: str  # registry key, e.g. 'wt103-deq-transformer-small'
    paper_table: int  # the paper's table holding the row: 2 (Penn Treebank) or 3 (WikiText-103)
    dataset: str  # 'ptb' or 'wikitext-103'
    n_token: int  # vocabulary size (PTB 10,000; WikiText-103 267,735)
    family: str  # 'transformer' or 'trellis'; must match the type of `cell`
    driver: str  # 'deq' (solve to equilibrium), 'weight_tied' (one cell n_layer times), 'untied' (n_layer cells)
    n_layer: int  # explicit depth; for a DEQ, the depth of its weight-tied pretraining stack
    cell: TransformerCellConfig | TrellisCellConfig  # the one f(z; x) of the row (every layer of it)
    d_embed: int  # width of the head cluster's embedding table; the model width d_model comes from the cell
    cutoffs: tuple[int, ...]  # adaptive embedding/softmax cluster bounds; () is a plain tied softmax
    div_val: int  # cluster i's embeddings are d_embed // div_val**i wide (1: all full width)
    mem_len: int  # states of the previous segment attended to (transformer); TrellisNet carries one step
    dropout_embed: float  # variational dropout on the embeddings entering the driver, in [0, 1)
    dropout_out: float  # variational dropout on the driver's output before the softmax, in [0, 1)
    paper_params: int  # total parameters as printed in the paper (rounded there), e.g. 24_000_000
    paper_nonembedding_params: int  # non-embedding parameters as printed in the paper
    paper_ppl: float  # test perplexity the paper reports
    paper_memory_gb: float  # training memory the paper reports (GB; seq 150, batch 15, embeddings excluded)
    derivation: str  # where each setting comes from: official script, TrellisNet/Transformer-XL, solved counts
    solver: SolverSettings | None = None  # how the DEQ solves and differentiates; None for explicit drivers
    checkpoint: bool = False  # weight-tied only: torch.utils.checkpoint per layer (recompute in the backward)
    aux_every: int = 0  # weight-tied only: an auxiliary readout every aux_every layers (0: none)
    aux_weight: float = 0.0  # training loss = loss + aux_weight * sum of the auxiliary losses (TrellisNet)
    pretrain_steps: int = 0  # DEQ only: steps run as the weight-tied n_layer stack before the solver
    count_note: str = ""  # why the measured parameter count is > 3% off the paper's ('' when it is not)
    official_params: int | None = None  # total the official script's model counts, where one was released
    preset: str = "paper"  # 'paper' as registered, or the shrunk 'smoke' / 'cpu' variant of the row

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty str, got name={self.name!r}")
        _choice("paper_table", self.paper_table, (2, 3))
        _choice("dataset", self.dataset, DATASETS)
        _choice("family", self.family, FAMILIES)
        _choice("driver", self.driver, DRIVERS)
        _choice("preset", self.preset, PRESETS)
        for name in ("n_token", "n_layer", "d_embed", "div_val"):
            _positive_int(name, getattr(self, name))
        for name in ("mem_len", "aux_every", "pretrain_steps"):
            _positive_int(name, getattr(self, name), minimum=0)
        bounds = (0, *self.cutoffs, self.n_token)
        if not isinstance(self.cutoffs, tuple) or any(lo >= hi for lo, hi in zip(bounds, bounds[1:])):
            raise ValueError(f"cutoffs must be an increasing tuple inside (0, n_token={self.n_token}), "
                             f"got cutoffs={self.cutoffs!r}")
        if not isinstance(self.cell, _CELL_CONFIGS[self.family]):
            raise ValueError(f"family {self.family!r} needs a {_CELL_CONFIGS[self.family].__name__}, "
                             f"got cell={type(self.cell).__name__}")
        self._check_widths()
        self._check_driver_options()
        for name in ("dropout_embed", "dropout_out"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"{name} must be in [0, 1), got {name}={getattr(self, name)!r}")
        if "|" in self.count_note:
            raise ValueError(f"count_note is a Markdown table cell and may not contain '|', got {self.count_note!r}")

    def _check_widths(self) -> None:
        """The driver reads and writes d_model, the width the embedding projects to."""
        cell = self.cell
        d_in = cell.embed_width if isinstance(cell, TransformerCellConfig) else cell.d_embed
        if d_in != self.d_model:
            raise ValueError(f"the cell must read the width it writes (the embedding's d_model), got input "
                             f"width {d_in} and output width {self.d_model} in {self.name!r}")
        if self.d_embed // self.div_val ** len(self.cutoffs) < 1:
            raise ValueError(f"d_embed={self.d_embed} leaves an empty cluster at div_val={self.div_val} with "
                             f"{len(self.cutoffs)} cutoffs; it must be >= {self.div_val ** len(self.cutoffs)}")

    def _check_driver_options(self) -> None:
        if (self.driver == "deq") != isinstance(self.solver, SolverSettings):
            raise ValueError(f"a 'deq' row needs SolverSettings and an explicit row none, got "
                             f"driver={self.driver!r}, solver={self.solver!r}")
        if self.driver != "weight_tied" and (self.checkpoint or self.aux_every):
            raise ValueError(f"checkpoint and aux_every belong to the 'weight_tied' driver, got "
                             f"driver={self.driver!r}, checkpoint={self.checkpoint!r}, aux_every={self.aux_every!r}")
        if (self.aux_every > 0) != (self.aux_weight > 0) or self.aux_weight < 0:
            raise ValueError(f"aux_every and aux_weight are set together, got aux_every={self.aux_every!r}, "
                             f"aux_weight={self.aux_weight!r}")
        if self.pretrain_steps and self.driver != "deq":
            raise ValueError(f"pretrain_steps belongs to a 'deq' row, got driver={self.driver!r}, "
                             f"pretrain_steps={self.pretrain_steps!r}")

    @property
    def d_model(self) -> int:
        """The width the driver reads and writes (the embedding's projection, the softmax's input)."""
        return self.cell.d_model if isinstance(self.cell, TransformerCellConfig) else self.cell.d_out

    @property
    def n_aux_readouts(self) -> int:
        """Auxiliary readouts per forward (layers aux_every, 2*aux_every, ... below n_layer)."""
        return (self.n_layer - 1) // self.aux_every if self.aux_every else 0


def build_cell(cfg: LMConfig) -> nn.Module:
    """A fresh cell of the row (each call draws new weights)."""
    return TransformerCell(cfg.cell) if cfg.family == "transformer" else TrellisCell(cfg.cell)


def build_model(cfg: LMConfig) -> LanguageModel:
    """The row's language model: embedding -> driver over the row's cell(s) -> tied adaptive softmax.

    Builds on the current default device: ``with torch.device("meta"): build_model(cfg)`` makes a
    paper-scale model without allocating its weights (for counting).
    """
    if cfg.driver == "deq":
        driver = DEQDriver(build_cell(cfg), cfg.solver, cfg.mem_len)
    elif cfg.driver == "weight_tied":
        driver = WeightTiedDriver(build_cell(cfg), cfg.n_layer, cfg.mem_len, cfg.checkpoint, cfg.aux_every)
    else:
        driver = UntiedStackDriver([build_cell(cfg) for _ in range(cfg.n_layer)], cfg.mem_len)
    # Per family, as the official models (v1 DEQModel/): the DEQ-TrellisNet's embedding U(-0.1, 0.1)
    # (DEQTrellisNetLM.init_weights) and channel-wise output dropout; the DEQ-Transformer's N(0, 0.01)
    # (train_transformer.py weights_init) and output dropout of whole positions.
    trellis = cfg.family == "trellis"
    return LanguageModel(cfg.n_token, cfg.d_embed, cfg.d_model, driver, cfg.cutoffs, cfg.div_val,
                         cfg.dropout_embed, cfg.dropout_out, cfg.cell.init_std,
                         embed_init_range=0.1 if trellis else None, drop_out_positions=not trellis)


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


def get_config(name: str, preset: str = "paper", code: str = "v1", width: int | None = None) -> LMConfig:
    """The registered row ``name`` at ``preset`` ('paper', 'smoke' or 'cpu'; rules in the module docstring),
    with the solver settings of official code ``code`` ('v1', the paper's, or 'v2'; see
    :func:`deq.models.paper_configs.with_code`). ``width`` (cpu preset only; default 128) is the width the
    500-wide rows get: the study's size sweep trains pairs at several widths."""
    from deq.models.paper_configs import CONFIGS, with_code  # see __getattr__ below

    _choice("config", name, CONFIGS)
    _choice("preset", preset, PRESETS)
    if width is not None and (preset != "cpu" or isinstance(width, bool) or not isinstance(width, int) or width < 8):
        raise ValueError(f"width is a cpu-preset setting, an int >= 8; got width={width!r} at preset {preset!r}")
    row = with_code(CONFIGS[name], code)
    if preset == "cpu":
        return _cpu(row, width or CPU_WIDTH)
    return {"paper": lambda c: c, "smoke": _smoke}[preset](row)


def on_dataset(cfg: LMConfig, dataset: str) -> LMConfig:
    """The row retargeted to another corpus: its vocabulary size, and the cutoffs that fit inside it.

    Used where a small preset trains on WikiText-2 in place of WikiText-103 (33,278 words, so the
    adaptive cutoffs 20000/40000/200000 become 20000 alone); everything else is kept.
    """
    _choice("dataset", dataset, DATASETS)
    n_token = DATASETS[dataset]
    return replace(cfg, dataset=dataset, n_token=n_token, cutoffs=tuple(c for c in cfg.cutoffs if c < n_token))


def __getattr__(name: str):
    # CONFIGS lives in paper_configs.py (it is long data, and its rows are LMConfigs, defined above);
    # loading it on first use keeps either module importable first.
    if name == "CONFIGS":
        from deq.models.paper_configs import CONFIGS

        return CONFIGS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


# ---- Table 1: copy memory ------------------------------------------------------------------------

@dataclass(frozen=True)
class CopyConfig:
    """One row of Table 1. The models are small enough (14-16K parameters) to run at the paper's size
    at every preset; the presets change the task's length T and the training budget instead."""

    build: Callable[[], nn.Module]  # builds the model: token ids (B, L) -> logits (B, L, 10)
    paper_params: int  # parameters as printed in Table 1
    paper_loss: float  # test cross-entropy as printed in Table 1 (T = 400)


COPY_CONFIGS: dict[str, CopyConfig] = {
    "copy-deq-transformer": CopyConfig(DEQCopyModel, 14_000, 3.5e-6),
    "copy-tcn": CopyConfig(lambda: build_copy_memory_model(COPY_BASELINES["tcn"]), 16_000, 2.7e-5),
    "copy-lstm": CopyConfig(lambda: build_copy_memory_model(COPY_BASELINES["lstm"]), 14_000, 0.0501),
    "copy-gru": CopyConfig(lambda: build_copy_memory_model(COPY_BASELINES["gru"]), 14_000, 0.0491),
}
