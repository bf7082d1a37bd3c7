"""Solver benchmark: our solvers against torchdeq 0.1.0 on one transformer-style cell.

Four phases, each timed interleaved (every entry once per round, in reversed order every other
round, ``rounds`` rounds after one warm-up round) in one process, reported as medians with the interquartile range:

- ``forward``: solve to ``tol`` (relative residual) within ``max_iter``;
- ``forward_fixed_nfe``: ``tol`` unreachable, so every entry makes the same number of f calls
  (``fixed_nfe``); wall per f call and the solver's own overhead per call (wall per call minus one
  f evaluation) compare the algorithms at equal work;
- ``solver_only``: as ``forward_fixed_nfe`` but with a cheap elementwise f, so that the wall time
  is the solver's own work (where the time goes besides f); this f reaches an exact float fixed
  point, so a solver may stop before ``fixed_nfe``: compare per f call;
- ``train_step``: forward solve, implicit backward with the same solver (``backward_tol``,
  ``backward_max_iter``), and the parameter gradients: one training step.

f calls are counted by wrapping f, the same way for both libraries. torchdeq is optional (the
``bench`` extra); without it only our rows are written.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import deq
from deq.bench.cell import TransformerStyleCell
from deq.io import atomic_write_text

PRESETS = ("smoke", "cpu", "paper")


@dataclass(frozen=True)
class BenchConfig:
    d_model: int  # cell width
    n_head: int  # attention heads
    d_inner: int  # feed-forward width
    seq_len: int  # tokens per sample
    batch: int  # samples per solve
    tol: float  # forward tolerance, relative residual per sample (the DEQ v2 criterion)
    max_iter: int  # forward cap (the paper's f_thres is 30)
    backward_tol: float  # backward tolerance, relative residual per sample
    backward_max_iter: int  # backward cap
    fixed_nfe: int  # f calls per entry in the forward_fixed_nfe phase
    rounds: int  # timed rounds after the warm-up round
    device: str  # 'cpu', or 'cuda' when one is available (paper preset)


def preset_config(preset: str) -> BenchConfig:
    """The benchmark's sizes for a preset; ``cpu`` is the issue's setting (256 wide, 128 x 8)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    common = dict(tol=1e-3, max_iter=40, backward_tol=1e-3, backward_max_iter=60, fixed_nfe=30)
    if preset == "smoke":
        return BenchConfig(d_model=32, n_head=2, d_inner=64, seq_len=16, batch=2, rounds=1, device="cpu",
                           **{**common, "max_iter": 12, "backward_max_iter": 12, "fixed_nfe": 8})
    device = "cuda" if preset == "paper" and torch.cuda.is_available() else "cpu"
    return BenchConfig(d_model=256, n_head=4, d_inner=1024, seq_len=128, batch=8,
                       rounds=5 if preset == "cpu" else 10, device=device, **common)


# ---- the two libraries behind one interface ----------------------------------------------------

@dataclass
class Outcome:
    """What one entry reports for one run (besides its wall time).

    For torchdeq, ``n_iter`` is the number of forward f calls (it reports no iteration count of its
    own) and ``bwd_n_iter`` is its ``nstep``, the step at which the lowest backward residual was seen.
    """

    n_iter: int  # forward iterates evaluated
    nfe: int  # f calls in total (a training step adds the tracked f(z*); torchdeq also re-evaluates it)
    rel_residual_max: float
    converged_fraction: float
    bwd_n_iter: int | None = None
    bwd_rel_residual_max: float | None = None
    bwd_converged_fraction: float | None = None


class Counted:
    """f with a call counter."""

    def __init__(self, f: Callable[[torch.Tensor], torch.Tensor]):
        self.f, self.calls = f, 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return self.f(z)


def ours_forward(name: str, f: Counted, z0: torch.Tensor, tol: float, max_iter: int) -> Outcome:
    _, stats = deq.solve(f, z0, solver=name, tol=tol, max_iter=max_iter, stop_mode="rel")
    return Outcome(stats.n_iter, f.calls, stats.rel_residual.max().item(), stats.fraction_converged)


def ours_train_step(name: str, f: Counted, z0: torch.Tensor, cfg: BenchConfig, loss_fn) -> Outcome:
    z, info = deq.equilibrium(f, z0, solver=name, tol=cfg.tol, max_iter=cfg.max_iter, stop_mode="rel",
                              backward="implicit", backward_solver=name, backward_tol=cfg.backward_tol,
                              backward_max_iter=cfg.backward_max_iter)
    loss_fn(z).backward()
    fwd, bwd = info.forward, info.backward
    return Outcome(fwd.n_iter, f.calls, fwd.rel_residual.max().item(), fwd.fraction_converged,
                   bwd.n_iter, bwd.rel_residual.max().item(), bwd.fraction_converged)


TORCHDEQ_NAMES = {"anderson": "anderson", "broyden": "broyden", "picard": "fixed_point_iter"}


def torchdeq_forward(name: str, f: Counted, z0: torch.Tensor, tol: float, max_iter: int) -> Outcome:
    from torchdeq.solver import get_solver

    # torchdeq's Broyden evaluates f once before its first step; give it the same number of calls.
    cap = max_iter - 1 if name == "broyden" else max_iter
    with torch.no_grad():
        _, _, info = get_solver(TORCHDEQ_NAMES[name])(f, z0, max_iter=cap, tol=tol, stop_mode="rel")
    rel = info["rel_lowest"]
    return Outcome(f.calls, f.calls, rel.max().item(), (rel <= tol).float().mean().item())


def torchdeq_train_step(name: str, f: Counted, z0: torch.Tensor, cfg: BenchConfig, loss_fn) -> Outcome:
    from torchdeq import get_deq

    layer = get_deq(core="indexing", ift=True, f_solver=TORCHDEQ_NAMES[name], b_solver=TORCHDEQ_NAMES[name],
                    f_max_iter=cfg.max_iter, b_max_iter=cfg.backward_max_iter, f_tol=cfg.tol,
                    b_tol=cfg.backward_tol, f_stop_mode="rel", b_stop_mode="rel")
    seen = {}
    z_out, info = layer(f, z0, backward_writer=lambda stats: seen.update(stats))
    forward_calls = f.calls
    loss_fn(z_out[-1]).backward()
    rel, bwd_rel = info["rel_lowest"], seen["rel_lowest"]
    return Outcome(forward_calls, f.calls, rel.max().item(), (rel <= cfg.tol).float().mean().item(),
                   int(seen["nstep"].max()), bwd_rel.max().item(),
                   (bwd_rel <= cfg.backward_tol).float().mean().item())


def torchdeq_version() -> str | None:
    try:
        from importlib.metadata import version

        import torchdeq  # noqa: F401

        return version("torchdeq")
    except ImportError:
        return None


# ---- timing ---------------------------------------------------------------------------------------

def timed(fn: Callable[[], Outcome], device: str) -> tuple[float, Outcome]:
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    outcome = fn()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, outcome


def quartiles(values: list[float]) -> tuple[float, float, float]:
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


def measure(cfg: BenchConfig) -> list[dict]:
    """Run every (library, solver, phase) entry interleaved; one row per entry."""
    torch.manual_seed(0)
    cell = TransformerStyleCell(cfg.d_model, cfg.n_head, cfg.d_inner).to(cfg.device)
    injection = torch.randn(cfg.batch, cfg.seq_len, 3 * cfg.d_model, device=cfg.device)
    readout = torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, device=cfg.device)
    z0 = torch.zeros(cfg.batch, cfg.seq_len, cfg.d_model, device=cfg.device)

    def loss_fn(z):
        return (z * readout).mean()

    libraries = {"deq-harness": (ours_forward, ours_train_step)}
    if torchdeq_version() is not None:
        libraries["torchdeq"] = (torchdeq_forward, torchdeq_train_step)

    entries: dict[tuple[str, str, str], Callable[[Counted], Outcome]] = {}
    for source, (forward, train_step) in libraries.items():
        for name in sorted(deq.SOLVERS):
            entries[source, name, "forward"] = (
                lambda f, forward=forward, name=name: forward(name, f, z0, cfg.tol, cfg.max_iter))
            entries[source, name, "forward_fixed_nfe"] = (
                lambda f, forward=forward, name=name: forward(name, f, z0, 1e-30, cfg.fixed_nfe))
            entries[source, name, "solver_only"] = (
                lambda f, forward=forward, name=name: forward(name, f, z0, 1e-30, cfg.fixed_nfe))
            entries[source, name, "train_step"] = (
                lambda f, train_step=train_step, name=name: train_step(name, f, z0, cfg, loss_fn))

    def f(z):
        return cell(z, injection)

    def f_cheap(z):  # elementwise and contractive: the solver's own work dominates the wall time
        return torch.tanh(0.5 * z + injection[..., : cfg.d_model])

    walls: dict = {key: [] for key in entries}
    outcomes: dict = {}
    f_evals = []
    for round_ in range(cfg.rounds + 1):  # round 0 warms up and is not recorded
        with torch.no_grad():
            f_evals.append(timed(lambda: Outcome(0, f(z0).numel(), 0.0, 0.0), cfg.device)[0])
        order = list(entries.items())
        if round_ % 2:  # A B ... B A: no entry always runs right after the same neighbour
            order.reverse()
        for key, run in order:
            cell.zero_grad(set_to_none=True)
            fn = f_cheap if key[2] == "solver_only" else f
            wall, outcome = timed(lambda: run(Counted(fn)), cfg.device)
            if round_ > 0:
                walls[key].append(wall)
                outcomes[key] = outcome
    f_ms = statistics.median(f_evals[1:]) * 1e3

    rows = []
    for (source, name, phase), wall in walls.items():
        q1, median, q3 = (1e3 * v for v in quartiles(wall))
        outcome = outcomes[source, name, phase]
        rows.append({
            "source": source, "solver": name, "phase": phase,
            "wall_ms": median, "wall_ms_q1": q1, "wall_ms_q3": q3,
            "ms_per_nfe": median / outcome.nfe,
            "overhead_ms_per_nfe": median / outcome.nfe - f_ms if phase.startswith("forward") else None,
            "f_eval_ms": f_ms,
            "round_walls_ms": " ".join(f"{1e3 * v:.2f}" for v in wall),
            **asdict(outcome),
        })
    return rows


# ---- report -------------------------------------------------------------------------------------

def targets(rows: list[dict], cfg: BenchConfig) -> list[tuple[str, float | None, str, bool | None]]:
    """The issue's targets as (what, measured value, goal, met)."""
    by = {(r["source"], r["solver"], r["phase"]): r for r in rows}

    def ratio(a: tuple[str, str], b: tuple[str, str], phase: str = "forward_fixed_nfe") -> float | None:
        """Median over rounds of the within-round ratio of wall per f call, A/B: drift cancels."""
        if a + (phase,) not in by or b + (phase,) not in by:
            return None
        per_call_a, per_call_b = ([float(v) / by[key + (phase,)]["nfe"] for v in by[key + (phase,)]["round_walls_ms"].split()]
                                  for key in (a, b))
        return statistics.median(x / y for x, y in zip(per_call_a, per_call_b))

    ours, peer = "deq-harness", "torchdeq"
    out = []
    for label, value, limit in [
        ("our Broyden / our Anderson, wall per f call (equal nfe)", ratio((ours, "broyden"), (ours, "anderson")), 1.3),
        ("our Broyden / torchdeq Broyden, wall at equal nfe", ratio((ours, "broyden"), (peer, "broyden")), 0.7),
        ("our Anderson / torchdeq Anderson, wall at equal nfe", ratio((ours, "anderson"), (peer, "anderson")), 1.0),
    ]:
        out.append((label, value, f"<= {limit}", None if value is None else value <= limit))
    for label, a, b in [("our Broyden / our Anderson", (ours, "broyden"), (ours, "anderson")),
                        ("our Broyden / torchdeq Broyden", (ours, "broyden"), (peer, "broyden")),
                        ("our Anderson / torchdeq Anderson", (ours, "anderson"), (peer, "anderson"))]:
        value = ratio(a, b, "solver_only")
        if value is not None:  # where the time goes: the solvers' own work, for reference
            out.append((f"solver only (cheap f): {label}", value, "", None))
    for source in (ours, peer):
        for name in ("anderson", "broyden"):
            row = by.get((source, name, "train_step"))
            if row is not None:
                value = row["bwd_rel_residual_max"]
                out.append((f"{source} {name} backward reaches its tolerance (worst rel residual)", value,
                            f"<= {cfg.backward_tol:g}", value <= cfg.backward_tol))
    return out


def render_markdown(cfg: BenchConfig, preset: str, rows: list[dict]) -> str:
    header = (f"# Solver benchmark ({preset} preset)\n\n"
              f"Transformer-style cell, width {cfg.d_model}, {cfg.n_head} heads, FF {cfg.d_inner}; "
              f"sequence {cfg.seq_len}, batch {cfg.batch}, on {describe_device(cfg.device)}; torch "
              f"{torch.__version__}, torchdeq {torchdeq_version() or 'not installed'}.\n"
              f"Forward: rel tol {cfg.tol:g}, cap {cfg.max_iter}; backward: rel tol {cfg.backward_tol:g}, "
              f"cap {cfg.backward_max_iter}; fixed-nfe phase: {cfg.fixed_nfe} f calls. "
              f"Medians of {cfg.rounds} interleaved rounds after a warm-up (IQR in brackets); "
              f"one f evaluation takes {rows[0]['f_eval_ms']:.1f} ms.\n"
              + ("\nSmoke scale: the sizes only exercise the code; the targets are meant for the cpu and "
                 "paper presets.\n" if preset == "smoke" else ""))
    lines = [header, "| library | solver | phase | wall ms [IQR] | iters | nfe | ms/nfe | overhead ms/nfe | "
             "fwd rel res (max) | fwd conv | bwd iters | bwd rel res (max) | bwd conv |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        def fmt(value, spec):
            return "" if value is None else format(value, spec)
        lines.append(
            f"| {r['source']} | {r['solver']} | {r['phase']} | {r['wall_ms']:.1f} [{r['wall_ms_q1']:.1f}, "
            f"{r['wall_ms_q3']:.1f}] | {r['n_iter']} | {r['nfe']} | {r['ms_per_nfe']:.2f} | "
            f"{fmt(r['overhead_ms_per_nfe'], '.2f')} | {r['rel_residual_max']:.1e} | "
            f"{r['converged_fraction']:.2f} | {fmt(r['bwd_n_iter'], 'd')} | "
            f"{fmt(r['bwd_rel_residual_max'], '.1e')} | {fmt(r['bwd_converged_fraction'], '.2f')} |")
    lines += ["", "Ratios compare wall time per f call, as medians over rounds of the within-round ratio.", "",
              "| target | measured | goal | met |", "|---|---|---|---|"]
    for label, value, goal, met in targets(rows, cfg):
        shown = "n/a" if value is None else f"{value:.3g}"
        lines.append(f"| {label} | {shown} | {goal} | {'' if met is None else ('yes' if met else 'NO')} |")
    return "\n".join(lines) + "\n"


def describe_device(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    return f"CPU ({torch.get_num_threads()} threads)"


def run_benchmark(preset: str = "cpu", csv_path: str | Path | None = None,
                  md_path: str | Path | None = None) -> list[dict]:
    """Measure, print the Markdown table, and write CSV / Markdown files when paths are given."""
    import pandas as pd

    cfg = preset_config(preset)
    rows = measure(cfg)
    for row in rows:
        row.update(preset=preset, device=describe_device(cfg.device))
    markdown = render_markdown(cfg, preset, rows)
    print(markdown, flush=True)
    if csv_path is not None:
        atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    if md_path is not None:
        atomic_write_text(md_path, markdown)
    return rows
