"""From a row of the registry to a model: the row's cell(s), its driver (the DEQ's or an explicit one
from :mod:`baselines`) and the language model around them; and Table 1's copy-memory models.

The registry (:mod:`deq.rows.configs`) is data and imports no torch; this module is where the rows meet
the code that runs them.
"""

from __future__ import annotations

from torch import nn

from baselines.copy_memory import PAPER_CONFIGS as COPY_BASELINES
from baselines.copy_memory import build_copy_memory_model
from baselines.drivers import UntiedStackDriver, WeightTiedDriver
from deq.models.copy_memory import DEQCopyModel
from deq.models.drivers import DEQDriver
from deq.models.lm import LanguageModel
from deq.models.transformer import TransformerCell
from deq.models.trellis import TrellisCell
from deq.rows.configs import COPY_CONFIGS, LMConfig

__all__ = ["build_cell", "build_copy_model", "build_model"]


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


def build_copy_model(name: str) -> nn.Module:
    """Table 1's row ``name`` (a key of :data:`~deq.rows.configs.COPY_CONFIGS`): token ids (B, L) -> logits
    (B, L, 10), fresh weights on every call."""
    model = COPY_CONFIGS[name].model
    return DEQCopyModel() if model == "deq-transformer" else build_copy_memory_model(COPY_BASELINES[model])
