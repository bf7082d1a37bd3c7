"""Training memory against effective depth: a weight-tied explicit stack vs the DEQ of the same cell.

``run_depth_benchmark(preset)``: one cell per family (the small DEQ-Transformer's, DEQ-TrellisNet PTB's)
as a weight-tied explicit stack of depth 2 ... 64 against the DEQ with the same iteration cap and an
unreachable tolerance, so that the solve runs to the cap, under each of :data:`DEQ_VARIANTS` (forward
and backward solvers). One training step (forward + backward; the driver alone: a random input stands
in for the embeddings, a random readout for the softmax) is measured per point, two ways:

- measured (``total_bytes``, the number the goals use): the allocator's peak over the step
  (:class:`~deq.engine.memory.AllocatorPeak`: the profiler's memory timeline on a CPU,
  ``max_memory_allocated`` on a GPU), which holds the saved activations, the solver buffers, the
  gradients and the backward's temporaries, plus the weights and both Adam moments (alive before
  the step, so not in the peak);
- accounted (``accounted_bytes``): the bytes autograd saved + the larger of the forward and backward
  solver buffers, computed from the solver's code (:func:`~deq.bench.memory.solver_buffer_bytes`) +
  weights, gradients and Adam moments. It names the parts; it misses the backward's temporaries.

The explicit rows are linear in depth, ``I + depth x L`` (least squares); a DEQ that kept one
layer's worth of everything could do no better than ``1 - (I + L) / (I + depth x L)``, the bound the
table prints next to the goal.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from baselines.drivers import WeightTiedDriver
from deq.bench.memory import PRESETS, PROTOCOL_BATCH, PROTOCOL_SEQ, _mb, _pct, _write, deq_buffer_bytes
from deq.engine.memory import AllocatorPeak, SavedActivations, adam_state_bytes
from deq.models.drivers import DEQDriver
from deq.rows.build import build_cell
from deq.rows.configs import get_config

__all__ = ["DEPTHS", "DEPTH_ROWS", "DEQ_VARIANTS", "run_depth_benchmark"]

DEPTHS = (2, 4, 8, 16, 32, 64)
DEPTH_ROWS = {"transformer": "wt103-deq-transformer-small", "trellis": "ptb-deq-trellisnet"}


# Each variant overrides the row's SolverSettings (forward solves always run to the cap). 'anderson' (the
# v2 forward) and 'broyden' (all pairs up to the cap: grows with it) keep the row's backward (the v1
# Broyden, every pair up to its cap); 'broyden-m8' bounds both histories to 8 pairs; 'anderson-fixed-point' solves
# the backward by plain fixed-point iteration (one vector of history: the best iterate), as torchdeq does
# by default.
DEQ_VARIANTS = {
    "anderson": dict(solver="anderson", solver_options={}),
    "broyden": dict(solver="broyden", solver_options={}),
    "broyden-m8": dict(solver="broyden", solver_options={"m": 8}, backward_solver="broyden",
                       backward_options={"m": 8}),
    "anderson-fixed-point": dict(solver="anderson", solver_options={}, backward_solver="picard",
                                 backward_options={}),
}


@dataclass(frozen=True)
class DepthPreset:
    model_preset: str  # widths of the cells (get_config preset)
    seq_len: int
    batch: int


# smoke: tiny; cpu: the cpu preset's widths (128) at the protocol's tokens; paper: paper widths (for a GPU).
DEPTH_PRESETS = {"smoke": DepthPreset("smoke", 16, 2), "cpu": DepthPreset("cpu", PROTOCOL_SEQ, PROTOCOL_BATCH),
                 "paper": DepthPreset("paper", PROTOCOL_SEQ, PROTOCOL_BATCH)}
GOAL_DEPTH, GOAL_REDUCTION = 16, 0.9  # the goal: >= 90% below the explicit stack from depth 16
UNREACHABLE_TOL = 1e-12  # below float32's resolution: every solve runs to its cap
# The paper's init N(0, 0.05) rather than the code's 0.01: at 0.01 the random TrellisNet cell is so
# contractive that short sequences reach an exact float32 fixed point (residual 0) before a large cap.
DEPTH_INIT_STD = 0.05


def _depth_point(driver, x: torch.Tensor, memory, readout: torch.Tensor) -> tuple[int, int, object, float]:
    """One training step's forward + backward of ``driver``: (saved bytes, allocator peak, info, seconds).

    The seconds are under the profiler on a CPU: a rough size, not a timing."""
    driver.zero_grad(set_to_none=True)  # the gradients are allocated inside the step, so in its peak
    start = time.perf_counter()
    with AllocatorPeak(x.device) as peak, SavedActivations() as counter:
        out = driver(x, memory)
        (out.h * readout).mean().backward()
        info = out.info
        del out
    return counter.bytes, peak.bytes, info, time.perf_counter() - start


def measure_depth(family: str, preset: str) -> list[dict]:
    """Explicit weight-tied stack vs DEQ variants of one family's cell at every depth of DEPTHS."""
    setting = DEPTH_PRESETS[preset]
    row = get_config(DEPTH_ROWS[family], setting.model_preset)
    row = replace(row, cell=replace(row.cell, init_std=DEPTH_INIT_STD))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    cell = build_cell(row).to(device).train()
    B, T = setting.batch, setting.seq_len
    x, readout = torch.randn(B, T, row.d_model, device=device), torch.randn(B, T, cell.d_out, device=device)
    with torch.no_grad():  # a previous segment's memory, as in training
        memory = WeightTiedDriver(cell, 1, row.mem_len)(torch.randn_like(x)).memory
    param_state = adam_state_bytes(cell.parameters())  # weights, gradients, two moments
    held_before = param_state // 4 * 3  # weights and moments: alive before the step (gradients are inside)
    rows = []
    for depth in DEPTHS:
        base = {"family": family, "row": row.name, "width": row.d_model, "d_state": cell.d_state, "seq_len": T,
                "batch": B, "depth": depth, "param_state_bytes": param_state}
        saved, peak, _, wall = _depth_point(WeightTiedDriver(cell, depth, row.mem_len), x, memory, readout)
        rows.append({**base, "model": "explicit", "forward": "", "backward": "", "activation_bytes": saved,
                     "fwd_buffer_bytes": 0, "bwd_buffer_bytes": 0, "allocator_peak_bytes": peak,
                     "total_bytes": peak + held_before, "accounted_bytes": saved + param_state,
                     "fwd_iters": depth, "iters_eq_cap": True, "bwd_iters": None, "fwd_rel_residual": None,
                     "bwd_rel_residual": None, "wall_s": wall})
        for name, overrides in DEQ_VARIANTS.items():
            settings = replace(row.solver, tol=UNREACHABLE_TOL, max_iter=depth, **overrides)
            saved, peak, info, wall = _depth_point(DEQDriver(cell, settings, row.mem_len), x, memory, readout)
            fwd, bwd = deq_buffer_bytes(settings, B, T, cell.d_state)
            rows.append({**base, "model": f"deq-{name}", "forward": _solver_name(settings.solver,
                                                                                 settings.solver_options),
                         "backward": _solver_name(settings.backward_solver, settings.backward_options),
                         "activation_bytes": saved, "fwd_buffer_bytes": fwd, "bwd_buffer_bytes": bwd,
                         "allocator_peak_bytes": peak, "total_bytes": peak + held_before,
                         "accounted_bytes": saved + max(fwd, bwd) + param_state,
                         "fwd_iters": info.forward.n_iter, "iters_eq_cap": info.forward.n_iter == depth,
                         "bwd_iters": info.backward.n_iter, "fwd_rel_residual": info.forward.rel_residual.max().item(),
                         "bwd_rel_residual": info.backward.rel_residual.max().item(), "wall_s": wall})
    explicit = {r["depth"]: r for r in rows if r["model"] == "explicit"}
    for r in rows:
        r["reduction"] = 1 - r["total_bytes"] / explicit[r["depth"]]["total_bytes"]
        r["reduction_accounted"] = 1 - r["accounted_bytes"] / explicit[r["depth"]]["accounted_bytes"]
    return rows


def _solver_name(solver: str, options: dict) -> str:
    return solver + "".join(f" {key}={value}" for key, value in sorted(options.items()))


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def depth_goals(rows: list[dict]) -> list[tuple[str, str, str, float, str, bool]]:
    """(family, model, what, measured, goal, met) for the goals of the depth benchmark (measured totals)."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        by = {(r["model"], r["depth"]): r for r in rows if r["family"] == family}
        for model in dict.fromkeys(r["model"] for r in rows if r["family"] == family):
            if model == "explicit":
                spread = _spread([(by[model, b]["total_bytes"] - by[model, a]["total_bytes"]) / (b - a)
                                  for a, b in zip(DEPTHS, DEPTHS[1:])])
                out.append((family, model, "total per layer: spread over depths", spread, "<= 5% (linear)",
                            spread <= 0.05))
                continue
            for key, what in (("activation_bytes", "activations"), ("total_bytes", "total")):
                spread = _spread([by[model, c][key] for c in DEPTHS if c >= 8])
                out.append((family, model, f"{what}, caps 8-64: max/min - 1", spread, "<= 5% (flat)", spread <= 0.05))
            worst = min(by[model, c]["reduction"] for c in DEPTHS if c >= GOAL_DEPTH)
            out.append((family, model, f"total below explicit at depth >= {GOAL_DEPTH}: smallest", worst,
                        f">= {GOAL_REDUCTION:.0%}", worst >= GOAL_REDUCTION))
            capped = all(by[model, c]["iters_eq_cap"] for c in DEPTHS)
            out.append((family, model, "iterations == cap at every depth", float(capped), "yes", capped))
            reached = next((c for c in DEPTHS if by[model, c]["reduction"] >= GOAL_REDUCTION), None)
            out.append((family, model, f"first depth measured >= {GOAL_REDUCTION:.0%} below explicit",
                        float(reached or "nan"), f"<= {GOAL_DEPTH}", reached is not None and reached <= GOAL_DEPTH))
        bound = best_possible_reduction(by, GOAL_DEPTH)
        out.append((family, "any DEQ", f"bound at depth {GOAL_DEPTH}: one layer's worth of the explicit stack",
                    bound, f">= {GOAL_REDUCTION:.0%}", bound >= GOAL_REDUCTION))
    return out


def explicit_line(by: dict) -> tuple[float, float]:
    """(I, L): the explicit rows' measured total = I + depth x L, least squares over DEPTHS."""
    depths = np.array(DEPTHS, dtype=float)
    per_layer, intercept = np.polyfit(depths, [by["explicit", d]["total_bytes"] for d in DEPTHS], 1)
    return float(intercept), float(per_layer)


def best_possible_reduction(by: dict, depth: int) -> float:
    """1 - (I + L) / (I + depth L) from the explicit rows' line (:func:`explicit_line`).

    I holds what does not grow with depth (weights, gradients and moments, the input and readout,
    one layer's backward temporaries); L is one more layer. A DEQ whose step held one layer's worth
    of everything and no solver buffers would reach this; none can do better at the same cell and
    sizes."""
    intercept, per_layer = explicit_line(by)
    return 1 - (intercept + per_layer) / (intercept + depth * per_layer)


def render_depth_markdown(preset: str, rows: list[dict]) -> str:
    variants = [f"deq-{v}" for v in DEQ_VARIANTS]
    lines = [f"# Training memory vs effective depth ({preset} preset)", "",
             "Explicit: the weight-tied stack of the cell at that depth. DEQ: the same cell solved with the "
             f"iteration cap = depth and tolerance {UNREACHABLE_TOL:g} (unreachable, so the cap is used), under "
             "each variant's forward and backward solvers (the backward keeps the row's cap). One forward + "
             "backward of the driver (random input and readout in place of embedding and softmax); the paper's "
             "init N(0, 0.05). Measured total = the allocator's peak over the step (CPU: the profiler's memory "
             "timeline; GPU: max_memory_allocated) + weights and both Adam moments. Accounted = saved activations "
             "+ the larger computed solver buffer + weights, gradients, moments (it misses the backward's "
             "temporaries). Reductions are 1 - DEQ / explicit at the same depth, measured (accounted in "
             "brackets). MB = 10^6 bytes."]
    for family in dict.fromkeys(r["family"] for r in rows):
        by = {(r["model"], r["depth"]): r for r in rows if r["family"] == family}
        first = by["explicit", DEPTHS[0]]
        intercept, per_layer = explicit_line(by)
        reach = next((d for d in range(1, 1025) if best_possible_reduction(by, d) >= GOAL_REDUCTION), None)
        lines += ["", f"## {family}: {first['row']} cell at width {first['width']} (d_state {first['d_state']}), "
                      f"sequence {first['seq_len']} x batch {first['batch']}", "",
                  f"Parameter state (weights, gradients, moments) {_mb(first['param_state_bytes'])} MB. Explicit "
                  f"stack measured: {_mb(intercept)} MB + {_mb(per_layer)} MB per layer, so no DEQ of this cell "
                  f"can be {GOAL_REDUCTION:.0%} below it before depth {reach}.", "",
                  "| variant | forward | backward | backward buffers MB |", "|---|---|---|---|"]
        for v in variants:
            r = by[v, DEPTHS[-1]]
            lines.append(f"| {v} | {r['forward']} | {r['backward']} | {_mb(r['bwd_buffer_bytes'])} |")
        lines += ["", "| depth | explicit MB (act.) | " + " | ".join(f"{v} MB (act. / fwd buf.)" for v in variants) +
                  " | reduction: " + " / ".join(v.removeprefix("deq-") for v in variants) + " | bound |",
                  "|---|---|" + "---|" * len(variants) + "---|---|"]
        for depth in DEPTHS:
            ex = by["explicit", depth]
            cells = [f"{_mb(by[v, depth]['total_bytes'])} ({_mb(by[v, depth]['activation_bytes'])} / "
                     f"{_mb(by[v, depth]['fwd_buffer_bytes'])})" for v in variants]
            reductions = " / ".join(f"{_pct(by[v, depth]['reduction'])} ({_pct(by[v, depth]['reduction_accounted'])})"
                                    for v in variants)
            lines.append(f"| {depth} | {_mb(ex['total_bytes'])} ({_mb(ex['activation_bytes'])}) | "
                         + " | ".join(cells) + f" | {reductions} | {_pct(best_possible_reduction(by, depth))} |")
        lines += ["", "| variant | forward rel. residual at cap 8 / 16 / 64 | backward iterations, rel. residual at 16 |",
                  "|---|---|---|"]
        for v in variants:
            lines.append(f"| {v} | " + " / ".join(f"{by[v, c]['fwd_rel_residual']:.0e}" for c in (8, 16, 64)) +
                         f" | {by[v, 16]['bwd_iters']}, {by[v, 16]['bwd_rel_residual']:.0e} |")
    lines += ["", "| family | model | goal | measured | target | met |", "|---|---|---|---|---|---|"]
    for family, model, what, value, goal, met in depth_goals(rows):
        shown = (("yes" if value else "no") if what.startswith("iterations") else
                 ("none up to 64" if value != value else f"{value:.0f}") if what.startswith("first depth") else
                 f"{100 * value:.1f}%")
        lines.append(f"| {family} | {model} | {what} | {shown} | {goal} | {'yes' if met else 'NO'} |")
    return "\n".join(lines) + "\n"


def run_depth_benchmark(preset: str = "cpu", csv_path: str | Path | None = None,
                        md_path: str | Path | None = None) -> list[dict]:
    """Memory vs depth for both families (see the module docstring); prints and writes the tables."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    rows = [r for family in DEPTH_ROWS for r in measure_depth(family, preset)]
    _write(render_depth_markdown(preset, rows), rows, csv_path, md_path)
    return rows
