"""Training memory against effective depth: a weight-tied explicit stack vs the DEQ of the same cell.

One cell per family (the small DEQ-Transformer's, DEQ-TrellisNet PTB's) as a weight-tied stack of
depth 2 ... 64 against the DEQ capped at that depth with an unreachable tolerance (so the solve runs
to the cap), under each of :data:`DEQ_VARIANTS`; and the ``floor``, the cell's one-layer stack: the least
any DEQ of it can hold (every row's ``floor_ratio`` is against it). One training step of the driver alone
(a random input for the embeddings, a random readout for the softmax) is measured per point, two ways:

- ``total_bytes`` (the goals' number): the allocator's peak over the step
  (:func:`deq.bench.common.measure_step`) plus the weights and both Adam moments held before it;
- ``accounted_bytes``: saved activations + the larger solver buffer (computed from the solver's code,
  :func:`deq.solvers.solver_buffer_bytes`) + the parameter state; it misses the temporaries.

The explicit rows are linear in depth, ``I + depth x L`` (least squares); a DEQ that kept one
layer's worth of everything could do no better than ``1 - (I + L) / (I + depth x L)``, the bound the
table prints next to the goal.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import torch

from baselines.drivers import WeightTiedDriver
from deq.bench.common import columns, measure_step, scales, write_rows
from deq.bench.memory import deq_buffer_bytes
from deq.engine.memory import SavedActivations, adam_state_bytes
from deq.models.drivers import DEQDriver
from deq.report.benchmarks import render_depth
from deq.rows.build import build_cell
from deq.rows.configs import get_config
from deq.settings import LEAN, solver_name

__all__ = ["DEPTHS", "DEPTH_ROWS", "DEQ_VARIANTS", "DepthRow", "run_depth_benchmark"]

DEPTHS = (2, 4, 8, 16, 32, 64)
DEPTH_ROWS = {"transformer": "wt103-deq-transformer-small", "trellis": "ptb-deq-trellisnet"}


# Overrides of the row's SolverSettings. 'anderson' (the v2 forward) and 'broyden' (every pair up to the cap)
# keep the row's backward (the v1 Broyden, every pair); 'broyden-m8' bounds both histories to 8 pairs;
# 'anderson-fixed-point' solves the backward by fixed-point iteration (torchdeq's default); 'lean': deq.settings.LEAN.
DEQ_VARIANTS = {
    "anderson": dict(solver="anderson", solver_options={}),
    "broyden": dict(solver="broyden", solver_options={}),
    "broyden-m8": dict(solver="broyden", solver_options={"m": 8}, backward_solver="broyden",
                       backward_options={"m": 8}),
    "anderson-fixed-point": dict(solver="anderson", solver_options={}, backward_solver="picard",
                                 backward_options={}),
    "lean": LEAN,
}


UNREACHABLE_TOL = 1e-12  # below float32's resolution: every solve runs to its cap
# The paper's init N(0, 0.05) rather than the code's 0.01: at 0.01 the random TrellisNet cell is so
# contractive that short sequences reach an exact float32 fixed point (residual 0) before a large cap.
DEPTH_INIT_STD = 0.05


@dataclass
class DepthRow:
    """One model at one depth: a row of ``depth.csv``."""

    family: str  # 'transformer' or 'trellis'
    row: str  # the registry row whose cell is used
    width: int
    d_state: int
    seq_len: int
    batch: int
    depth: int  # explicit layers, or the DEQ's forward cap
    param_state_bytes: int  # weights, gradients and both Adam moments
    model: str  # 'explicit', 'floor' (the one-layer stack, depth 1) or 'deq-<variant>'
    forward: str  # the DEQ's forward solver and options ('' for explicit)
    backward: str  # ... its backward's
    activation_bytes: int  # saved for backward
    fwd_buffer_bytes: int  # computed solver histories (deq_buffer_bytes)
    bwd_buffer_bytes: int
    allocator_peak_bytes: int  # the allocator's peak over forward + backward
    total_bytes: int  # measured: the peak + weights and moments (alive before the step)
    accounted_bytes: int  # activations + the larger solver buffer + parameter state
    fwd_iters: int  # forward iterations (explicit: its depth)
    iters_eq_cap: bool  # the solve ran to its cap
    bwd_iters: int | None
    fwd_rel_residual: float | None
    bwd_rel_residual: float | None
    wall_s: float  # seconds of the step, under the profiler on a CPU: a size, not a timing
    reduction: float = 0.0  # 1 - total / explicit total at this depth
    reduction_accounted: float = 0.0  # ... accounted
    floor_ratio: float = 0.0  # total / the floor's total


def measure_depth(family: str, preset: str, depths=DEPTHS, variants=DEQ_VARIANTS, batch=None) -> list[DepthRow]:
    """Explicit weight-tied stack vs DEQ ``variants`` of one family's cell at ``depths`` (``batch``: the preset's)."""
    setting = scales(preset).depth
    row = get_config(DEPTH_ROWS[family], setting.model_preset)
    row = replace(row, cell=replace(row.cell, init_std=DEPTH_INIT_STD))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cell = build_cell(row).to(device).train()
    B, T = batch or setting.batch, setting.seq_len
    x, readout = torch.randn(B, T, row.d_model, device=device), torch.randn(B, T, cell.d_out, device=device)
    with torch.no_grad():  # a previous segment's memory, as in training
        memory = WeightTiedDriver(cell, 1, row.mem_len)(torch.randn_like(x)).memory
    param_state = adam_state_bytes(cell.parameters())  # weights, gradients, two moments
    held_before = param_state // 4 * 3  # weights and moments: alive before the step (gradients are inside)

    def point(driver) -> tuple:
        """(info, peak bytes, seconds, saved bytes) of one training step's forward + backward of ``driver``."""
        def step():
            out = driver(x, memory)
            (out.h * readout).mean().backward()
            return out.info
        cell.zero_grad(set_to_none=True)  # the gradients are allocated inside the step, so in its peak
        counter = SavedActivations()
        return *measure_step(step, device, counter), counter.bytes

    def explicit(depth: int, model: str) -> DepthRow:
        _, peak, wall, saved = point(WeightTiedDriver(cell, depth, row.mem_len))
        return DepthRow(family, row.name, row.d_model, cell.d_state, T, B, depth, param_state, model, "", "", saved,
                        0, 0, peak, peak + held_before, saved + param_state, depth, True, None, None, None, wall)

    rows = [explicit(1, "floor")]
    for depth in depths:
        base = (family, row.name, row.d_model, cell.d_state, T, B, depth, param_state)
        rows.append(explicit(depth, "explicit"))
        for name, overrides in variants.items():
            settings = replace(row.solver, tol=UNREACHABLE_TOL, max_iter=depth, **overrides)
            info, peak, wall, saved = point(DEQDriver(cell, settings, row.mem_len))
            fwd, bwd = deq_buffer_bytes(settings, B, T, cell.d_state)
            rows.append(DepthRow(
                *base, f"deq-{name}", solver_name(settings.solver, settings.solver_options),
                solver_name(settings.backward_solver, settings.backward_options), saved, fwd, bwd, peak,
                peak + held_before, saved + max(fwd, bwd) + param_state, info.forward.n_iter,
                info.forward.n_iter == depth, info.backward.n_iter, info.forward.rel_residual.max().item(),
                info.backward.rel_residual.max().item(), wall))
    stacks = {r.depth: r for r in rows if r.model in ("explicit", "floor")}
    for r in rows:
        r.reduction = 1 - r.total_bytes / stacks[r.depth].total_bytes
        r.reduction_accounted = 1 - r.accounted_bytes / stacks[r.depth].accounted_bytes
        r.floor_ratio = r.total_bytes / rows[0].total_bytes
    return rows


def run_depth_benchmark(preset: str = "cpu", csv_path: str | Path | None = None,
                        md_path: str | Path | None = None) -> list[DepthRow]:
    """Memory vs depth for both families (see the module docstring); prints and writes the tables."""
    scales(preset)  # an unknown preset is named before anything runs
    rows = [r for family in DEPTH_ROWS for r in measure_depth(family, preset)]
    markdown = render_depth([columns(r) for r in rows], preset, UNREACHABLE_TOL)
    print(markdown, flush=True)
    write_rows(rows, csv_path, md_path, markdown)
    return rows
