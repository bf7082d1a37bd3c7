"""Explicit drivers of the DEQ cells: the weight-tied stack and the untied stack.

Both take the same cells as the DEQ (``deq.models``) and return the same
:class:`deq.models.drivers.DriverOutput`; this module never defines a cell.

- :class:`WeightTiedDriver`: one cell applied ``n_layer`` times from z = 0 with ordinary backprop
  (optionally with ``torch.utils.checkpoint`` per layer, and, in training, auxiliary readouts every
  ``aux_every`` layers for TrellisNet's auxiliary loss). Its memory is the final state, as for the DEQ.
- :class:`UntiedStackDriver`: ``n_layer`` independent cells, Transformer-XL style: layer l's memory
  holds the previous segment's inputs to layer l, and every layer receives its own input injection.
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from deq.layer import EquilibriumInfo
from deq.models.cell import Cell, Memory
from deq.models.drivers import DriverOutput
from deq.models.layers import weights_computed_once
from deq.solvers.stats import Trace


class WeightTiedDriver(nn.Module):
    """z_{l+1} = f(z_l; x), l = 0 .. n_layer-1, from z_0 = 0.

    ``info`` is a :class:`deq.EquilibriumInfo` whose ``forward`` record traces ||f(z_l) - z_l|| per
    layer, as for a solver: how far the explicit stack is from a fixed point (Figure 2). Its
    ``converged`` flags compare the relative residual with ``report_tol``, for reporting only.
    """

    def __init__(self, cell: Cell, n_layer: int, mem_len: int = 0, checkpoint: bool = False, aux_every: int = 0,
                 report_tol: float = 1e-3):
        super().__init__()
        if n_layer < 1:
            raise ValueError(f"n_layer must be >= 1, got {n_layer=}")
        self.cell, self.n_layer, self.mem_len = cell, n_layer, mem_len
        self.checkpoint, self.aux_every, self.report_tol = checkpoint, aux_every, report_tol

    def forward(self, x: torch.Tensor, memory: Memory | None = None, n_layer: int | None = None,
                mem_len: int | None = None) -> DriverOutput:
        """``n_layer`` and ``mem_len``, where given, replace the driver's own for this call only."""
        n_layer = self.n_layer if n_layer is None else n_layer
        # Checkpointed layers recompute in the backward, outside any weight cache, so with
        # checkpointing each layer computes its weight-norm weights itself (a small cost per layer).
        with nullcontext() if self.checkpoint else weights_computed_once(self.cell):
            injection = self.cell.inject(x, memory)
            z = self.cell.init_state(injection)
            self.cell.reset_dropout(z)
            trace, aux = Trace("weight_tied", self.cell, z.detach().flatten(1), self.report_tol, "rel"), []
            for layer in range(1, n_layer + 1):
                if self.checkpoint and torch.is_grad_enabled():
                    fz = checkpoint(self.cell, z, injection, memory, use_reentrant=False)
                else:
                    fz = self.cell(z, injection, memory)
                trace.observe(z, fz)
                z = fz
                if self.training and self.aux_every and layer % self.aux_every == 0 and layer < n_layer:
                    aux.append(self.cell.readout(z))
            h = self.cell.readout(z)
        next_memory = self.cell.next_memory(z.detach(), injection.detach(), x.detach(), memory,
                                            self.mem_len if mem_len is None else mem_len)
        return DriverOutput(h, z, next_memory, EquilibriumInfo(trace.finish()[1], "weight_tied"), aux)


class UntiedStackDriver(nn.Module):
    """n_layer independent cells applied in turn; memory is a tuple of per-layer memories."""

    def __init__(self, cells: list[Cell], mem_len: int = 0):
        super().__init__()
        if not cells:
            raise ValueError("UntiedStackDriver needs at least one cell, got an empty list")
        self.cells, self.mem_len = nn.ModuleList(cells), mem_len

    def forward(self, x: torch.Tensor, memory: tuple[Memory, ...] | None = None,
                mem_len: int | None = None) -> DriverOutput:
        memory, mem_len = memory or (None,) * len(self.cells), self.mem_len if mem_len is None else mem_len
        next_memory = []
        with weights_computed_once(self.cells):
            z = None
            for cell, layer_memory in zip(self.cells, memory):
                injection = cell.inject(x, layer_memory)
                z = cell.init_state(injection) if z is None else z
                cell.reset_dropout(z)
                next_memory.append(cell.next_memory(z.detach(), injection.detach(), x.detach(), layer_memory,
                                                    mem_len))
                z = cell(z, injection, layer_memory)
            h = self.cells[-1].readout(z)
        return DriverOutput(h, z, tuple(next_memory), None)
