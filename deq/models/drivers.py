"""The DEQ driver: solve a cell to equilibrium, one segment at a time.

The explicit drivers of the same cells (weight-tied and untied stacks) are in ``baselines/``.
All drivers return a :class:`DriverOutput` and carry the segment memory the same way, so the
language-model wrapper can hold any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

import deq
from deq.models.cell import Cell, Memory
from deq.models.layers import weights_computed_once
from deq.settings import SolverSettings


class ChunkedInfo:
    """The :class:`deq.EquilibriumInfo` of a segment solved in chunks, read like one: ``forward`` and
    ``backward`` put the chunks' solves side by side (:meth:`deq.SolverStats.side_by_side`); ``chunks``
    keeps each. ``backward`` is None until every chunk's backward has run."""

    def __init__(self, chunks: list):
        self.chunks, self.backward_mode = chunks, chunks[0].backward_mode

    @property
    def forward(self) -> deq.SolverStats:
        return deq.SolverStats.side_by_side([info.forward for info in self.chunks])

    @property
    def backward(self) -> deq.SolverStats | None:
        parts = [info.backward for info in self.chunks]
        return None if any(p is None for p in parts) else deq.SolverStats.side_by_side(parts)


@dataclass
class DriverOutput:
    h: torch.Tensor  # (B, T, d_out) what the decoder sees
    z: torch.Tensor  # (B, T, d_state) the final state (z* for the DEQ)
    memory: Memory  # the next segment's memory (detached)
    info: object = None  # deq.EquilibriumInfo for the DEQ; per-layer residuals for explicit drivers
    aux: list[torch.Tensor] = field(default_factory=list)  # intermediate readouts (auxiliary losses)


class DEQDriver(nn.Module):
    """z* = f(z*; x) per segment with ``deq.equilibrium``; training and evaluation settings differ."""

    def __init__(self, cell: Cell, settings: SolverSettings, mem_len: int = 0):
        super().__init__()
        self.cell, self.settings, self.mem_len = cell, settings, mem_len
        # When set, the same parameters run as a weight-tied explicit stack of this depth instead of
        # a solve (the paper's pretraining); the language model sets it for its first steps.
        self.explicit_depth: int | None = None

    def forward(self, x: torch.Tensor, memory: Memory | None = None, settings: SolverSettings | None = None,
                mem_len: int | None = None) -> DriverOutput:
        """x: (B, T, d_embed) embeddings of one segment; memory: the previous segment's, or None.

        ``settings`` and ``mem_len``, where given, replace the driver's own for this call only (evaluation
        tries other tolerances, caps or memory lengths on a trained model without changing it)."""
        s = settings or self.settings
        solve = s.equilibrium_args(self.training)
        if self.explicit_depth is not None:
            solve["max_iter"], solve["backward"] = self.explicit_depth, "unrolled"
        with weights_computed_once(self.cell):  # weight norm once per call, not per iteration
            injection = self.cell.inject(x, memory)
            z0 = self.cell.init_state(injection)
            self.cell.reset_dropout(z0)
            T = x.size(1)
            chunk = s.subseq_len if s.subseq_len and self.explicit_depth is None else T
            zs, infos, chunk_memory = [], [], memory
            for start in range(0, T, chunk):
                part = slice(start, start + chunk)
                z, info = deq.equilibrium(
                    lambda z, u=injection[:, part], m=chunk_memory: self.cell(z, u, m), z0[:, part], **solve)
                zs.append(z)
                infos.append(info)
                if start + chunk < T:  # the next chunk attends to this one (graph kept: gradients cross)
                    chunk_memory = self.cell.next_memory(z, injection[:, part], x[:, part], chunk_memory, chunk,
                                                         detach=False)
            z = zs[0] if len(zs) == 1 else torch.cat(zs, dim=1)
            info = infos[0] if len(infos) == 1 else ChunkedInfo(infos)
            h = self.cell.readout(z)
        next_memory = self.cell.next_memory(z.detach(), injection.detach(), x.detach(), memory,
                                            self.mem_len if mem_len is None else mem_len)
        return DriverOutput(h, z, next_memory, info)
