"""Table 4: time per training and inference step of a DEQ against its explicit counterpart.

Two pairs, as the paper's Table 4 (WikiText-103):

- ``transformer``: DEQ-Transformer medium, adaptive (``wt103-deq-transformer-medium-adaptive``) against
  the 18-layer Transformer-XL (``wt103-transformer-xl-medium-18-adaptive``);
- ``trellis``: DEQ-TrellisNet (``wt103-deq-trellisnet``) against the 70-layer TrellisNet with its
  auxiliary loss (``wt103-trellisnet-70-aux``).

Every entry runs on the same random batch (tokens drawn from a Zipf law over the frequency-ordered
vocabulary, as real text roughly is, so the adaptive softmax sees a realistic mix of clusters), with
its segment memory carried from its own previous step:

- ``explicit``: the explicit model (untied Transformer-XL stack, weight-tied TrellisNet);
- ``deq``: the DEQ with its row's solver settings (training: forward cap and tolerance, implicit
  backward; inference: the evaluation settings);
- ``deq_matched``: the same DEQ with its forward cap set to the explicit model's depth and an
  unreachable tolerance, so it makes exactly as many f calls as the explicit model has layers
  (its backward keeps the row's settings).

Phases: ``train`` (forward, backward, gradient-norm clipping and an Adam step) and ``infer``
(eval mode, ``torch.no_grad()``). All (entry, phase) jobs of a pair run once per round, in reversed
order every other round (A B ... / ... B A), for ``rounds`` rounds after a warm-up round, in one
process; CUDA is synchronised around every timed part. Reported: medians with the interquartile
range, the median of the within-round ratios DEQ / explicit (drift common to a round cancels) and
the ratio of the medians.

Where the DEQ's time goes is measured separately on the same model, batch and settings after the
rounds: the time of one f call, the forward solve alone (so solver overhead = solve wall - f calls x
f time), and for training the backward solve alone (its vector-Jacobian products timed the same way),
with the iteration counts taken from the ``EquilibriumInfo`` of the timed steps.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

import torch

import deq
from deq.bench.solvers import describe_device, quartiles, timed
from deq.io import atomic_write_text
from deq.models.drivers import DEQDriver
from deq.models.layers import weights_computed_once
from deq.models.lm import LanguageModel, LMOutput
from deq.rows.build import build_model
from deq.rows.configs import LMConfig, get_config, on_dataset
from deq.settings import SolverSettings

__all__ = ["GOALS", "PAIRS", "PRESETS", "Pair", "RuntimeConfig", "preset_config", "render_markdown",
           "run_runtime_benchmark"]

PRESETS = ("smoke", "cpu", "paper")
ENTRIES = ("explicit", "deq", "deq_matched")
PHASES = ("train", "infer")
GOALS = {"train": 2.0, "infer": 1.3}  # the issue's targets for DEQ / explicit (at equal perplexity settings)
UNREACHABLE_TOL = 1e-30  # forward tolerance of deq_matched: no sample meets it, so it runs to its cap
Batch = tuple[torch.Tensor, torch.Tensor]  # (tokens, targets), each (B, T) int64


@dataclass(frozen=True)
class Pair:
    deq: str  # registry name of the DEQ row
    explicit: str  # registry name of the explicit row it is compared with
    paper_train: float  # Table 4: DEQ / explicit training time
    paper_infer: float  # Table 4: DEQ / explicit inference time
    clip: float  # gradient-norm clipping of the official script (transformer 0.25, TrellisNet 0.07)


PAIRS = {
    "transformer": Pair("wt103-deq-transformer-medium-adaptive", "wt103-transformer-xl-medium-18-adaptive",
                        2.82, 1.76, 0.25),
    "trellis": Pair("wt103-deq-trellisnet", "wt103-trellisnet-70-aux", 2.40, 1.64, 0.07),
}


@dataclass(frozen=True)
class RuntimeConfig:
    preset: str  # 'smoke', 'cpu' or 'paper'; also the model preset of deq.rows.configs
    tgt_len: int  # tokens per segment (the paper's protocol: 150)
    batch: int  # segments per step (the paper's protocol: 15)
    rounds: int  # timed rounds after the warm-up round
    breakdown_repeats: int  # repeats of each separately timed part of the breakdown (median taken)
    dataset: str  # vocabulary: 'wikitext-103' (paper) or 'ptb' (small presets, as for training)
    paper_depth: bool  # explicit rows keep the paper's 18 / 70 layers (cpu), not the preset's shrunk depth
    device: str  # 'cpu', or 'cuda' when one is available (paper preset)


def preset_config(preset: str, device: str | None = None) -> RuntimeConfig:
    """Sizes per preset: ``smoke`` seconds; ``cpu`` a few minutes on 2 cores; ``paper`` the real rows."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {list(PRESETS)}")
    if device is None:
        device = "cuda" if preset == "paper" and torch.cuda.is_available() else "cpu"
    if preset == "smoke":
        return RuntimeConfig(preset, tgt_len=8, batch=2, rounds=3, breakdown_repeats=2, dataset="ptb",
                             paper_depth=False, device=device)
    if preset == "cpu":
        return RuntimeConfig(preset, tgt_len=64, batch=4, rounds=6, breakdown_repeats=3, dataset="ptb",
                             paper_depth=True, device=device)
    return RuntimeConfig(preset, tgt_len=150, batch=15, rounds=6, breakdown_repeats=3, dataset="wikitext-103",
                         paper_depth=True, device=device)


def pair_rows(pair: Pair, cfg: RuntimeConfig) -> tuple[LMConfig, LMConfig]:
    """The (DEQ, explicit) rows at the benchmark's preset, vocabulary and memory length (= tgt_len)."""
    rows = []
    for name in (pair.deq, pair.explicit):
        row = on_dataset(get_config(name, cfg.preset), cfg.dataset)
        if cfg.paper_depth and row.driver != "deq":
            paper = get_config(name, "paper")
            row = replace(row, n_layer=paper.n_layer, aux_every=paper.aux_every)
        rows.append(replace(row, mem_len=min(row.mem_len, cfg.tgt_len)))
    return rows[0], rows[1]


def zipf_batch(n_token: int, batch: int, tgt_len: int, generator: torch.Generator) -> Batch:
    """(tokens, targets), each (batch, tgt_len), ids drawn with P(id) proportional to 1 / (id + 1)."""
    weights = 1.0 / torch.arange(1, n_token + 1, dtype=torch.float64)
    ids = torch.multinomial(weights, batch * (tgt_len + 1), replacement=True, generator=generator)
    ids = ids.view(batch, tgt_len + 1)
    return ids[:, :-1].contiguous(), ids[:, 1:].contiguous()


# ---- one step ---------------------------------------------------------------------------------------

@contextmanager
def solver_settings(model: LanguageModel, settings: SolverSettings | None) -> Iterator[None]:
    """Run a DEQ model with ``settings`` inside the block (None: leave the model as it is)."""
    if settings is None:
        yield
        return
    driver: DEQDriver = model.driver
    saved, driver.settings = driver.settings, settings
    try:
        yield
    finally:
        driver.settings = saved


def matched_settings(settings: SolverSettings, depth: int) -> SolverSettings:
    """Forward cap = ``depth`` with an unreachable tolerance, in training and in evaluation.

    >>> s = matched_settings(SolverSettings(max_iter=30, backward_max_iter=35), depth=18)
    >>> s.max_iter, s.eval_max_iter, s.backward_max_iter
    (18, 18, 35)
    """
    return replace(settings, tol=UNREACHABLE_TOL, max_iter=depth, eval_tol=UNREACHABLE_TOL, eval_max_iter=depth)


def clock(device: str) -> float:
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def train_step(model: LanguageModel, optimizer: torch.optim.Optimizer, batch: Batch, memory, aux_weight: float,
               clip: float, device: str) -> tuple[dict[str, float], LMOutput]:
    """One optimiser step; returns ({part: seconds}, LMOutput)."""
    tokens, targets = batch
    model.train()
    t0 = clock(device)
    optimizer.zero_grad(set_to_none=True)
    out = model(tokens, targets, memory)
    loss = out.loss if out.aux_loss is None else out.loss + aux_weight * out.aux_loss
    t1 = clock(device)
    loss.backward()
    t2 = clock(device)
    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    t3 = clock(device)
    return {"step": t3 - t0, "forward": t1 - t0, "backward": t2 - t1, "optimizer": t3 - t2}, out


def infer_step(model: LanguageModel, batch: Batch, memory, device: str) -> tuple[dict[str, float], LMOutput]:
    """One evaluation forward (no graph); returns ({part: seconds}, LMOutput)."""
    tokens, targets = batch
    model.eval()
    with torch.no_grad():
        t0 = clock(device)
        out = model(tokens, targets, memory)
        t1 = clock(device)
    return {"step": t1 - t0, "forward": t1 - t0}, out


# ---- where the time goes ----------------------------------------------------------------------------

def first_cell(model: LanguageModel, memory) -> tuple[torch.nn.Module, object]:
    """The cell a driver applies (the first of an untied stack) and the memory it sees."""
    driver = model.driver
    if hasattr(driver, "cells"):
        return driver.cells[0], (memory[0] if memory else None)
    return driver.cell, memory


def median_ms(fn: Callable[[], object], repeats: int, device: str) -> float:
    return 1e3 * statistics.median(timed(fn, device)[0] for _ in range(repeats))


def layer_ms(model: LanguageModel, batch: Batch, memory, phase: str, repeats: int, device: str) -> float:
    """One cell call f(z) without a graph, from z = 0, in the phase's mode (dropout on in training)."""
    cell, memory = first_cell(model, memory)
    model.train(phase == "train")
    with torch.no_grad(), weights_computed_once(cell):
        injection = cell.inject(model.embedding(batch[0]), memory)
        z0 = cell.init_state(injection)
        cell.reset_dropout(z0)
        return median_ms(lambda: cell(z0, injection, memory), repeats, device)


def solver_breakdown(model: LanguageModel, settings: SolverSettings, batch: Batch, memory, phase: str, repeats: int,
                     device: str) -> dict:
    """The DEQ's forward solve (and, for training, its backward solve) timed alone, per call and in all."""
    cell, s = model.driver.cell, settings
    training = phase == "train"
    model.train(training)
    out = {}
    with weights_computed_once(cell):
        x = model.embedding(batch[0])  # (B, T, d_model)
        injection = cell.inject(x, memory)
        z0 = cell.init_state(injection)
        cell.reset_dropout(z0)

        def f(z):
            return cell(z, injection, memory)

        with torch.no_grad():
            out["f_ms"] = median_ms(lambda: f(z0), repeats, device)
        runs = [timed(lambda: deq.solve(f, z0, **s.forward_args(training)), device)
                for _ in range(repeats)]
        z_star, stats = runs[-1][1]
        out["fwd_solve_ms"] = 1e3 * statistics.median(wall for wall, _ in runs)
        out["fwd_solve_nfe"] = stats.nfe
        out["fwd_f_total_ms"] = stats.nfe * out["f_ms"]
        out["fwd_overhead_ms"] = out["fwd_solve_ms"] - out["fwd_f_total_ms"]
        out["fwd_overhead_ms_per_call"] = out["fwd_overhead_ms"] / stats.nfe
        if not training:
            return out
        z_star = z_star.detach().requires_grad_()
        fz = f(z_star)  # the one tracked f(z*) of a training step, (B, T, d_state)
        h = cell.readout(fz)
        loss = model.softmax(h.reshape(-1, h.shape[-1]), batch[1].reshape(-1)).mean()
        (grad,) = torch.autograd.grad(loss, fz, retain_graph=True)  # dl/dz*: what the backward solve gets

        def vjp_plus_grad(y):  # the backward's map y -> y J_f(z*) + dl/dz*, as in deq.backward
            return torch.autograd.grad(fz, z_star, y, retain_graph=True)[0] + grad

        out["vjp_ms"] = median_ms(lambda: vjp_plus_grad(grad), repeats, device)
        runs = [timed(lambda: deq.solve(vjp_plus_grad, torch.zeros_like(grad), **s.backward_args()), device)
                for _ in range(repeats)]
        stats = runs[-1][1][1]
        out["bwd_solve_ms"] = 1e3 * statistics.median(wall for wall, _ in runs)
        out["bwd_solve_nfe"] = stats.nfe
        out["bwd_vjp_total_ms"] = stats.nfe * out["vjp_ms"]
        out["bwd_overhead_ms"] = out["bwd_solve_ms"] - out["bwd_vjp_total_ms"]
        out["bwd_overhead_ms_per_iter"] = out["bwd_overhead_ms"] / stats.nfe
    return out


# ---- measuring one pair ------------------------------------------------------------------------------

@dataclass
class Job:
    entry: str  # 'explicit', 'deq' or 'deq_matched'
    phase: str  # 'train' or 'infer'
    walls: dict  # part -> seconds per timed round
    infos: list  # the DEQ's EquilibriumInfo (or the weight-tied trace) per timed round
    memory: object = None  # the segment memory carried to this job's next step


def measure_pair(key: str, cfg: RuntimeConfig, deadline: float | None = None) -> list[dict]:
    """Time every (entry, phase) of one pair at random init, interleaved; one row per job."""
    pair = PAIRS[key]
    deq_row, explicit_row = pair_rows(pair, cfg)
    torch.manual_seed(0)
    with torch.device(cfg.device):
        models = {"explicit": build_model(explicit_row), "deq": build_model(deq_row)}
    generator = torch.Generator().manual_seed(0)
    batches = [tuple(t.to(cfg.device) for t in zipf_batch(deq_row.n_token, cfg.batch, cfg.tgt_len, generator))
               for _ in range(2)]
    return time_pair(key, pair, cfg, models, deq_row, explicit_row, deq_row.solver, batches, deadline)


def time_pair(key: str, pair: Pair, cfg: RuntimeConfig, models: dict[str, LanguageModel], deq_row: LMConfig,
              explicit_row: LMConfig, deq_settings: SolverSettings, batches: list[Batch],
              deadline: float | None = None) -> list[dict]:
    """Time every (entry, phase) of ``models`` ('deq', 'explicit') interleaved on ``batches``; one row per job.

    The DEQ runs with ``deq_settings`` ('deq') and capped at the explicit depth ('deq_matched')."""
    # Learning rate 0: Adam does all its work, but the weights stay at their initial values, so every
    # round times the same model (fitting the tokens would change the solver's iteration counts,
    # and so the step time, from round to round).
    optimizers = {name: torch.optim.Adam(m.parameters(), lr=0.0) for name, m in models.items()}
    settings = {"explicit": None, "deq": deq_settings,
                "deq_matched": matched_settings(deq_settings, explicit_row.n_layer)}
    jobs = [Job(entry, phase, {}, []) for phase in PHASES for entry in ENTRIES]

    def run(job: Job, batch: Batch) -> tuple[dict[str, float], LMOutput]:
        model = models["explicit" if job.entry == "explicit" else "deq"]
        with solver_settings(model, settings[job.entry]):
            if job.phase == "train":
                row = explicit_row if job.entry == "explicit" else deq_row
                return train_step(model, optimizers["explicit" if job.entry == "explicit" else "deq"], batch,
                                  job.memory, row.aux_weight, pair.clip, cfg.device)
            return infer_step(model, batch, job.memory, cfg.device)

    for round_ in range(cfg.rounds + 1):  # round 0 warms up and is not recorded
        order = jobs[::-1] if round_ % 2 else jobs
        for job in order:
            parts, out = run(job, batches[round_ % len(batches)])
            job.memory = out.memory
            if round_ > 0:
                for part, seconds in parts.items():
                    job.walls.setdefault(part, []).append(seconds)
                job.infos.append(out.info)
            del out
        if round_ >= 1 and deadline is not None and time.monotonic() > deadline:
            break  # out of time: keep the rounds measured so far

    batch = batches[0]
    breakdown = {}
    for job in jobs:
        model = models["explicit" if job.entry == "explicit" else "deq"]
        if job.entry == "explicit":
            breakdown[job.entry, job.phase] = {"f_ms": layer_ms(model, batch, job.memory, job.phase,
                                                                cfg.breakdown_repeats, cfg.device)}
        else:
            breakdown[job.entry, job.phase] = solver_breakdown(model, settings[job.entry], batch, job.memory,
                                                               job.phase, cfg.breakdown_repeats, cfg.device)
    rows = [job_row(key, pair, cfg, job, deq_row, explicit_row, settings[job.entry],
                    breakdown[job.entry, job.phase]) for job in jobs]
    add_ratios(rows, {(job.entry, job.phase): job.walls["step"] for job in jobs}, pair)
    return rows


def job_row(key: str, pair: Pair, cfg: RuntimeConfig, job: Job, deq_row: LMConfig, explicit_row: LMConfig,
            settings: SolverSettings | None, breakdown: dict) -> dict:
    row_cfg = explicit_row if job.entry == "explicit" else deq_row
    q1, median, q3 = (1e3 * v for v in quartiles(job.walls["step"]))
    row = {
        "pair": key, "entry": job.entry, "phase": job.phase, "model": row_cfg.name, "preset": cfg.preset,
        "device": describe_device(cfg.device), "tgt_len": cfg.tgt_len, "batch": cfg.batch,
        "mem_len": row_cfg.mem_len, "n_token": row_cfg.n_token, "explicit_depth": explicit_row.n_layer,
        "rounds": len(job.walls["step"]),
        "step_ms": median, "step_ms_q1": q1, "step_ms_q3": q3,
        **{f"{part}_ms": 1e3 * statistics.median(job.walls[part]) for part in ("forward", "backward", "optimizer")
           if part in job.walls},
        "tokens_per_s": cfg.batch * cfg.tgt_len / (median / 1e3),
        "round_walls_ms": " ".join(f"{1e3 * v:.3f}" for v in job.walls["step"]),
    }
    row.update(solver_fields(job, settings, explicit_row))
    row.update(breakdown)
    return row


def solver_fields(job: Job, settings: SolverSettings | None, explicit_row: LMConfig) -> dict:
    """Iterations the timed steps used (medians over rounds), from the driver's EquilibriumInfo."""
    if settings is None:  # the explicit model: one f call per layer
        return {"fwd_solver": "layers", "fwd_max_iter": explicit_row.n_layer, "fwd_nfe": explicit_row.n_layer,
                "fwd_n_iter": explicit_row.n_layer}
    training = job.phase == "train"
    forward = [info.forward for info in job.infos]
    cap = settings.max_iter if training else settings.eval_max_iter
    fields = {
        "fwd_solver": settings.solver if training else settings.eval_solver,
        "fwd_tol": settings.tol if training else settings.eval_tol, "fwd_max_iter": cap,
        "fwd_nfe": statistics.median(s.nfe for s in forward),
        "fwd_n_iter": statistics.median(s.n_iter for s in forward),
        "fwd_at_cap_fraction": sum(s.n_iter >= cap for s in forward) / len(forward),
        "fwd_rel_residual_max": max(s.rel_residual.max().item() for s in forward),
        "fwd_converged_fraction": statistics.mean(s.fraction_converged for s in forward),
    }
    backward = [info.backward for info in job.infos if info.backward is not None]
    if training and backward:
        fields.update({
            "bwd_solver": settings.backward_solver, "bwd_tol": settings.backward_tol,
            "bwd_max_iter": settings.backward_max_iter,
            "bwd_n_iter": statistics.median(s.n_iter for s in backward),
            "bwd_at_cap_fraction": sum(s.n_iter >= settings.backward_max_iter for s in backward) / len(backward),
            "bwd_rel_residual_max": max(s.rel_residual.max().item() for s in backward),
            "bwd_converged_fraction": statistics.mean(s.fraction_converged for s in backward),
        })
    return fields


def add_ratios(rows: list[dict], walls: dict, pair: Pair) -> None:
    """DEQ / explicit per phase: median [IQR] of the within-round ratios, and the ratio of the medians."""
    for row in rows:
        if row["entry"] == "explicit":
            continue
        base, mine = walls["explicit", row["phase"]], walls[row["entry"], row["phase"]]
        per_round = [a / b for a, b in zip(mine, base)]
        q1, median, q3 = quartiles(per_round)
        row.update(ratio=median, ratio_q1=q1, ratio_q3=q3, ratio_of_medians=statistics.median(mine) /
                   statistics.median(base), round_ratios=" ".join(f"{v:.4f}" for v in per_round))
        paper = pair.paper_train if row["phase"] == "train" else pair.paper_infer
        row.update(paper_ratio=paper, goal=GOALS[row["phase"]])
        if row["entry"] == "deq":
            row["goal_met"] = median <= GOALS[row["phase"]]


# ---- report -----------------------------------------------------------------------------------------

RATIO_MEANINGS = """\
What each ratio means (all are DEQ time / explicit-model time for one step; > 1: the DEQ is slower):

- **DEQ / explicit**: median over rounds of the within-round ratio (IQR in brackets), the DEQ run with
  its row's solver settings (the paper scripts' forward cap and tolerance, implicit backward with its
  own cap). This is the ratio the goals are checked against. With untrained weights the forward solve
  may run to its cap (the share of steps that did is "at cap"), doing as many f calls as allowed.
- **ratio of medians**: the DEQ's median step time over the explicit model's; it orders the two
  medians exactly, while the paired ratio cancels drift common to a round.
- **matched**: the same DEQ with its forward cap set to the explicit model's depth and an unreachable
  tolerance, so it makes exactly as many forward f calls as the explicit model has layers; its
  backward keeps the row's settings. It separates the cost of the iteration count from the cost per
  iteration (f is not the same size as one explicit layer; "ms per f" vs "ms per layer" below).
- **paper**: Table 4 (WT103, trained models, the paper's GPUs)."""


def _fmt(value, spec: str = ".1f") -> str:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else format(value, spec)


def _solo(row: dict, prefix: str) -> str:
    """'wall (calls)' of a solve timed alone, or '' where there was none."""
    return "" if row.get(f"{prefix}_ms") is None else f"{row[f'{prefix}_ms']:.1f} ({row[f'{prefix}_nfe']})"


def why(rows: dict, key: str, phase: str) -> str:
    """Where the DEQ's extra time comes from, in one sentence."""
    e, d, m = (rows.get((key, entry, phase)) for entry in ENTRIES)
    parts = [f"forward {d['fwd_nfe']:g} f calls (cap {d['fwd_max_iter']}, at the cap in "
             f"{d['fwd_at_cap_fraction']:.0%} of steps) against {e['explicit_depth']} layers",
             f"one f call costs {d['f_ms'] / e['f_ms']:.2f}x one explicit layer ({d['f_ms']:.2f} vs "
             f"{e['f_ms']:.2f} ms)",
             f"solver overhead {d['fwd_overhead_ms'] / d['fwd_solve_ms']:.0%} of the forward solve"]
    if phase == "train" and "bwd_n_iter" in d:
        backward_ms = d["bwd_n_iter"] * d["bwd_solve_ms"] / d["bwd_solve_nfe"]  # at the steps' iteration count
        parts.append(f"backward solve {d['bwd_n_iter']:g} iterations (cap {d['bwd_max_iter']}), about "
                     f"{backward_ms:.1f} ms = {backward_ms / d['step_ms']:.0%} of the DEQ step")
    if m is not None:
        parts.append(f"at matched f calls the ratio is {m['ratio']:.2f}x")
    return "; ".join(parts)


def render_markdown(cfg: RuntimeConfig, rows: list[dict], notes: Iterable[str] = ()) -> str:
    by = {(r["pair"], r["entry"], r["phase"]): r for r in rows}
    pairs = [key for key in PAIRS if (key, "deq", "train") in by]
    lines = [f"# Table 4: DEQ / explicit time per step ({cfg.preset} preset)", "",
             f"On {describe_device(cfg.device)}, torch {torch.__version__}. Segments of {cfg.tgt_len} tokens, "
             f"batch {cfg.batch}, segment memory min(row's mem_len, {cfg.tgt_len}) carried between steps; "
             f"{cfg.dataset} vocabulary, tokens drawn from a Zipf law; untrained weights (seed 0); training "
             f"step = forward, backward, gradient-norm clipping, Adam (learning rate 0, so every round times "
             f"the same weights). Medians of up to {cfg.rounds} "
             f"interleaved rounds after a warm-up (IQR in brackets)."
             + (" Explicit rows keep the paper's depth (18 / 70 layers) at this preset's width."
                if cfg.paper_depth and cfg.preset != "paper" else ""), ""]
    if cfg.preset == "smoke":
        lines += ["Smoke scale: the sizes only exercise the code; the numbers mean nothing.", ""]
    lines += [*(f"- {note}" for note in notes), *([""] if notes else []), RATIO_MEANINGS, "",
              "| pair | phase | explicit ms | DEQ ms | DEQ / explicit | ratio of medians | DEQ fwd f calls "
              "(cap; at cap) | DEQ bwd iters (cap) | matched ms | matched / explicit | paper | goal | met |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in pairs:
        for phase in PHASES:
            e, d, m = (by[key, entry, phase] for entry in ENTRIES)
            lines.append(
                f"| {key} | {phase} | {e['step_ms']:.1f} [{e['step_ms_q1']:.1f}, {e['step_ms_q3']:.1f}] | "
                f"{d['step_ms']:.1f} [{d['step_ms_q1']:.1f}, {d['step_ms_q3']:.1f}] | "
                f"{d['ratio']:.2f} [{d['ratio_q1']:.2f}, {d['ratio_q3']:.2f}] | {d['ratio_of_medians']:.2f} | "
                f"{d['fwd_nfe']:g} ({d['fwd_max_iter']}; {d['fwd_at_cap_fraction']:.0%}) | "
                + (f"{d['bwd_n_iter']:g} ({d['bwd_max_iter']})" if 'bwd_n_iter' in d else "")
                + f" | {m['step_ms']:.1f} | {m['ratio']:.2f} [{m['ratio_q1']:.2f}, {m['ratio_q3']:.2f}] | "
                f"{d['paper_ratio']:.2f} | <= {d['goal']:g} | {'yes' if d['goal_met'] else 'NO'} |")
    lines += ["", "## Where the time goes", "",
              "Step parts, f calls and backward iterations are medians of the timed steps (f total = f calls "
              "x ms per f). One f call, the forward solve and the backward solve are then timed alone on the "
              f"same model, batch and settings (median of {cfg.breakdown_repeats}; the calls that solve made "
              "in brackets): overhead = solve wall - calls x time per call, the solver's own work. For the "
              "explicit model, \"ms per f\" is one layer.", "",
              "| pair | entry | phase | step ms | fwd / bwd / optimizer ms | f calls | ms per f | f total ms | "
              "fwd solve alone ms (calls) | overhead ms per call | bwd iters | ms per vjp | "
              "bwd solve alone ms (iters) | overhead ms per iter |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for key in pairs:
        for phase in PHASES:
            for entry in ENTRIES:
                r = by[key, entry, phase]
                split = " / ".join(_fmt(r.get(f"{part}_ms")) for part in ("forward", "backward", "optimizer")
                                   if f"{part}_ms" in r)
                lines.append(
                    f"| {key} | {entry} | {phase} | {r['step_ms']:.1f} | {split} | {r['fwd_nfe']:g} | "
                    f"{r['f_ms']:.2f} | {_fmt(r['fwd_nfe'] * r['f_ms'])} | {_solo(r, 'fwd_solve')} | "
                    f"{_fmt(r.get('fwd_overhead_ms_per_call'), '.2f')} | {_fmt(r.get('bwd_n_iter'), 'g')} | "
                    f"{_fmt(r.get('vjp_ms'), '.2f')} | {_solo(r, 'bwd_solve')} | "
                    f"{_fmt(r.get('bwd_overhead_ms_per_iter'), '.2f')} |")
    lines += ["", "## Goals", ""]
    for key in pairs:
        for phase in PHASES:
            d = by[key, "deq", phase]
            verdict = "met" if d["goal_met"] else "NOT met"
            if d["ratio_q1"] <= d["goal"] <= d["ratio_q3"]:
                verdict += " (the IQR straddles the goal: not decided at this noise level)"
            lines.append(f"- {key} {phase}: DEQ / explicit = {d['ratio']:.2f}x, goal <= {d['goal']:g}x: "
                         f"{verdict}. {why(by, key, phase)}.")
    lines += ["", "The goals ask for these ratios at equal perplexity. Untrained models on random tokens "
              "cannot show equal perplexity, so what was measured is the step time at the rows' solver "
              "settings (the caps and tolerances the paper's models were trained and evaluated with) on "
              "random-init weights, whose iteration counts (\"at cap\" above) need not be those of a trained "
              "model (PAPER.md, Figures 2-3: iterations grow slowly over training). The verdicts above are "
              "about that measurement, not the issue's goal at equal perplexity; \"matched\" gives the cost "
              "at equal forward f calls."]
    return "\n".join(lines) + "\n"


def run_runtime_benchmark(preset: str = "cpu", csv_path: str | Path | None = None,
                          md_path: str | Path | None = None, *, pairs: Iterable[str] | None = None,
                          rounds: int | None = None, device: str | None = None,
                          deadline: float | None = None, batch: int | None = None) -> list[dict]:
    """Measure both pairs (or ``pairs``), print the Markdown, write CSV / Markdown when paths are given.

    ``deadline`` (a ``time.monotonic()`` value) is shared out equally among the pairs still to run; a
    pair stops its rounds early once its share is spent (after at least one timed round), and pairs
    not started by ``deadline`` are skipped. The files are rewritten after every pair, so an
    interrupted run keeps the pairs that finished. A pair that does not fit in GPU memory is skipped
    and said so.
    """
    import pandas as pd

    cfg = preset_config(preset, device)
    if rounds is not None:
        cfg = replace(cfg, rounds=rounds)
    if batch is not None:
        cfg = replace(cfg, batch=batch)
    keys = list(PAIRS) if pairs is None else list(pairs)
    for key in keys:
        if key not in PAIRS:
            raise ValueError(f"unknown pair {key!r}; choose from {list(PAIRS)}")
    rows: list[dict] = []
    notes: list[str] = []
    markdown = render_markdown(cfg, rows, notes)
    for i, key in enumerate(keys):
        if deadline is not None and time.monotonic() > deadline:
            notes.append(f"{key}: skipped, the time budget was spent before it started.")
        else:
            # an equal share of the time left for each pair still to run
            pair_deadline = None if deadline is None else time.monotonic() + (deadline - time.monotonic()) / (
                len(keys) - i)
            try:
                rows += measure_pair(key, cfg, pair_deadline)
            except torch.cuda.OutOfMemoryError as error:
                notes.append(f"{key}: skipped, out of GPU memory ({str(error).splitlines()[0]})")
            finally:
                if cfg.device == "cuda":
                    torch.cuda.empty_cache()
            if rows and rows[-1]["pair"] == key and rows[-1]["rounds"] < cfg.rounds:
                notes.append(f"{key}: {rows[-1]['rounds']} of {cfg.rounds} rounds, the time budget ran out.")
        markdown = render_markdown(cfg, rows, notes)
        if csv_path is not None and rows:
            atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
        if md_path is not None:
            atomic_write_text(md_path, markdown)
    print(markdown, flush=True)
    return rows


# ---- the trained pair (the study's Table 4 at matched perplexity) ------------------------------------

TRAINED_TOLS = (1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # forward tolerances tried, tightest first
PPL_SLACK = 0.01  # the chosen tolerance keeps the validation perplexity within 1% of the best one


def choose_tolerance(points: list[dict], slack: float = PPL_SLACK) -> dict:
    """The loosest tolerance whose perplexity is within ``slack`` of the best of ``points`` (dicts with
    'tol' and 'valid_ppl', as :func:`deq.evaluate.solver_sweep` gives).

    >>> choose_tolerance([{"tol": 1e-6, "valid_ppl": 100.0}, {"tol": 1e-2, "valid_ppl": 100.5},
    ...                   {"tol": 1e-1, "valid_ppl": 103.0}])["tol"]
    0.01
    """
    best = min(point["valid_ppl"] for point in points)
    return max((point for point in points if point["valid_ppl"] <= best * (1 + slack)), key=lambda p: p["tol"])


def run_trained_runtime(deq_dir: str | Path, explicit_dir: str | Path, csv_path: str | Path, *, pair_key: str,
                        max_tokens: int | None, rounds: int, tols: Iterable[float] = TRAINED_TOLS,
                        device: str = "cpu") -> list[dict]:
    """Table 4 on a trained pair: DEQ / explicit step times at the DEQ's loosest forward tolerance that keeps
    its validation perplexity within 1% of its best (on the first ``max_tokens`` validation tokens), on
    the runs' own checkpoints, corpus, batch and segment length. Rows as :func:`measure_pair`'s, plus the
    tolerance sweep that chose the setting (``deq_tol``, ``deq_valid_ppl``, ``best_valid_ppl``,
    ``tol_sweep``) and the training steps behind the weights (``trained_steps``)."""
    import pandas as pd

    from deq.data import batchify, prepare
    from deq.evaluate import load_run, solver_sweep

    deq_model, deq_cfg, deq_row, deq_step = load_run(deq_dir)
    explicit_model, explicit_cfg, explicit_row, explicit_step = load_run(explicit_dir)
    corpus = prepare(deq_cfg.dataset or deq_row.dataset, deq_cfg.data_root, deq_cfg.data_mirror)
    deq_model.to(device), explicit_model.to(device)
    sweep = solver_sweep(deq_model, corpus.valid, deq_cfg.eval_batch_size, deq_cfg.eval_tgt_len, tols, (),
                         max_tokens=max_tokens, device=device)
    chosen = choose_tolerance(sweep)
    settings = replace(deq_row.solver, tol=chosen["tol"], eval_tol=chosen["tol"])
    cfg = RuntimeConfig(deq_cfg.preset, tgt_len=deq_cfg.tgt_len, batch=deq_cfg.batch_size, rounds=rounds,
                        breakdown_repeats=3, dataset=deq_cfg.dataset or deq_row.dataset, paper_depth=False,
                        device=device)
    # two validation batches of the shape the runs trained on, cut as training cuts its streams
    streams, T = batchify(corpus.valid, cfg.batch).to(device), cfg.tgt_len
    batches = [(streams[:, i * T:(i + 1) * T], streams[:, i * T + 1:(i + 1) * T + 1]) for i in range(2)]
    pair = replace(PAIRS[pair_key], deq=deq_row.name, explicit=explicit_row.name, clip=deq_cfg.clip)
    models = {"deq": deq_model, "explicit": explicit_model}
    rows = time_pair(f"{pair_key} (trained)", pair, cfg, models, deq_row, explicit_row, settings, batches)
    tol_sweep = " ".join(f"{p['tol']:g}:{p['valid_ppl']:.2f}" for p in sweep)
    for row in rows:
        row.update(deq_tol=chosen["tol"], deq_valid_ppl=chosen["valid_ppl"],
                   best_valid_ppl=min(p["valid_ppl"] for p in sweep), tol_sweep=tol_sweep,
                   trained_steps=deq_step if row["entry"] != "explicit" else explicit_step)
    atomic_write_text(csv_path, pd.DataFrame(rows).to_csv(index=False))
    return rows


# ---- Table 4 at the paper's widths on a CPU (committed; `make paper-runtime`) -------------------------

PAPER_WIDTH_CPU_NOTE = (
    "On a CPU time follows arithmetic: the DEQ's one layer carries the whole stack's feed-forward (d_inner "
    "48,000 against 18 layers of 890), so one f call costs about as much as the whole explicit stack, and a "
    "training step makes about 30 forward calls and 40 backward vector-Jacobian products. GPUs hide much of "
    "that behind parallelism the explicit stack cannot use; this ratio is not the paper's GPU ratio.")


def main(argv: list[str] | None = None) -> None:
    """``python -m deq.bench.runtime --paper-widths --out CSV``: Table 4's transformer pair at the paper's exact
    widths on this machine's CPU (random init, its solves to the cap), at a small batch (time grows linearly
    with the batch on a CPU, so the ratio is the batch-15 one), a few interleaved rounds."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m deq.bench.runtime", description=main.__doc__.splitlines()[0])
    parser.add_argument("--paper-widths", action="store_true", required=True, help="the paper's exact widths")
    parser.add_argument("--out", type=Path, required=True, help="CSV to write (a Markdown beside it)")
    parser.add_argument("--batch", type=int, default=2, help="segments of 150 tokens per step (default 2)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up (default 2)")
    args = parser.parse_args(argv)
    run_runtime_benchmark("paper", args.out, args.out.with_suffix(".md"), pairs=["transformer"], rounds=args.rounds,
                          device="cpu", batch=args.batch)
    stamp(args.out, f"python -m deq.bench.runtime --paper-widths --batch {args.batch} --rounds {args.rounds}")


def stamp(csv_path: Path, command: str) -> None:
    """Add when, at which revision, with which torch and by which command a committed CSV was measured."""
    import datetime

    import pandas as pd

    from deq.bench.paper_memory import _revision

    frame = pd.read_csv(csv_path).assign(measured_on=datetime.date.today().isoformat(), revision=_revision(),
                                         torch=torch.__version__, command=command)
    atomic_write_text(csv_path, frame.to_csv(index=False))


if __name__ == "__main__":
    main()
