"""Training memory against effective depth: a weight-tied explicit stack vs the DEQ of the same cell.

``run_depth_benchmark(preset)``: one cell per family (the small DEQ-Transformer's, DEQ-TrellisNet PTB's)
as a weight-tied explicit stack of depth 2 ... 64 against the DEQ with the same iteration cap and an
unreachable tolerance, so that the solve runs to the cap. Per depth: saved-activation bytes, solver
buffers (forward: Anderson, Broyden with its default history m = max_iter, Broyden with m = 8;
backward: the row's), and total = activations + buffers + parameter state. The driver alone is
measured (a random input stands in for the embeddings, a random readout for the softmax).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from baselines.drivers import WeightTiedDriver
from deq.bench.memory import PRESETS, PROTOCOL_BATCH, PROTOCOL_SEQ, _mb, _pct, _write, deq_buffer_bytes, \
    solver_buffer_bytes
from deq.engine.memory import SavedActivations, adam_state_bytes
from deq.models.configs import build_cell, get_config
from deq.models.drivers import DEQDriver

__all__ = ["DEPTHS", "DEPTH_ROWS", "DEQ_VARIANTS", "run_depth_benchmark"]

DEPTHS = (2, 4, 8, 16, 32, 64)
DEPTH_ROWS = {"transformer": "wt103-deq-transformer-small", "trellis": "ptb-deq-trellisnet"}
DEQ_VARIANTS = {"anderson": ("anderson", {}), "broyden": ("broyden", {}), "broyden-m8": ("broyden", {"m": 8})}


@dataclass(frozen=True)
class DepthPreset:
    model_preset: str  # widths of the cells (get_config preset)
    seq_len: int
    batch: int


# smoke: tiny; cpu: the cpu preset's widths (128) at the protocol's tokens; paper: paper widths (for a GPU).
DEPTH_PRESETS = {"smoke": DepthPreset("smoke", 16, 2), "cpu": DepthPreset("cpu", PROTOCOL_SEQ, PROTOCOL_BATCH),
                 "paper": DepthPreset("paper", PROTOCOL_SEQ, PROTOCOL_BATCH)}
BACKWARD_HISTORY = 8  # the bounded backward history the report computes alongside the one that runs
UNREACHABLE_TOL = 1e-12  # below float32's resolution: every solve runs to its cap
# The paper's init N(0, 0.05) rather than the code's 0.01: at 0.01 the random TrellisNet cell is so
# contractive that short sequences reach an exact float32 fixed point (residual 0) before a large cap.
DEPTH_INIT_STD = 0.05


def _depth_point(driver, x: torch.Tensor, memory, readout: torch.Tensor) -> tuple[int, object, float]:
    """One training step's forward + backward of ``driver``: (saved bytes, info, seconds)."""
    driver.zero_grad(set_to_none=True)
    start = time.perf_counter()
    with SavedActivations() as counter:
        out = driver(x, memory)
    (out.h * readout).mean().backward()
    if x.is_cuda:
        torch.cuda.synchronize()
    return counter.bytes, out.info, time.perf_counter() - start


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
    param_state = adam_state_bytes(cell.parameters())
    d = T * cell.d_state
    # The backward with a bounded history (SolverSettings.backward_options): computed, not run.
    bwd_bounded = solver_buffer_bytes(row.solver.backward_solver, row.solver.backward_max_iter,
                                      {"m": BACKWARD_HISTORY}, B, d)
    rows = []
    for depth in DEPTHS:
        saved, _, wall = _depth_point(WeightTiedDriver(cell, depth, row.mem_len), x, memory, readout)
        base = {"family": family, "row": row.name, "width": row.d_model, "d_state": cell.d_state, "seq_len": T,
                "batch": B, "depth": depth, "param_state_bytes": param_state}
        rows.append({**base, "model": "explicit", "activation_bytes": saved, "fwd_buffer_bytes": 0,
                     "bwd_buffer_bytes": 0, "total_bytes": saved + param_state,
                     "total_bwd_bounded_bytes": saved + param_state, "fwd_iters": depth, "iters_eq_cap": True,
                     "bwd_iters": None, "fwd_rel_residual": None, "wall_s": wall})
        for variant, (solver, options) in DEQ_VARIANTS.items():
            settings = replace(row.solver, solver=solver, tol=UNREACHABLE_TOL, max_iter=depth, solver_options=options)
            saved, info, wall = _depth_point(DEQDriver(cell, settings, row.mem_len), x, memory, readout)
            fwd, bwd = deq_buffer_bytes(settings, B, d)
            rows.append({**base, "model": f"deq-{variant}", "activation_bytes": saved, "fwd_buffer_bytes": fwd,
                         "bwd_buffer_bytes": bwd, "total_bytes": saved + max(fwd, bwd) + param_state,
                         "total_bwd_bounded_bytes": saved + max(fwd, bwd_bounded) + param_state,
                         "fwd_iters": info.forward.n_iter, "iters_eq_cap": info.forward.n_iter == depth,
                         "bwd_iters": info.backward.n_iter, "fwd_rel_residual": info.forward.rel_residual.max().item(),
                         "wall_s": wall})
    explicit = {r["depth"]: r["total_bytes"] for r in rows if r["model"] == "explicit"}
    for r in rows:
        r["reduction"] = 1 - r["total_bytes"] / explicit[r["depth"]]
        r["reduction_bwd_bounded"] = 1 - r["total_bwd_bounded_bytes"] / explicit[r["depth"]]
    return rows


def _spread(values: list[float]) -> float:
    return max(values) / min(values) - 1


def depth_goals(rows: list[dict]) -> list[tuple[str, str, str, float, str, bool]]:
    """(family, model, what, measured, goal, met) for the goals of the depth benchmark."""
    out = []
    for family in dict.fromkeys(r["family"] for r in rows):
        by = {(r["model"], r["depth"]): r for r in rows if r["family"] == family}
        for model in dict.fromkeys(r["model"] for r in rows if r["family"] == family):
            if model == "explicit":
                spread = _spread([(by[model, b]["activation_bytes"] - by[model, a]["activation_bytes"]) / (b - a)
                                  for a, b in zip(DEPTHS, DEPTHS[1:])])
                out.append((family, model, "activation bytes per layer: spread over depths", spread,
                            "<= 5% (linear)", spread <= 0.05))
                continue
            for key, what in (("activation_bytes", "activations"), ("total_bytes", "total")):
                spread = _spread([by[model, c][key] for c in DEPTHS if c >= 8])
                out.append((family, model, f"{what}, caps 8-64: max/min - 1", spread, "<= 5% (flat)", spread <= 0.05))
            for key, what in (("reduction", "as run"),
                              ("reduction_bwd_bounded", f"backward m={BACKWARD_HISTORY}, computed")):
                worst = min(by[model, c][key] for c in DEPTHS if c >= 16)
                out.append((family, model, f"total below explicit at depth >= 16 ({what}): smallest", worst,
                            ">= 90%", worst >= 0.9))
            capped = all(by[model, c]["iters_eq_cap"] for c in DEPTHS)
            out.append((family, model, "iterations == cap at every depth", float(capped), "yes", capped))
        bound = best_possible_reduction(by, 16)
        out.append((family, "any DEQ", "best possible at depth 16: one layer's activations + parameter state, "
                    "no solver buffers", bound, ">= 90%", bound >= 0.9))
    return out


def best_possible_reduction(by: dict, depth: int) -> float:
    """1 - (P + R + L) / (P + R + depth L): the reduction of a DEQ whose training memory is one layer of
    the explicit stack (L, its activations per layer), what it shares with it (R: input and readout) and
    the parameter state P, with no solver buffers at all. L and R come from the explicit rows at depths
    2 and 4; nothing a solver does can beat this bound at the same cell and sizes."""
    act2, act4 = by["explicit", 2]["activation_bytes"], by["explicit", 4]["activation_bytes"]
    per_layer = (act4 - act2) / 2
    shared = act2 - 2 * per_layer
    params = by["explicit", 2]["param_state_bytes"]
    return 1 - (params + shared + per_layer) / (params + shared + depth * per_layer)


def render_depth_markdown(preset: str, rows: list[dict]) -> str:
    variants = [f"deq-{v}" for v in DEQ_VARIANTS]
    short = " / ".join(DEQ_VARIANTS)
    lines = [f"# Training memory vs effective depth ({preset} preset)", "",
             "Explicit: the weight-tied stack of the cell at that depth. DEQ: the same cell solved with the "
             f"iteration cap = depth and tolerance {UNREACHABLE_TOL:g} (unreachable, so the cap is used) and the "
             "row's backward (Broyden, history m = its cap, as DEQDriver runs it). Driver only (random input and "
             "readout in place of embedding and softmax); the paper's init N(0, 0.05). Solver buffers are computed "
             "from the solver, its m and B x T x d_state; total = activations + the larger of the forward and "
             "backward buffers + parameters, gradients and Adam moments. `bwd m=8` recomputes the total with the "
             f"backward's history bounded to {BACKWARD_HISTORY} (SolverSettings.backward_options runs it; here it is "
             "computed). The last goal row per family is the bound no solver can beat at this cell and size. "
             "MB = 10^6 bytes."]
    for family in dict.fromkeys(r["family"] for r in rows):
        by = {(r["model"], r["depth"]): r for r in rows if r["family"] == family}
        first = by["explicit", DEPTHS[0]]
        lines += ["", f"## {family}: {first['row']} cell at width {first['width']} (d_state {first['d_state']}), "
                      f"sequence {first['seq_len']} x batch {first['batch']}; parameter state "
                      f"{_mb(first['param_state_bytes'])} MB; backward buffers "
                      f"{_mb(by[variants[0], DEPTHS[0]]['bwd_buffer_bytes'])} MB", "",
                  f"| depth | explicit act. / total MB | DEQ act. MB ({short}) | fwd buffers MB | DEQ total MB | "
                  f"reduction | reduction, bwd m={BACKWARD_HISTORY} | fwd rel. residual at cap | iters = cap |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for depth in DEPTHS:
            deq_rows = [by[v, depth] for v in variants]

            def cells(key, fmt=_mb):
                return " / ".join(fmt(r[key]) for r in deq_rows)
            lines.append(f"| {depth} | {_mb(by['explicit', depth]['activation_bytes'])} / "
                         f"{_mb(by['explicit', depth]['total_bytes'])} | {cells('activation_bytes')} | "
                         f"{cells('fwd_buffer_bytes')} | {cells('total_bytes')} | {cells('reduction', _pct)} | "
                         f"{cells('reduction_bwd_bounded', _pct)} | "
                         f"{cells('fwd_rel_residual', lambda v: f'{v:.0e}')} | "
                         f"{'yes' if all(r['iters_eq_cap'] for r in deq_rows) else 'NO'} |")
    lines += ["", "| family | model | goal | measured | target | met |", "|---|---|---|---|---|---|"]
    for family, model, what, value, goal, met in depth_goals(rows):
        shown = ("yes" if value else "no") if what.startswith("iterations") else f"{100 * value:.1f}%"
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
