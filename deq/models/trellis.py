"""The DEQ-TrellisNet cell: one TrellisNet layer with LSTM gates, viewed as f(z; x).

TrellisNet is a temporal convolution whose weights are shared across depth and whose input is
injected at every level; the DEQ solves for its infinite-depth limit. With the state
z = [h; c] (B, T, 2*d_hidden) and the embeddings x (B, T, d_embed):

    injection_t = W0 x_{t-1} + W1 x_t + b                        # once per segment, 4*d_hidden wide
    i, o, g, f  = split(U0 h~_{t-1} + U1 h~_t + injection_t)     # h~ = variational dropout of h
    c'_t = sigmoid(f) * c_{t-1} + sigmoid(i) * tanh(g)           # c_{t-1} from the current iterate
    h'_t = sigmoid(o) * tanh(c'_t)
    f(z) = [h'; c']

At the first position, t-1 is the previous segment's last step (x, h and c from ``memory``, zeros
for the first segment), so f(z)_t depends on z_{<=t}, x_{<=t} and the memory only.

Conventions taken from the official code (locuslab/deq v1 ``deq_trellisnet.py``, locuslab/trellisnet):
- h is ``h_size = nhid + nout`` wide and the decoder reads its *last* nout channels
  (``Z[:, h_size-nout:h_size]``). The official WT103 script (nhid 1500, nout 500) is therefore
  ``d_hidden=2000, d_out=500`` here; that width gives exactly the official model's 174,168,738
  parameters (d_hidden=1500 would give ~158M).
- One dropout mask per step on h, applied to the memory column h_{-1} as well (the official code
  drops the padded sequence).
- Gate order i, o, g, f; weight norm over all but the output channel of each conv (dim 0).
- Both convs have a bias (the recurrent one is redundant with the injection's, but it is a parameter
  the official model trains: without it the WT103 count is 8,000 short of the official 174,168,738).
- Init as the official one: the recurrent conv N(0, init_std) weights and bias (``WeightShareConv1d
  .init_weights``, 0.01), the injection conv torch's default (kaiming-uniform weights, uniform bias);
  weight norm keeps w = v at init.
Difference from it, on purpose (docs/fidelity.md): the official code zero-pads x at every segment
start; here x_{-1} is carried in the memory, so that cutting a stream into segments does not change f.
"""

from __future__ import annotations

import torch
from torch import nn

from .cell import Memory
from .cell_configs import TrellisCellConfig
from .layers import VariationalDropout, weight_normed

__all__ = ["TrellisCell"]



def _conv(d_in: int, d_out: int, cfg: TrellisCellConfig, init_std: float | None) -> nn.Module:
    """A kernel-2 conv with a bias: weight and bias ~ N(0, init_std), or torch's default init for None.

    Initialised before weight norm, so that weight_norm's g = ||v|| keeps w exactly as drawn.
    """
    conv = nn.Conv1d(d_in, d_out, cfg.kernel_size)
    if init_std is not None:
        nn.init.normal_(conv.weight, 0.0, init_std)
        nn.init.normal_(conv.bias, 0.0, init_std)
    return weight_normed(conv) if cfg.weight_norm else conv


def causal_conv(conv: nn.Module, seq: torch.Tensor) -> torch.Tensor:
    """Kernel-2 conv over time, no padding: (B, T+1, C) -> (B, T, C_out); output t sees seq[t], seq[t+1].

    With seq = [step -1; steps 0..T-1], output t is W[..., 0] s_{t-1} + W[..., 1] s_t (+ bias).
    """
    return conv(seq.transpose(1, 2)).transpose(1, 2)


class TrellisCell(nn.Module):
    """f(z; x) of DEQ-TrellisNet; implements :class:`deq.models.cell.Cell`.

    Memory is ``(x_last, h_last, c_last)``: the previous segment's last embedding (B, 1, d_embed)
    and last h, c (B, 1, d_hidden) each, detached.

    >>> cell = TrellisCell(TrellisCellConfig(d_embed=3, d_hidden=4, d_out=2, dropout=0.0))
    >>> x = torch.randn(2, 5, 3)
    >>> u = cell.inject(x, None)
    >>> z = cell(cell.init_state(u), u, None)
    >>> u.shape, z.shape, cell.readout(z).shape
    (torch.Size([2, 5, 16]), torch.Size([2, 5, 8]), torch.Size([2, 5, 2]))
    >>> [m.shape[1:] for m in cell.next_memory(z, u, x, None, mem_len=0)]
    [torch.Size([1, 3]), torch.Size([1, 4]), torch.Size([1, 4])]
    """

    def __init__(self, cfg: TrellisCellConfig):
        super().__init__()
        self.cfg = cfg
        self.d_state = 2 * cfg.d_hidden  # z = [h; c]
        self.d_out = cfg.d_out
        self.inject_conv = _conv(cfg.d_embed, 4 * cfg.d_hidden, cfg, init_std=None)  # W0, W1, b: torch default
        self.hidden_conv = _conv(cfg.d_hidden, 4 * cfg.d_hidden, cfg, init_std=cfg.init_std)  # U0, U1, b
        self.drop = VariationalDropout(cfg.dropout)

    def _memory(self, memory: Memory | None, like: torch.Tensor) -> Memory:
        """The previous segment's last (x, h, c), each (B, 1, ·); zeros for the first segment."""
        if memory is None:
            B, d_embed, d_hidden = like.shape[0], self.cfg.d_embed, self.cfg.d_hidden
            return like.new_zeros(B, 1, d_embed), like.new_zeros(B, 1, d_hidden), like.new_zeros(B, 1, d_hidden)
        if len(memory) != 3:
            raise ValueError(f"TrellisCell memory is (x_last, h_last, c_last), got {len(memory)} tensors")
        return memory

    def inject(self, x: torch.Tensor, memory: Memory | None) -> torch.Tensor:
        """Causal kernel-2 conv of the embeddings: x (B, T, d_embed) -> (B, T, 4*d_hidden)."""
        x_prev, _, _ = self._memory(memory, x)  # (B, 1, d_embed)
        return causal_conv(self.inject_conv, torch.cat([x_prev, x], dim=1))  # (B, T, 4*d_hidden)

    def reset_dropout(self, z: torch.Tensor) -> None:
        """Draw this step's mask on h: one (B, 1, d_hidden) mask shared by every time step and iterate."""
        self.drop.reset(z[..., : self.cfg.d_hidden])

    def init_state(self, injection: torch.Tensor) -> torch.Tensor:
        B, T, _ = injection.shape
        return injection.new_zeros(B, T, self.d_state)  # (B, T, 2*d_hidden)

    def forward(self, z: torch.Tensor, injection: torch.Tensor, memory: Memory | None) -> torch.Tensor:
        """f(z): (B, T, 2*d_hidden) -> (B, T, 2*d_hidden), given injection (B, T, 4*d_hidden)."""
        h, c = z.chunk(2, dim=-1)  # (B, T, d_hidden) each
        _, h_last, c_last = self._memory(memory, z)  # (B, 1, d_hidden) each
        h_seq = self.drop(torch.cat([h_last, h], dim=1))  # (B, T+1, d_hidden): h_{-1}, h_0 .. h_{T-1}
        pre = injection + causal_conv(self.hidden_conv, h_seq)  # (B, T, 4*d_hidden)
        i, o, g, f = pre.chunk(4, dim=-1)  # (B, T, d_hidden) each
        c_prev = torch.cat([c_last, c[:, :-1]], dim=1)  # c_{t-1}: (B, T, d_hidden)
        c_new = torch.sigmoid(f) * c_prev + torch.sigmoid(i) * torch.tanh(g)
        h_new = torch.sigmoid(o) * torch.tanh(c_new)
        return torch.cat([h_new, c_new], dim=-1)  # (B, T, 2*d_hidden)

    def next_memory(self, z: torch.Tensor, injection: torch.Tensor, x: torch.Tensor,
                    memory: Memory | None, mem_len: int, detach: bool = True) -> Memory:
        """(x_last (B, 1, d_embed), h_last, c_last (B, 1, d_hidden)) from the segment's final step.

        Detached and copied, so the segment's graph and full-length tensors can be freed; with
        ``detach=False`` (a chunk's memory within a segment) views that keep the graph. ``mem_len``
        is ignored: a kernel-2 TrellisNet looks back exactly one step.
        """
        if not detach:
            return (x[:, -1:], *z[:, -1:].chunk(2, dim=-1))
        h_last, c_last = z[:, -1:].detach().chunk(2, dim=-1)  # (B, 1, d_hidden) each
        return x[:, -1:].detach().clone(), h_last.clone(), c_last.clone()

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """The last d_out channels of h (the official ``Z[:, h_size-nout:h_size]``): (B, T, d_out)."""
        d_hidden = self.cfg.d_hidden
        return z[..., d_hidden - self.cfg.d_out : d_hidden]
