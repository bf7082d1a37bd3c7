"""Solver benchmark: our solvers against torchdeq 0.1.0 on the DEQ-Transformer's cell.

The cell is :class:`deq.models.transformer.TransformerCell` at the preset's widths, without weight norm,
dropout or segment memory, every weight N(0, 0.05) as at the start of training, with a random
injection u: f(z) = cell(z, u). Four phases, all entries timed interleaved in one process
(:func:`deq.bench.common.interleaved`), reported as medians [IQR]:

- ``forward``: solve to ``tol`` (relative residual) within ``max_iter``;
- ``forward_fixed_nfe``: ``tol`` unreachable, so every entry makes ``fixed_nfe`` f calls: wall per
  call, and the solver's own overhead per call (minus one f evaluation), compare at equal work;
- ``solver_only``: the same with a cheap elementwise f, so the wall is the solver's own work (this f
  reaches an exact float fixed point, so a solver may stop early: compare per call);
- ``train_step``: forward solve, implicit backward with the same solver, parameter gradients.

f calls are counted by wrapping f, alike for both libraries. torchdeq is optional (the ``bench``
extra); without it only our rows are written.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

import deq
from deq.bench.common import columns, describe_device, interleaved, quartiles, scales, write_rows
from deq.models.cell_configs import TransformerCellConfig
from deq.models.transformer import TransformerCell
from deq.presets import SolverScale
from deq.provenance import version
from deq.report.benchmarks import render_solvers


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


def ours_train_step(name: str, f: Counted, z0: torch.Tensor, cfg: SolverScale, loss_fn) -> Outcome:
    z, info = deq.equilibrium(f, z0, solver=name, tol=cfg.tol, max_iter=cfg.max_iter, stop_mode="rel",
                              backward="implicit", backward_solver=name, backward_tol=cfg.backward_tol,
                              backward_max_iter=cfg.backward_max_iter)
    loss_fn(z).backward()
    fwd, bwd = info.forward, info.backward
    return Outcome(fwd.n_iter, f.calls, fwd.rel_residual.max().item(), fwd.fraction_converged,
                   bwd.n_iter, bwd.rel_residual.max().item(), bwd.fraction_converged)


# The solvers both libraries have (ours -> torchdeq's name): the ones compared.
TORCHDEQ_NAMES = {"anderson": "anderson", "broyden": "broyden", "picard": "fixed_point_iter"}


def torchdeq_forward(name: str, f: Counted, z0: torch.Tensor, tol: float, max_iter: int) -> Outcome:
    from torchdeq.solver import get_solver

    # torchdeq's Broyden evaluates f once before its first step; give it the same number of calls.
    cap = max_iter - 1 if name == "broyden" else max_iter
    with torch.no_grad():
        _, _, info = get_solver(TORCHDEQ_NAMES[name])(f, z0, max_iter=cap, tol=tol, stop_mode="rel")
    rel = info["rel_lowest"]
    return Outcome(f.calls, f.calls, rel.max().item(), (rel <= tol).float().mean().item())


def torchdeq_train_step(name: str, f: Counted, z0: torch.Tensor, cfg: SolverScale, loss_fn) -> Outcome:
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


# ---- measuring ------------------------------------------------------------------------------------

@dataclass
class SolverRow:
    """One (library, solver, phase) entry: a row of ``solvers.csv``."""

    source: str  # 'deq-harness' or 'torchdeq'
    solver: str  # 'anderson', 'broyden' or 'picard'
    phase: str  # 'forward', 'forward_fixed_nfe', 'solver_only' or 'train_step'
    wall_ms: float  # median over rounds
    wall_ms_q1: float
    wall_ms_q3: float
    ms_per_nfe: float  # wall per f call
    overhead_ms_per_nfe: float | None  # wall per f call minus one f evaluation (forward phases)
    f_eval_ms: float  # one f evaluation, median over rounds
    round_walls_ms: str  # every round's wall, space-separated
    outcome: Outcome  # what the entry reported in its last round (its fields are columns)
    preset: str
    device: str


def measure(cfg: SolverScale, device: str, preset: str) -> list[SolverRow]:
    """Run every (library, solver, phase) entry and one f evaluation interleaved; one row per entry."""
    torch.manual_seed(0)
    cell = TransformerCell(TransformerCellConfig(cfg.d_model, cfg.n_head, cfg.d_model // cfg.n_head, cfg.d_inner,
                                                 dropout=0.0, weight_norm=False, init_std=0.05)).to(device)
    injection = cell.inject(torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, device=device), None).detach()
    readout = torch.randn(cfg.batch, cfg.seq_len, cfg.d_model, device=device)
    z0 = torch.zeros(cfg.batch, cfg.seq_len, cfg.d_model, device=device)

    def loss_fn(z):
        return (z * readout).mean()

    def f(z):
        return cell(z, injection, None)

    def f_cheap(z):  # elementwise and contractive: the solver's own work dominates the wall time
        return torch.tanh(0.5 * z + injection[..., : cfg.d_model])

    def entry(run: Callable[..., Outcome], name: str, fn, *args) -> Callable[[], Outcome]:
        def job() -> Outcome:
            cell.zero_grad(set_to_none=True)
            return run(name, Counted(fn), z0, *args)
        return job

    libraries = {"deq-harness": (ours_forward, ours_train_step)}
    if version("torchdeq") is not None:
        libraries["torchdeq"] = (torchdeq_forward, torchdeq_train_step)
    jobs = {"f": torch.no_grad()(lambda: f(z0))}
    for source, (forward, train_step) in libraries.items():
        for name in sorted(TORCHDEQ_NAMES):
            jobs[source, name, "forward"] = entry(forward, name, f, cfg.tol, cfg.max_iter)
            jobs[source, name, "forward_fixed_nfe"] = entry(forward, name, f, 1e-30, cfg.fixed_nfe)
            jobs[source, name, "solver_only"] = entry(forward, name, f_cheap, 1e-30, cfg.fixed_nfe)
            jobs[source, name, "train_step"] = entry(train_step, name, f, cfg, loss_fn)
    runs = interleaved(jobs, cfg.rounds, device)
    f_ms = 1e3 * statistics.median(wall for wall, _ in runs.pop("f"))
    rows = []
    for (source, name, phase), kept in runs.items():
        walls = [wall for wall, _ in kept]
        q1, median, q3 = (1e3 * v for v in quartiles(walls))
        outcome = kept[-1][1]
        overhead = median / outcome.nfe - f_ms if phase.startswith("forward") else None
        rows.append(SolverRow(source, name, phase, median, q1, q3, median / outcome.nfe, overhead, f_ms,
                              " ".join(f"{1e3 * v:.2f}" for v in walls), outcome, preset, describe_device(device)))
    return rows


def run_benchmark(preset: str = "cpu", csv_path: str | Path | None = None,
                  md_path: str | Path | None = None) -> list[SolverRow]:
    """Measure, print the Markdown table, and write CSV / Markdown files when paths are given."""
    cfg = scales(preset).solvers  # ours is the cell of the solver issue (256 wide, 128 x 8) at cpu and paper
    rows = measure(cfg, "cuda" if preset == "paper" and torch.cuda.is_available() else "cpu", preset)
    versions = f"torch {torch.__version__}, torchdeq {version('torchdeq') or 'not installed'}"
    markdown = render_solvers([columns(r) for r in rows], cfg, preset, versions)
    print(markdown, flush=True)
    write_rows(rows, csv_path, md_path, markdown)
    return rows
