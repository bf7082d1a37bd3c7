"""Table 4: time per training and inference step of a DEQ against its explicit counterpart.

The paper's two pairs (WikiText-103): ``transformer``, the adaptive DEQ-Transformer medium against the
18-layer Transformer-XL; ``trellis``, DEQ-TrellisNet against the 70-layer TrellisNet (auxiliary loss).
Every entry runs on the same Zipf-drawn batch, its segment memory carried from its own previous step:
``explicit``; ``deq`` with its row's solver settings (training and evaluation); ``deq_matched``, the
DEQ with its forward cap at the explicit depth and an unreachable tolerance, so it makes as many f
calls as the explicit model has layers. Phases: ``train`` (forward, backward, clipping, Adam) and
``infer`` (eval mode, no graph). All (entry, phase) jobs of a pair are timed interleaved
(:func:`deq.bench.common.interleaved`); reported: medians [IQR], the median of the within-round ratios
DEQ / explicit (drift common to a round cancels) and the ratio of the medians.

Where the DEQ's time goes is measured after the rounds on the same model, batch and settings: one f
call, the forward solve alone (solver overhead = solve wall - f calls x f time) and in training the
backward solve alone (its vector-Jacobian products timed the same way).
"""

from __future__ import annotations

import itertools
import statistics
import time
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import deq
from deq.bench.common import (clock, columns, describe_device, interleaved, quartiles, scales,
                              write_rows, zipf_tokens)
from deq.models.layers import weights_computed_once
from deq.models.lm import LanguageModel, LMOutput
from deq.presets import RuntimeScale
from deq.provenance import REPO
from deq.report.benchmarks import render_runtime
from deq.rows.build import build_model
from deq.rows.configs import LMConfig, get_config, on_dataset
from deq.settings import SolverSettings

__all__ = ["EXTRA_PAIRS", "GOALS", "PAIRS", "Pair", "RuntimeConfig", "RuntimeRow", "preset_config", "run_runtime_benchmark"]

ENTRIES = ("explicit", "deq", "deq_matched")
PHASES = ("train", "infer")
GOALS = {"train": 2.0, "infer": 1.3}  # the issue's targets for DEQ / explicit (at equal perplexity settings)
UNREACHABLE_TOL = 1e-30  # forward tolerance of deq_matched: no sample meets it, so it runs to its cap
Batch = tuple[torch.Tensor, torch.Tensor]  # (tokens, targets), each (B, T) int64


@dataclass(frozen=True)
class Pair:
    deq: str  # registry name of the DEQ row
    explicit: str  # registry name of the explicit row it is compared with
    paper_train: float | None  # Table 4: DEQ / explicit training time (None: not in Table 4)
    paper_infer: float | None  # Table 4: DEQ / explicit inference time
    clip: float  # gradient-norm clipping of the official script (transformer 0.25, TrellisNet 0.07)


PAIRS = {
    "transformer": Pair("wt103-deq-transformer-medium-adaptive", "wt103-transformer-xl-medium-18-adaptive",
                        2.82, 1.76, 0.25),
    "trellis": Pair("wt103-deq-trellisnet", "wt103-trellisnet-70-aux", 2.40, 1.64, 0.07),
}
# Timed on request only (the GPU script's throughput part), not in Table 4: Table 3's non-adaptive
# DEQ-Transformer medium against the 16-layer Transformer-XL it is compared with there.
EXTRA_PAIRS = {"transformer-medium": Pair("wt103-deq-transformer-medium", "wt103-transformer-xl-medium-16",
                                          None, None, 0.25)}


@dataclass(frozen=True)
class RuntimeConfig:
    preset: str  # 'smoke', 'cpu' or 'paper'; also the model preset of deq.rows.configs
    scale: RuntimeScale  # segments, batch, rounds and vocabulary (deq.presets)
    device: str  # 'cpu', or 'cuda' when one is available (paper preset)


def preset_config(preset: str, device: str | None = None) -> RuntimeConfig:
    paper_gpu = preset == "paper" and torch.cuda.is_available()
    return RuntimeConfig(preset, scales(preset).runtime, device or ("cuda" if paper_gpu else "cpu"))


# ---- one step ---------------------------------------------------------------------------------------

def matched_settings(settings: SolverSettings, depth: int) -> SolverSettings:
    """Forward cap = ``depth`` with an unreachable tolerance, in training and in evaluation.

    >>> s = matched_settings(SolverSettings(max_iter=30, backward_max_iter=35), depth=18)
    >>> s.max_iter, s.eval_max_iter, s.backward_max_iter
    (18, 18, 35)
    """
    return replace(settings, tol=UNREACHABLE_TOL, max_iter=depth, eval_tol=UNREACHABLE_TOL, eval_max_iter=depth)


def step(model: LanguageModel, optimizer: torch.optim.Optimizer, batch: Batch, memory, phase: str, aux_weight: float,
         clip: float, device: str, **options) -> tuple[dict[str, float], LMOutput]:
    """One ``train`` step (forward, backward, clipping, Adam) or ``infer`` forward (eval mode, no graph);
    returns ({part: seconds}, LMOutput). ``options`` go to the model for this call (a DEQ's ``settings``)."""
    training = phase == "train"
    model.train(training)
    optimizer.zero_grad(set_to_none=True)
    t0 = clock(device)
    with torch.set_grad_enabled(training):
        out = model(*batch, memory, **options)
    t1 = clock(device)
    if not training:
        return {"forward": t1 - t0}, out
    (out.loss if out.aux_loss is None else out.loss + aux_weight * out.aux_loss).backward()
    t2 = clock(device)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return {"forward": t1 - t0, "backward": t2 - t1, "optimizer": clock(device) - t2}, out


# ---- where the time goes ----------------------------------------------------------------------------

def breakdown(model: LanguageModel, settings: SolverSettings | None, batch: Batch, memory, phase: str, repeats: int,
              device: str) -> dict:
    """One f call without a graph from z = 0 (the explicit model: its first layer), and the DEQ's solves
    timed alone, per call and in all: the forward solve, and in training the backward solve. Each solve
    takes exactly the arguments a training step gives it (``settings.forward_args``, ``backward_args``)."""
    training, untied = phase == "train", hasattr(model.driver, "cells")  # untied: its first layer and memory
    cell = model.driver.cells[0] if untied else model.driver.cell
    memory = (memory[0] if memory else None) if untied else memory
    model.train(training)
    with weights_computed_once(cell):
        injection = cell.inject(model.embedding(batch[0]), memory)
        z0 = cell.init_state(injection)
        cell.reset_dropout(z0)

        def f(z):
            return cell(z, injection, memory)

        jobs = {"f": torch.no_grad()(lambda: f(z0))}
        if settings is not None:
            jobs["fwd_solve"] = lambda: deq.solve(f, z0, **settings.forward_args(training))
        if settings is not None and training:
            z_star = jobs["fwd_solve"]()[0].detach().requires_grad_()
            fz = f(z_star)  # the one tracked f(z*) of a training step, (B, T, d_state)
            h = cell.readout(fz)
            loss = model.softmax(h.reshape(-1, h.shape[-1]), batch[1].reshape(-1)).mean()
            (grad,) = torch.autograd.grad(loss, fz, retain_graph=True)  # dl/dz*: what the backward solve gets

            def vjp_plus_grad(y):  # the backward's map y -> y J_f(z*) + dl/dz*, as in deq.backward
                return torch.autograd.grad(fz, z_star, y, retain_graph=True)[0] + grad

            jobs["vjp"] = lambda: vjp_plus_grad(grad)
            jobs["bwd_solve"] = lambda: deq.solve(vjp_plus_grad, torch.zeros_like(grad), **settings.backward_args())
        runs = interleaved(jobs, repeats, device)
    ms = {key: 1e3 * statistics.median(wall for wall, _ in kept) for key, kept in runs.items()}
    out = {"f_ms": ms["f"]} | ({"vjp_ms": ms["vjp"]} if "vjp" in ms else {})
    for solve, call, per in (("fwd", "f", "call"), ("bwd", "vjp", "iter")):
        if f"{solve}_solve" in runs:
            nfe = runs[f"{solve}_solve"][-1][1][1].nfe  # the last run's SolverStats
            total, wall = nfe * ms[call], ms[f"{solve}_solve"]
            out |= {f"{solve}_solve_ms": wall, f"{solve}_solve_nfe": nfe, f"{solve}_{call}_total_ms": total,
                    f"{solve}_overhead_ms": wall - total, f"{solve}_overhead_ms_per_{per}": (wall - total) / nfe}
    return out


# ---- measuring one pair ------------------------------------------------------------------------------

@dataclass
class RuntimeRow:
    """One (pair, entry, phase) job: a row of ``runtime.csv``; times in ms, medians over the timed rounds."""

    pair: str
    entry: str  # 'explicit', 'deq' or 'deq_matched'
    phase: str  # 'train' or 'infer'
    model: str  # registry row
    preset: str
    device: str
    tgt_len: int
    batch: int
    mem_len: int
    n_token: int
    explicit_depth: int
    rounds: int  # timed rounds (fewer than asked when the time budget ran out)
    step_ms: float
    step_ms_q1: float
    step_ms_q3: float
    forward_ms: float  # the parts of the step
    backward_ms: float | None
    optimizer_ms: float | None
    tokens_per_s: float
    round_walls_ms: str  # the step's wall in every round, space-separated
    fwd_solver: str  # the forward solves of the timed steps ('layers': the explicit model)
    fwd_max_iter: int
    fwd_nfe: float
    fwd_n_iter: float
    f_ms: float  # one f call alone (explicit: one layer)
    fwd_tol: float | None = None
    fwd_at_cap_fraction: float | None = None
    fwd_rel_residual_max: float | None = None
    fwd_converged_fraction: float | None = None
    bwd_solver: str | None = None  # the backward solves of the timed steps (DEQ, train)
    bwd_tol: float | None = None
    bwd_max_iter: int | None = None
    bwd_n_iter: float | None = None
    bwd_at_cap_fraction: float | None = None
    bwd_rel_residual_max: float | None = None
    bwd_converged_fraction: float | None = None
    fwd_solve_ms: float | None = None  # the solves timed alone (breakdown)
    fwd_solve_nfe: int | None = None
    fwd_f_total_ms: float | None = None
    fwd_overhead_ms: float | None = None
    fwd_overhead_ms_per_call: float | None = None
    vjp_ms: float | None = None
    bwd_solve_ms: float | None = None
    bwd_solve_nfe: int | None = None
    bwd_vjp_total_ms: float | None = None
    bwd_overhead_ms: float | None = None
    bwd_overhead_ms_per_iter: float | None = None
    ratio: float | None = None  # DEQ / explicit (ratios)
    ratio_q1: float | None = None
    ratio_q3: float | None = None
    ratio_of_medians: float | None = None
    round_ratios: str | None = None
    paper_ratio: float | None = None
    goal: float | None = None
    goal_met: bool | None = None


def measure_pair(key: str, cfg: RuntimeConfig, deadline: float | None = None) -> list[RuntimeRow]:
    """Time every (entry, phase) of one pair at random init, interleaved; one row per job. Its rows run at the
    benchmark's preset, vocabulary and memory length (= tgt_len), the explicit one at the paper's depth
    where the scale says so."""
    pair, rows = (PAIRS | EXTRA_PAIRS)[key], []
    for name in (pair.deq, pair.explicit):
        row = on_dataset(get_config(name, cfg.preset, paper_depth=cfg.scale.paper_depth), cfg.scale.dataset)
        rows.append(replace(row, mem_len=min(row.mem_len, cfg.scale.tgt_len)))
    deq_row, explicit_row = rows
    torch.manual_seed(0)
    with torch.device(cfg.device):
        models = {"explicit": build_model(explicit_row), "deq": build_model(deq_row)}
    ids = zipf_tokens(deq_row.n_token, (2, cfg.scale.batch, cfg.scale.tgt_len + 1), torch.Generator().manual_seed(0))
    batches = [(b[:, :-1].contiguous().to(cfg.device), b[:, 1:].contiguous().to(cfg.device)) for b in ids]
    return time_pair(key, pair, cfg, models, deq_row, explicit_row, deq_row.solver, batches, deadline)


def time_pair(key: str, pair: Pair, cfg: RuntimeConfig, models: dict[str, LanguageModel], deq_row: LMConfig,
              explicit_row: LMConfig, deq_settings: SolverSettings, batches: list[Batch],
              deadline: float | None = None) -> list[RuntimeRow]:
    """Time every (entry, phase) of ``models`` ('deq', 'explicit') interleaved on ``batches``; one row per job.

    The DEQ runs with ``deq_settings`` ('deq') and capped at the explicit depth ('deq_matched')."""
    # Learning rate 0: Adam does all its work, but the weights stay at their initial values, so every
    # round times the same model (fitting the tokens would change the solver's iteration counts,
    # and so the step time, from round to round).
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=0.0) for name, m in models.items()}
    settings = {"explicit": None, "deq": deq_settings,
                "deq_matched": matched_settings(deq_settings, explicit_row.n_layer)}
    memory = {}  # (entry, phase) -> the segment memory carried to that job's next step

    def job(entry: str, phase: str):
        name = "explicit" if entry == "explicit" else "deq"
        row, rounds = (explicit_row if entry == "explicit" else deq_row), itertools.cycle(batches)
        options = {} if entry == "explicit" else {"settings": settings[entry]}  # a DEQ's, for this call only

        def run() -> tuple[dict[str, float], object]:  # ({part: seconds}, EquilibriumInfo) of one step
            parts, out = step(models[name], optimizers[name], next(rounds), memory.get((entry, phase)), phase,
                              row.aux_weight, pair.clip, cfg.device, **options)
            memory[entry, phase] = out.memory
            return parts, out.info
        return run

    runs = interleaved({(e, p): job(e, p) for p in PHASES for e in ENTRIES}, cfg.scale.rounds, cfg.device, deadline)
    walls = {job: [wall for wall, _ in kept] for job, kept in runs.items()}
    rows = []
    for (entry, phase), kept in runs.items():
        model, row = (models["explicit"], explicit_row) if entry == "explicit" else (models["deq"], deq_row)
        q1, median, q3 = (1e3 * v for v in quartiles(walls[entry, phase]))
        parts = [1e3 * statistics.median(p[part] for _, (p, _) in kept) if part in kept[0][1][0] else None
                 for part in ("forward", "backward", "optimizer")]
        rows.append(RuntimeRow(
            key, entry, phase, row.name, cfg.preset, describe_device(cfg.device), cfg.scale.tgt_len, cfg.scale.batch,
            row.mem_len, row.n_token, explicit_row.n_layer, len(kept), median, q1, q3, *parts,
            cfg.scale.batch * cfg.scale.tgt_len / median * 1e3, " ".join(f"{1e3 * v:.3f}" for v in walls[entry, phase]),
            **solves([info for _, (_, info) in kept], settings[entry], phase, explicit_row),
            **breakdown(model, settings[entry], batches[0], memory[entry, phase], phase, cfg.scale.breakdown_repeats,
                        cfg.device),
            **ratios(entry, phase, walls[entry, phase], walls["explicit", phase], pair)))
    return rows


def solves(infos: list, settings: SolverSettings | None, phase: str, explicit_row: LMConfig) -> dict:
    """What the timed steps' solves did (from the driver's EquilibriumInfo; medians over rounds), and with
    which arguments (``settings.forward_args`` / ``backward_args``)."""
    if settings is None:  # the explicit model: one f call per layer
        return {"fwd_solver": "layers", "fwd_max_iter": explicit_row.n_layer, "fwd_nfe": explicit_row.n_layer,
                "fwd_n_iter": explicit_row.n_layer}
    out = {"fwd_nfe": statistics.median(info.forward.nfe for info in infos)}
    backward = [info.backward for info in infos if info.backward is not None]
    for prefix, stats, args in (("fwd", [info.forward for info in infos], settings.forward_args(phase == "train")),
                                ("bwd", backward if phase == "train" else [], settings.backward_args())):
        if stats:
            out |= {f"{prefix}_solver": args["solver"], f"{prefix}_tol": args["tol"],
                    f"{prefix}_max_iter": args["max_iter"],
                    f"{prefix}_n_iter": statistics.median(s.n_iter for s in stats),
                    f"{prefix}_at_cap_fraction": sum(s.n_iter >= args["max_iter"] for s in stats) / len(stats),
                    f"{prefix}_rel_residual_max": max(s.rel_residual.max().item() for s in stats),
                    f"{prefix}_converged_fraction": statistics.mean(s.fraction_converged for s in stats)}
    return out


def ratios(entry: str, phase: str, mine: list[float], base: list[float], pair: Pair) -> dict:
    """A DEQ entry's ratio fields (none for the explicit model): median [IQR] of the within-round ratios
    of its walls ``mine`` to ``base`` (the explicit model's in the same rounds and phase), and the ratio
    of the medians."""
    if entry == "explicit":
        return {}
    per_round = [a / b for a, b in zip(mine, base)]
    q1, median, q3 = quartiles(per_round)
    return dict(ratio=median, ratio_q1=q1, ratio_q3=q3, round_ratios=" ".join(f"{v:.4f}" for v in per_round),
                ratio_of_medians=statistics.median(mine) / statistics.median(base),
                paper_ratio=pair.paper_train if phase == "train" else pair.paper_infer, goal=GOALS[phase],
                goal_met=median <= GOALS[phase] if entry == "deq" else None)


def run_runtime_benchmark(preset: str = "cpu", csv_path: str | Path | None = None,
                          md_path: str | Path | None = None, *, pairs: Iterable[str] | None = None,
                          rounds: int | None = None, device: str | None = None,
                          deadline: float | None = None, batch: int | None = None) -> list[RuntimeRow]:
    """Measure Table 4's pairs (or ``pairs``, which may name :data:`EXTRA_PAIRS`), print the Markdown, write CSV / Markdown when paths are given.

    ``deadline`` (a ``time.monotonic()`` value) is shared out equally among the pairs still to run; a
    pair stops its rounds early once its share is spent (after at least one timed round), and pairs
    not started by ``deadline`` are skipped. The files are rewritten after every pair, so an
    interrupted run keeps the pairs that finished. A pair that does not fit in GPU memory is skipped
    and said so.
    """
    cfg = preset_config(preset, device)
    cfg = replace(cfg, scale=replace(cfg.scale, rounds=rounds or cfg.scale.rounds, batch=batch or cfg.scale.batch))
    keys = list(PAIRS) if pairs is None else list(pairs)
    for key in keys:
        if key not in PAIRS | EXTRA_PAIRS:
            raise ValueError(f"unknown pair {key!r}; choose from {list(PAIRS | EXTRA_PAIRS)}")
    rows: list[RuntimeRow] = []
    notes: list[str] = []

    def markdown() -> str:
        return render_runtime([columns(r) for r in rows], cfg.preset, cfg.scale, describe_device(cfg.device),
                              torch.__version__, notes)

    for i, key in enumerate(keys):
        if deadline is not None and time.monotonic() > deadline:
            notes.append(f"{key}: skipped, the time budget was spent before it started.")
        else:
            # an equal share of the time left for each pair still to run
            share = None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / (len(keys) - i)
            try:
                rows += measure_pair(key, cfg, share)
            except torch.cuda.OutOfMemoryError as error:
                notes.append(f"{key}: skipped, out of GPU memory ({str(error).splitlines()[0]})")
            finally:
                torch.cuda.empty_cache()  # a no-op where CUDA was never initialised
            if rows and rows[-1].pair == key and rows[-1].rounds < cfg.scale.rounds:
                notes.append(f"{key}: {rows[-1].rounds} of {cfg.scale.rounds} rounds, the time budget ran out.")
        write_rows(rows, csv_path if rows else None, md_path, markdown())
    print(markdown(), flush=True)
    return rows


# ---- Table 4 at the paper's widths on a CPU (committed; `make paper-runtime`) -------------------------

def main(argv: list[str] | None = None) -> None:
    """``python -m deq.bench.runtime --paper-widths --out CSV``: Table 4's transformer pair at the paper's exact
    widths on this machine's CPU (random init, its solves to the cap), at a small batch (time grows linearly
    with the batch on a CPU, so the ratio is the batch-15 one), a few interleaved rounds."""
    import argparse

    import pandas as pd

    from deq.io import atomic_write_text
    from deq.report.readme import provenance, with_provenance

    parser = argparse.ArgumentParser(prog="python -m deq.bench.runtime", description=main.__doc__.splitlines()[0])
    parser.add_argument("--paper-widths", action="store_true", required=True, help="the paper's exact widths")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (a Markdown beside it)")
    parser.add_argument("--batch", type=int, default=2, help="segments of 150 tokens per step (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up (default 2)")
    args = parser.parse_args(argv)
    start = time.monotonic()
    run_runtime_benchmark("paper", args.out, args.out.with_suffix(".md"), pairs=["transformer"], rounds=args.rounds,
                          device="cpu", batch=args.batch)
    command = ["python", "-m", "deq.bench.runtime", "--paper-widths", "--batch", str(args.batch), "--rounds",
               str(args.rounds)]
    fields = provenance(REPO, command, time.monotonic() - start)
    atomic_write_text(args.out, with_provenance(pd.read_csv(args.out), fields).to_csv(index=False))


if __name__ == "__main__":
    main()
