"""A transformer-style cell f(z; u) for benchmarking solvers (the paper's DEQ-Transformer shape).

z' = LN(z + Attn(z; u)),  f(z) = LN(z' + FF(z')), with the injection u added to the QKV
projection and causal softmax attention. It stands in for the model cell here so that the solver
benchmark needs nothing from the models package; weights are drawn small (std ``init_std``) as at
the start of training.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F


class TransformerStyleCell(nn.Module):
    def __init__(self, d_model: int = 256, n_head: int = 4, d_inner: int = 1024, init_std: float = 0.05):
        super().__init__()
        self.n_head = n_head
        self.qkv = nn.Linear(d_model, 3 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)
        self.ff = nn.Sequential(nn.Linear(d_model, d_inner), nn.ReLU(), nn.Linear(d_inner, d_model))
        self.ln1 = nn.LayerNorm(d_model, elementwise_affine=False)
        self.ln2 = nn.LayerNorm(d_model, elementwise_affine=False)
        for p in self.parameters():
            nn.init.normal_(p, std=init_std)

    def attention(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        B, T, D = z.shape
        q, k, v = (self.qkv(z) + u).view(B, T, 3, self.n_head, D // self.n_head).permute(2, 0, 3, 1, 4)  # (B, nh, T, hs)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)  # (B, nh, T, hs)
        return self.out(y.transpose(1, 2).reshape(B, T, D))

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """z: (B, T, d) current state; u: (B, T, 3d) injection of the input; returns (B, T, d)."""
        z = self.ln1(z + self.attention(z, u))
        return self.ln2(z + self.ff(z))
