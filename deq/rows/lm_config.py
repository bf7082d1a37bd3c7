"""The type of one word-level row of the paper (Tables 2 and 3): :class:`LMConfig`, validated on creation.

An :class:`LMConfig` holds everything needed to build one row: the dataset's vocabulary, the cell
(one :class:`TransformerCellConfig` or :class:`TrellisCellConfig`), the driver that runs it (DEQ,
weight-tied or untied stack), the adaptive embedding/softmax and the dropouts, plus the paper's
numbers for the row and a ``derivation`` saying where every setting came from.

The type has a module of its own because two modules need it: the row data
(:mod:`deq.rows.paper_configs`) and the registry that serves those rows (:mod:`deq.rows.configs`,
where the rest of the project imports :class:`LMConfig` from). Defined in the registry, it made the
rows import the registry while the registry imported the rows: an import cycle.
"""

from __future__ import annotations

from dataclasses import dataclass

from deq.data.download import VOCAB_SIZES
from deq.models.cell_configs import TransformerCellConfig, TrellisCellConfig
from deq.presets import PRESETS
from deq.settings import SolverSettings

__all__ = ["DATASETS", "DRIVERS", "FAMILIES", "PRESETS", "LMConfig"]

# The corpora a row can read, name -> vocabulary size. WikiText-2 stands in for WikiText-103 at small presets.
DATASETS = VOCAB_SIZES
FAMILIES = ("transformer", "trellis")
DRIVERS = ("deq", "weight_tied", "untied")
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
