"""The language model: embedding -> driver (DEQ or explicit) -> tied adaptive softmax.

One wrapper for every word-level row of the paper. The driver is any of ``deq.models.drivers`` /
``baselines.drivers``; the segment memory is carried across calls by the caller (the training loop
hands back ``out.memory``), so evaluation over a whole stream keeps its context.

Pretraining (the paper's): for the first ``pretrain_steps`` a DEQ driver runs as the weight-tied
explicit stack of ``n_layer`` cells with ordinary backprop; :meth:`LanguageModel.set_pretraining`
switches it, and the same parameters then run as a DEQ.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from deq.models.adaptive import AdaptiveEmbedding, TiedAdaptiveLogSoftmax
from deq.models.drivers import DEQDriver, DriverOutput
from deq.models.layers import VariationalDropout


@dataclass
class LMOutput:
    loss: torch.Tensor  # scalar: mean negative log-likelihood over the segment's tokens
    nll: torch.Tensor  # (B, T) per-token negative log-likelihood
    aux_loss: torch.Tensor | None  # sum over auxiliary readouts of their mean NLL (TrellisNet), or None
    memory: object  # the next segment's memory
    info: object  # the driver's solver statistics


class LanguageModel(nn.Module):
    def __init__(self, n_token: int, d_embed: int, d_model: int, driver: nn.Module, cutoffs: tuple[int, ...] = (),
                 div_val: int = 1, dropout_embed: float = 0.0, dropout_out: float = 0.0, init_std: float = 0.01,
                 embed_init_range: float | None = None, drop_out_positions: bool = False):
        """``d_model`` is the width the driver reads (its cell's d_embed) and writes (d_out).

        Dropout on the embeddings draws one mask per sample and channel, shared over time; on the output,
        the same, or with ``drop_out_positions`` one per sample and position, shared over channels (whole
        positions dropped). The official code (v1 ``VariationalDropout`` draws its mask from ``x[:, :1]``)
        does the first on the DEQ-TrellisNet's (B, T, d) output and the second on the DEQ-Transformer's
        (B, d, T) one. Embedding tables ~ N(0, init_std), or U(+-embed_init_range) where given.
        """
        super().__init__()
        self.embedding = AdaptiveEmbedding(n_token, d_embed, d_model, cutoffs, div_val, init_std, embed_init_range)
        self.softmax = TiedAdaptiveLogSoftmax(self.embedding)
        self.driver = driver
        self.drop_embed = VariationalDropout(dropout_embed)
        self.drop_out = VariationalDropout(dropout_out, shared=(2,) if drop_out_positions else (1,))

    def set_pretraining(self, n_layer: int | None) -> None:
        """Run a DEQ driver as a weight-tied stack of ``n_layer`` cells (None: back to the solver)."""
        if not isinstance(self.driver, DEQDriver):
            raise TypeError(f"pretraining switches a DEQ driver, got {type(self.driver).__name__}")
        self.driver.explicit_depth = n_layer

    def forward(self, tokens: torch.Tensor, targets: torch.Tensor, memory=None, **driver_options) -> LMOutput:
        """tokens, targets: (B, T) int64 ids; memory: the previous segment's, or None. ``driver_options``
        go to the driver for this call (``settings`` of a DEQ, ``n_layer`` of a weight-tied stack, ``mem_len``)."""
        x = self.embedding(tokens)  # (B, T, d_model)
        self.drop_embed.reset(x)
        out: DriverOutput = self.driver(self.drop_embed(x), memory, **driver_options)
        self.drop_out.reset(out.h)
        nll = self._nll(self.drop_out(out.h), targets)
        aux = [self._nll(self.drop_out(h), targets).mean() for h in out.aux]
        return LMOutput(nll.mean(), nll, torch.stack(aux).sum() if aux else None, out.memory, out.info)

    def _nll(self, h: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        B, T, d = h.shape
        return self.softmax(h.reshape(B * T, d), targets.reshape(-1)).view(B, T)
