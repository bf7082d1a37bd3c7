"""The DEQ-Transformer cell: one Transformer-XL layer f(z; u) with the input injected into its QKV.

Reads top-down: relative position embedding -> rel_shift -> attention -> feed-forward -> the cell.
The cell implements :class:`deq.models.cell.Cell`; its memory is ``(z_mem, u_mem)``, the last
``mem_len`` equilibrium states (B, M, d_model) and injections (B, M, 3*n_head*d_head) of the
previous segment, detached.

    u      = inject(x)                                           # Conv1x1 d_embed -> 3*H*Dh
    heads  = qkv_net([z_mem; z]) + [u_mem; u]                    # injection added to Q, K, V
    r      = r_net(drop_pos(sinusoids))                          # relative positions, dropped channels
    z'     = LN(z + drop(o_net(attn(heads, r))))                 # post-LN, no affine (the paper's)
    f(z)   = LN(z' + drop(ff2(drop(relu(ff1(z'))))))

Checked against the paper-time official code (locuslab/deq v1, ``DEQModel/models/transformers/
deq_transformer.py``, commit 3fba434): the same dropout sites and mask shapes (attention output,
after the ReLU and after ff2: one mask per sample and channel, shared over time; the sinusoids: one
mask per channel for the whole batch), an o_net with a bias, and its initialisation (below).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .cell import Memory
from .cell_configs import TransformerCellConfig
from .layers import VariationalDropout, weight_normed



def relative_position_embedding(klen: int, d: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """Sinusoids for distances klen-1, ..., 1, 0 (row p is distance klen-1-p), as Transformer-XL: (klen, d)."""
    pos_seq = torch.arange(klen - 1, -1, -1.0, dtype=dtype, device=device)  # (K,)
    inv_freq = 1 / (10000 ** (torch.arange(0.0, d, 2.0, dtype=dtype, device=device) / d))  # (ceil(d/2),)
    sinusoid = torch.outer(pos_seq, inv_freq)  # (K, ceil(d/2))
    return torch.cat([sinusoid.sin(), sinusoid.cos()], dim=-1)[:, :d]  # (K, d)


def rel_shift(x: torch.Tensor) -> torch.Tensor:
    """Transformer-XL's zero-pad trick: out[..., i, j] = x[..., i, j + T-1-i] (B, H, T, K) -> same.

    With column p of x holding distance K-1-p, column j of the result holds distance i + M - j
    (M = K - T), the distance from query i (absolute position i + M) to key j. Entries with
    j > i + M are garbage and must be masked.
    """
    *lead, T, K = x.shape
    x_padded = F.pad(x, (1, 0))  # (B, H, T, K+1)
    x_padded = x_padded.view(*lead, K + 1, T)  # (B, H, K+1, T)
    return x_padded[..., 1:, :].reshape(*lead, T, K)  # (B, H, T, K)


def _linear(d_in: int, d_out: int, bias: bool, cfg: TransformerCellConfig) -> nn.Linear:
    """A map inside f, initialised as the official code's ends up (v1 ``train_transformer.py``
    ``weights_init``): zero bias; with weight norm, torch's default weight, U(+-1/sqrt(d_in)) (std
    1/sqrt(3 d_in): the official N(0, 0.01) lands in the computed weight, which weight norm's reset
    overwrites before the first forward); without it, N(0, init_std)."""
    lin = nn.Linear(d_in, d_out, bias=bias)
    if bias:
        nn.init.zeros_(lin.bias)
    if cfg.weight_norm:
        return weight_normed(lin)  # g = ||v|| per output row, so w = v: the default init exactly
    nn.init.normal_(lin.weight, 0.0, cfg.init_std)
    return lin


class RelMultiHeadAttention(nn.Module):
    """Transformer-XL relative-position attention, with the injection added to the QKV projection."""

    def __init__(self, cfg: TransformerCellConfig):
        super().__init__()
        H, Dh = cfg.n_head, cfg.d_head
        self.n_head, self.d_head, self.scale = H, Dh, 1 / math.sqrt(Dh)
        self.qkv_net = _linear(cfg.d_model, 3 * H * Dh, bias=False, cfg=cfg)  # inject's bias stands in
        self.r_net = _linear(cfg.d_model, H * Dh, bias=False, cfg=cfg)
        self.o_net = _linear(H * Dh, cfg.d_model, bias=True, cfg=cfg)  # official Conv1d default: a bias
        # Transformer-XL initialises the content and position biases like the weights.
        self.r_w_bias = nn.Parameter(torch.randn(H, Dh) * cfg.init_std)  # u in Dai et al. (content)
        self.r_r_bias = nn.Parameter(torch.randn(H, Dh) * cfg.init_std)  # v in Dai et al. (position)
        self.drop_pos = VariationalDropout(cfg.dropout, shared=(0, 1))  # (1, 1, d_model): the official (1, d, 1)

    def forward(self, h: torch.Tensor, u: torch.Tensor, T: int) -> torch.Tensor:
        """h: [z_mem; z] (B, K, d_model), u: [u_mem; u] (B, K, 3*H*Dh) -> (B, T, d_model), K = M + T."""
        B, K, _ = h.shape
        M, H, Dh = K - T, self.n_head, self.d_head
        w_heads = self.qkv_net(h) + u  # (B, K, 3*H*Dh)
        q, k, v = w_heads.chunk(3, dim=-1)  # each (B, K, H*Dh)
        q = q[:, -T:].view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh): queries for this segment only
        k = k.view(B, K, H, Dh).transpose(1, 2)  # (B, H, K, Dh)
        v = v.view(B, K, H, Dh).transpose(1, 2)  # (B, H, K, Dh)
        pos = self.drop_pos(relative_position_embedding(K, h.size(-1), h.dtype, h.device)[None])  # (1, K, d)
        r = self.r_net(pos[0]).view(K, H, Dh).transpose(0, 1)  # (H, K, Dh)

        ac = (q + self.r_w_bias[:, None]) @ k.transpose(-1, -2)  # (B, H, T, K) content terms
        bd = rel_shift((q + self.r_r_bias[:, None]) @ r.transpose(-1, -2))  # (B, H, T, K) position
        score = (ac + bd) * self.scale  # (B, H, T, K)
        future = torch.ones(T, K, dtype=torch.bool, device=h.device).triu(diagonal=1 + M)  # j > i + M
        att = score.masked_fill(future, float("-inf")).softmax(dim=-1)  # (B, H, T, K)
        y = (att @ v).transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, H*Dh)
        return self.o_net(y)  # (B, T, d_model)


class FeedForward(nn.Module):
    """Position-wise Linear(d_model, d_inner) -> ReLU -> dropout -> Linear(d_inner, d_model).

    The dropout after the ReLU is the official ``drop1`` (v1 ``WeightSharePositionwiseFF``): one
    (B, 1, d_inner) mask per step, drawn by :meth:`reset_dropout`.
    """

    def __init__(self, cfg: TransformerCellConfig):
        super().__init__()
        self.fc = _linear(cfg.d_model, cfg.d_inner, bias=True, cfg=cfg)
        self.drop_inner = VariationalDropout(cfg.dropout)
        self.proj = _linear(cfg.d_inner, cfg.d_model, bias=True, cfg=cfg)

    def reset_dropout(self, z: torch.Tensor) -> None:
        self.drop_inner.reset(z.new_empty(z.size(0), 1, self.fc.out_features))  # mask (B, 1, d_inner)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.drop_inner(F.relu(self.fc(x))))  # (B, T, d_model)


class TransformerCell(nn.Module):
    """f(z; u, memory) of the DEQ-Transformer; see :class:`deq.models.cell.Cell` for the protocol.

    Weight norm (cfg.weight_norm) is on qkv_net, r_net, o_net and both FF linears, i.e. on every
    map inside f, as in the official code; the inject linear is plain, since it runs once per call
    and is outside the map whose fixed point is sought.
    """

    def __init__(self, cfg: TransformerCellConfig):
        super().__init__()
        self.cfg = cfg
        self.d_state = self.d_out = cfg.d_model
        d_qkv = 3 * cfg.n_head * cfg.d_head
        self.inject_net = nn.Linear(cfg.embed_width, d_qkv)  # the paper's Conv1x1, d -> 3d
        nn.init.normal_(self.inject_net.weight, 0.0, cfg.init_std)
        nn.init.zeros_(self.inject_net.bias)
        self.attn = RelMultiHeadAttention(cfg)
        self.ff = FeedForward(cfg)
        self.ln_attn = nn.LayerNorm(cfg.d_model, elementwise_affine=False)
        self.ln_ff = nn.LayerNorm(cfg.d_model, elementwise_affine=False)
        self.drop_attn = VariationalDropout(cfg.dropout)
        self.drop_ff = VariationalDropout(cfg.dropout)

    def inject(self, x: torch.Tensor, memory: Memory | None) -> torch.Tensor:
        """(B, T, d_embed) -> (B, T, 3*H*Dh); memory unused (it already holds past injections)."""
        return self.inject_net(x)

    def reset_dropout(self, z: torch.Tensor) -> None:
        self.drop_attn.reset(z)  # masks (B, 1, d_model)
        self.drop_ff.reset(z)
        self.ff.reset_dropout(z)  # (B, 1, d_inner)
        self.attn.drop_pos.reset(z[:1, :1])  # (1, 1, d_model)

    def init_state(self, injection: torch.Tensor) -> torch.Tensor:
        B, T, _ = injection.shape
        return injection.new_zeros(B, T, self.cfg.d_model)  # (B, T, d_model)

    def forward(self, z: torch.Tensor, injection: torch.Tensor, memory: Memory | None) -> torch.Tensor:
        """f(z): (B, T, d_model) -> (B, T, d_model), attending over [memory; z] causally."""
        z_mem, u_mem = memory if memory is not None else (z[:, :0], injection[:, :0])  # (B, M, .)
        T = z.size(1)
        u = torch.cat([u_mem, injection], dim=1)  # (B, M+T, 3*H*Dh)
        if self.cfg.pre_lnorm:
            z = z + self.drop_attn(self.attn(self.ln_attn(torch.cat([z_mem, z], dim=1)), u, T))
            return z + self.drop_ff(self.ff(self.ln_ff(z)))
        z = self.ln_attn(z + self.drop_attn(self.attn(torch.cat([z_mem, z], dim=1), u, T)))
        return self.ln_ff(z + self.drop_ff(self.ff(z)))  # (B, T, d_model)

    def next_memory(self, z: torch.Tensor, injection: torch.Tensor, x: torch.Tensor,
                    memory: Memory | None, mem_len: int, detach: bool = True) -> Memory:
        """The last mem_len rows of [z_mem; z] and [u_mem; injection]: (B, <=mem_len, .), detached unless
        ``detach=False`` (a chunk's memory within a segment, through which gradients flow)."""
        if not isinstance(mem_len, int) or mem_len < 0:
            raise ValueError(f"mem_len must be a non-negative int, got {mem_len=}")
        z_mem, u_mem = memory if memory is not None else (z[:, :0], injection[:, :0])
        z_all = torch.cat([z_mem, z], dim=1)  # (B, M+T, d_model)
        u_all = torch.cat([u_mem, injection], dim=1)  # (B, M+T, 3*H*Dh)
        if detach:
            z_all, u_all = z_all.detach(), u_all.detach()
        start = max(0, z_all.size(1) - mem_len)  # not [-mem_len:], which keeps everything at 0
        return z_all[:, start:], u_all[:, start:]

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        return z  # (B, T, d_model)
