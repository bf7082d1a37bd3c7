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
from deq.solvers import check_solver_args


@dataclass(frozen=True)
class SolverSettings:
    """How the DEQ driver solves and differentiates (names follow ``deq.equilibrium``)."""

    solver: str = "anderson"  # forward solver in training (the DEQ v2 code: Anderson)
    tol: float = 1e-3  # forward tolerance in training
    max_iter: int = 30  # forward cap in training: evaluations of f (v1 modules/broyden.py's threshold + 1)
    stop_mode: str = "rel"  # 'rel', 'abs' (per sample) or 'batch_rms' (the v1 code's), forward and backward
    backward: str = "implicit"  # 'implicit', 'phantom', 'jfb' or 'unrolled' (see deq.BACKWARDS)
    backward_solver: str = "broyden"  # solver of the implicit backward
    backward_tol: float = 1e-6  # backward tolerance
    backward_max_iter: int = 35  # backward cap (the v2 script's b_thres 35; the rows set their own)
    eval_solver: str = "anderson"  # forward solver at evaluation
    eval_tol: float = 1e-3  # forward tolerance at evaluation (may differ from training)
    eval_max_iter: int = 30  # forward cap at evaluation
    solver_options: dict = field(default_factory=dict)  # extra options of the forward solvers (m, lam, ...)
    backward_options: dict = field(default_factory=dict)  # options of the backward solver (e.g. m, its history)
    # Solve the segment in consecutive chunks of this many positions (0: whole), each chunk's memory the
    # previous chunk's equilibrium, as the official code's subseq_len (v1 DEQModel/models/*/
    # *_forward_backward.py); the weight-tied pretraining stack runs the whole segment, as there.
    subseq_len: int = 0
    code: str = ""  # the official code these settings follow ('v1', 'v2'); '' for the project's own

    def __post_init__(self) -> None:
        if isinstance(self.subseq_len, bool) or not isinstance(self.subseq_len, int) or self.subseq_len < 0:
            raise ValueError(f"subseq_len must be an integer >= 0 (0: the whole segment), got {self.subseq_len!r}")
        if self.backward not in deq.BACKWARDS:
            raise ValueError(f"unknown backward {self.backward!r}; choose from {list(deq.BACKWARDS)}")
        check_solver_args(self.solver, self.tol, self.max_iter, self.stop_mode, self.solver_options)
        check_solver_args(self.eval_solver, self.eval_tol, self.eval_max_iter, self.stop_mode, self.solver_options)
        check_solver_args(self.backward_solver, self.backward_tol, self.backward_max_iter, self.stop_mode,
                          self.backward_options)

    # The one translation of these settings into solve arguments: the driver, the benchmarks that time a
    # solve on its own, and evaluation all call these, so none can drop an option (the backward's
    # history bound, a forward ridge) that the others pass.
    def forward_args(self, training: bool) -> dict:
        """``deq.solve`` arguments of the forward solve, in training or at evaluation.

        >>> SolverSettings(solver="broyden", max_iter=20, solver_options={"m": 5}).forward_args(training=True)
        {'solver': 'broyden', 'tol': 0.001, 'max_iter': 20, 'stop_mode': 'rel', 'm': 5}
        """
        solve = (dict(solver=self.solver, tol=self.tol, max_iter=self.max_iter) if training else
                 dict(solver=self.eval_solver, tol=self.eval_tol, max_iter=self.eval_max_iter))
        return {**solve, "stop_mode": self.stop_mode, **self.solver_options}

    def backward_args(self) -> dict:
        """``deq.solve`` arguments of the implicit backward's solve.

        >>> SolverSettings(backward_max_iter=40, backward_options={"m": 8}).backward_args()
        {'solver': 'broyden', 'tol': 1e-06, 'max_iter': 40, 'stop_mode': 'rel', 'm': 8}
        """
        return dict(solver=self.backward_solver, tol=self.backward_tol, max_iter=self.backward_max_iter,
                    stop_mode=self.stop_mode, **self.backward_options)

    def equilibrium_args(self, training: bool) -> dict:
        """``deq.equilibrium`` arguments: the forward solve's, and the backward with its own solver."""
        return {**self.forward_args(training), "backward": self.backward, "backward_solver": self.backward_solver,
                "backward_tol": self.backward_tol, "backward_max_iter": self.backward_max_iter,
                "backward_options": dict(self.backward_options)}


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

    def forward(self, x: torch.Tensor, memory: Memory | None = None) -> DriverOutput:
        """x: (B, T, d_embed) embeddings of one segment; memory: the previous segment's, or None."""
        s = self.settings
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
        next_memory = self.cell.next_memory(z.detach(), injection.detach(), x.detach(), memory, self.mem_len)
        return DriverOutput(h, z, next_memory, info)
