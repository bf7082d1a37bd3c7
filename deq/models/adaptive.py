"""Adaptive input embeddings and a tied, projected adaptive softmax (Baevski & Auli; Grave et al.).

The paper's word-level models tie the input embedding to the output softmax: the DEQ-Transformer
with adaptive embeddings (cutoffs 20000/40000/200000, div_val 4, tied) and the DEQ-TrellisNet with a
tied "split" softmax (cutoffs 2800/20000/76000, div_val 1). ``torch.nn.AdaptiveLogSoftmaxWithLoss``
owns its own head and tail weights and cannot share them with an input embedding, so it does not fit
these settings; this module implements the Transformer-XL form instead, where cluster i of the
vocabulary has an embedding of width d_embed // div_val**i and a projection to d_proj that the input
and output sides share. With no cutoffs both reduce to a plain tied embedding and softmax.

As the paper-time official code (locuslab/deq v1 ``DEQModel/utils/adaptive_embedding.py`` and
``proj_adaptive_softmax.py``, with ``tie_projs = [False] + [True] * len(cutoffs)`` from
``train_transformer.py``): with div_val > 1 every cluster has a projection, the head cluster too even
where its width equals d_proj (a d x d map), and the softmax's head projection is its own parameter
(untied) while the tail clusters share the embedding's. With div_val 1 a projection exists only where
d_embed differs from d_proj (no row of the paper has that).

Vocabulary order matters: ids must be sorted by descending frequency (the data stage does this), so
that the head cluster holds the frequent words.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


def _bounds(n_token: int, cutoffs: tuple[int, ...]) -> list[int]:
    if list(cutoffs) != sorted(set(cutoffs)) or (cutoffs and (cutoffs[0] <= 0 or cutoffs[-1] >= n_token)):
        raise ValueError(f"cutoffs must be increasing and inside (0, {n_token}), got {cutoffs=}")
    return [0, *cutoffs, n_token]


class AdaptiveEmbedding(nn.Module):
    """Token ids (B, T) -> embeddings (B, T, d_proj), scaled by sqrt(d_proj) as in Transformer-XL."""

    def __init__(self, n_token: int, d_embed: int, d_proj: int, cutoffs: tuple[int, ...] = (), div_val: int = 1,
                 init_std: float = 0.01, init_range: float | None = None):
        """Tables ~ N(0, init_std), or U(-init_range, init_range) where given (the official DEQ-TrellisNet's
        0.1); projections ~ N(0, init_std) (the official ``proj_init_std``)."""
        super().__init__()
        self.bounds, self.d_proj, self.init_std = _bounds(n_token, cutoffs), d_proj, init_std
        widths = [d_embed // div_val**i for i in range(len(self.bounds) - 1)]
        self.layers = nn.ModuleList(nn.Embedding(hi - lo, w) for lo, hi, w in zip(self.bounds, self.bounds[1:], widths))
        # A projection (d_proj, w_i) for every cluster when div_val > 1, else only where w_i != d_proj.
        self.projs = nn.ParameterDict({str(i): nn.Parameter(torch.randn(d_proj, w) * init_std)
                                       for i, w in enumerate(widths) if w != d_proj or div_val > 1})
        for layer in self.layers:
            if init_range is None:
                nn.init.normal_(layer.weight, std=init_std)
            else:
                nn.init.uniform_(layer.weight, -init_range, init_range)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        out = torch.zeros(*tokens.shape, self.d_proj, dtype=self.projs_dtype, device=tokens.device)
        for i, (lo, hi) in enumerate(zip(self.bounds, self.bounds[1:])):
            mask = (tokens >= lo) & (tokens < hi)
            if mask.any():
                out[mask] = self.project(self.layers[i](tokens[mask] - lo), i)  # (N, w_i) -> (N, d_proj)
        return out * self.d_proj**0.5

    def project(self, emb: torch.Tensor, i: int) -> torch.Tensor:
        """Cluster i's embeddings (N, w_i) -> (N, d_proj)."""
        return F.linear(emb, self.projs[str(i)]) if str(i) in self.projs else emb

    def unproject(self, h: torch.Tensor, i: int, proj: torch.Tensor | None = None) -> torch.Tensor:
        """Hidden states (N, d_proj) -> cluster i's width (N, w_i), with the same (tied) projection or ``proj``."""
        proj = self.projs[str(i)] if proj is None and str(i) in self.projs else proj
        return h if proj is None else F.linear(h, proj.t())

    @property
    def projs_dtype(self) -> torch.dtype:
        return self.layers[0].weight.dtype


class TiedAdaptiveLogSoftmax(nn.Module):
    """-log p(target | h) for h (N, d_proj), sharing weights and projections with an AdaptiveEmbedding.

    The head scores the first cluster's words plus one logit per tail cluster; a tail word's
    log-probability is its cluster's head log-probability plus its log-probability within the cluster.
    This module's own parameters are the output biases, the cluster logits and, where the embedding's
    head cluster has a projection, the head's output projection (untied, as the official ``tie_projs[0]``).
    """

    def __init__(self, embedding: AdaptiveEmbedding):
        super().__init__()
        self.embedding = embedding  # shared: its weights are the output weights
        head = embedding.projs["0"] if "0" in embedding.projs else None
        self.head_proj = None if head is None else nn.Parameter(torch.randn_like(head) * embedding.init_std)
        n_clusters = len(embedding.bounds) - 2
        self.cluster_weight = nn.Parameter(torch.zeros(n_clusters, embedding.d_proj))
        self.cluster_bias = nn.Parameter(torch.zeros(n_clusters))
        self.biases = nn.ParameterList(nn.Parameter(torch.zeros(hi - lo))
                                       for lo, hi in zip(embedding.bounds, embedding.bounds[1:]))

    def _logits(self, h: torch.Tensor, i: int) -> torch.Tensor:
        h_i = self.embedding.unproject(h, i, self.head_proj if i == 0 else None)  # (N, w_i)
        return F.linear(h_i, self.embedding.layers[i].weight, self.biases[i])  # (N, size of cluster i)

    def forward(self, h: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """h: (N, d_proj), target: (N,) -> negative log-likelihood (N,)."""
        bounds = self.embedding.bounds
        head = self._logits(h, 0)
        if len(bounds) > 2:
            head = torch.cat([head, F.linear(h, self.cluster_weight, self.cluster_bias)], dim=1)
        head_logprob = head.log_softmax(dim=1)  # (N, shortlist + clusters)
        nll = torch.zeros_like(target, dtype=h.dtype)
        for i, (lo, hi) in enumerate(zip(bounds, bounds[1:])):
            mask = (target >= lo) & (target < hi)
            if not mask.any():
                continue
            if i == 0:
                nll[mask] = -head_logprob[mask].gather(1, target[mask, None]).squeeze(1)
            else:
                tail = self._logits(h[mask], i).log_softmax(dim=1)
                within = tail.gather(1, (target[mask] - lo)[:, None]).squeeze(1)
                nll[mask] = -(head_logprob[mask, bounds[1] - bounds[0] + i - 1] + within)
        return nll

    def log_prob(self, h: torch.Tensor) -> torch.Tensor:
        """Full log-distribution (N, n_token); for tests and small vocabularies."""
        bounds = self.embedding.bounds
        head = self._logits(h, 0)
        if len(bounds) == 2:
            return head.log_softmax(dim=1)
        head = torch.cat([head, F.linear(h, self.cluster_weight, self.cluster_bias)], dim=1).log_softmax(dim=1)
        parts = [head[:, : bounds[1]]]
        for i in range(1, len(bounds) - 1):
            parts.append(head[:, bounds[1] + i - 1, None] + self._logits(h, i).log_softmax(dim=1))
        return torch.cat(parts, dim=1)
