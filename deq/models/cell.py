"""What a cell is: the one f(z; x) of an architecture, shared by the DEQ and its explicit baselines.

A cell maps a segment's state z (B, T, d_state) to f(z), given the segment's input injection and
the memory of the previous segment. The DEQ driver solves z* = f(z*); the weight-tied baseline
applies f ``n_layer`` times from z = 0; the untied baseline stacks ``n_layer`` cells. None of them
knows what is inside a cell, and a cell knows nothing about solvers.

Per forward call (one segment, one training step), a driver does, in this order:

    injection = cell.inject(x, memory)      # once: everything that depends on the input alone
    cell.reset_dropout(z0)                  # once: this step's variational dropout masks
    z = ... cell(z, injection, memory) ...   # many times: the map whose fixed point is sought
    memory = cell.next_memory(z, injection, x, memory, mem_len)   # once, detached
    h = cell.readout(z)                      # what the decoder sees

``memory`` is ``None`` for the first segment, else the tuple of detached tensors the cell made.
Every tensor is batch-first; time is dim 1. Causality: f(z)_t depends on z_{<=t}, injection_{<=t}
and the memory only.
"""

from __future__ import annotations

from typing import Protocol

import torch

Memory = tuple[torch.Tensor, ...]


class Cell(Protocol):
    d_state: int  # channels of z
    d_out: int  # channels of readout(z)

    def inject(self, x: torch.Tensor, memory: Memory | None) -> torch.Tensor:
        """Input injection of the segment's embeddings x (B, T, d_embed); computed once per call."""

    def reset_dropout(self, z: torch.Tensor) -> None:
        """Draw this step's variational dropout masks (shaped after z (B, T, d_state)); no-op in eval."""

    def init_state(self, injection: torch.Tensor) -> torch.Tensor:
        """The starting point z0 = 0, (B, T, d_state)."""

    def __call__(self, z: torch.Tensor, injection: torch.Tensor, memory: Memory | None) -> torch.Tensor:
        """f(z): (B, T, d_state) -> (B, T, d_state)."""

    def next_memory(self, z: torch.Tensor, injection: torch.Tensor, x: torch.Tensor,
                    memory: Memory | None, mem_len: int, detach: bool = True) -> Memory:
        """The next segment's memory from this segment's final z (detached, no graph); with
        ``detach=False``, the memory of the next chunk of the same segment (graph kept)."""

    def readout(self, z: torch.Tensor) -> torch.Tensor:
        """The part of z passed to the decoder: (B, T, d_out)."""
