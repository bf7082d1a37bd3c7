"""Evaluation: perplexity over a whole token stream with the memory carried, and copy-memory loss.

Also what the workflow's evaluate stage asks of a trained run (:func:`load_run`): the residual of the
DEQ's solver and of the weight-tied stack against function evaluations (:func:`convergence_curve`,
the paper's Figure 2), validation perplexity as the forward tolerance or cap varies
(:func:`solver_sweep`, Figure 3), and Table 4 on the trained pair at matched perplexity
(:func:`run_trained_runtime`, timed by :mod:`deq.bench.runtime`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
from torch import nn

from deq.settings import SolverSettings

if TYPE_CHECKING:
    from deq.bench.runtime import RuntimeRow


@torch.no_grad()
def perplexity(model: nn.Module, tokens: np.ndarray, batch_size: int, tgt_len: int, mem_len: int | None = None,
               max_tokens: int | None = None, device: torch.device | str = "cpu", infos: list | None = None,
               settings: SolverSettings | None = None) -> float:
    """exp of the token-weighted mean loss over ``tokens`` (or its first ``max_tokens``).

    The stream is cut into ``batch_size`` contiguous streams and read in segments of ``tgt_len``,
    the segment memory carried from one to the next (``mem_len`` overrides the model's own), in eval
    mode, so the model's evaluation solver settings apply (``settings``, a DEQ's only, replace them
    for this evaluation; the model is not changed). ``infos``, if given, receives each segment's
    solver record.
    """
    from deq.data import batchify

    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    streams = batchify(tokens, batch_size).to(device)  # (B, N)
    overrides = {name: value for name, value in (("mem_len", mem_len), ("settings", settings)) if value is not None}
    was_training = model.training
    model.eval()
    total, count, memory = 0.0, 0, None
    try:
        for pos in range(0, streams.size(1) - 1, tgt_len):
            inputs = streams[:, pos:pos + tgt_len]
            targets = streams[:, pos + 1:pos + 1 + tgt_len]
            inputs = inputs[:, : targets.size(1)]
            out = model(inputs, targets, memory, **overrides)
            total += out.nll.sum().item()
            count += targets.numel()
            memory = out.memory
            if infos is not None:
                infos.append(out.info)
    finally:
        model.train(was_training)
    mean = total / count
    return math.exp(mean) if mean < 700 else math.inf  # a diverged model's perplexity, not an OverflowError


@torch.no_grad()
def copy_memory_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy over every position of every test sequence (the paper's Table 1 metric)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size].to(device))
            target = y[start:start + batch_size].to(device)
            total += nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                 reduction="sum").item()
            count += target.numel()
    finally:
        model.train(was_training)
    return total / count


# ---- the workflow's evaluate stage: a trained run, its convergence and its solver sweep ----------------

def load_run(run_dir: str | Path, checkpoint: str = "checkpoint.pt"):
    """(model in eval mode, TrainConfig, LMConfig row, training step) of a language-model run's checkpoint."""
    from deq.engine.checkpoint import load_checkpoint
    from deq.engine.config import config_from_dict, lm_row
    from deq.rows.build import build_model

    saved = load_checkpoint(Path(run_dir) / checkpoint)
    cfg = config_from_dict(saved["config"], source=str(Path(run_dir) / checkpoint))
    row = lm_row(cfg)
    model = build_model(row)
    model.load_state_dict(saved["model"])
    return model.eval(), cfg, row, saved["state"]["step"]


@torch.no_grad()
def convergence_curve(model: nn.Module, inputs: torch.Tensor, targets: torch.Tensor, n_evals: int) -> dict:
    """Residuals of ``n_evals`` function evaluations on one segment (no memory), mean over the batch.

    A DEQ runs its training forward solver with an unreachable tolerance and cap ``n_evals``; a
    weight-tied stack is applied ``n_evals`` times (its trace is ||f(z_l) - z_l|| per layer). Returns
    lists ``rel_residual`` and ``abs_residual`` of length ``n_evals`` (fewer if a solver stops early on
    an exact fixed point).
    """
    from deq.models.drivers import DEQDriver

    driver = model.driver
    if isinstance(driver, DEQDriver):
        s = driver.settings
        out = model(inputs, targets, settings=replace(s, eval_solver=s.solver, eval_tol=1e-30, eval_max_iter=n_evals))
    elif hasattr(driver, "n_layer"):
        out = model(inputs, targets, n_layer=n_evals)
    else:
        raise TypeError(f"convergence needs a DEQ or weight-tied driver, got {type(driver).__name__}")
    stats = out.info.forward
    return {"rel_residual": stats.rel_trace.mean(1).tolist(), "abs_residual": stats.abs_trace.mean(1).tolist()}


def solver_sweep(model: nn.Module, tokens: np.ndarray, batch_size: int, tgt_len: int, tols, caps,
                 max_tokens: int | None = None, device: torch.device | str = "cpu") -> list[dict]:
    """Validation perplexity of a trained DEQ at each forward tolerance (cap: the row's evaluation cap)
    and at each cap (tolerance: the row's evaluation tolerance); one dict per point."""
    base, rows = model.driver.settings, []
    points = [("tol", tol, base.eval_max_iter) for tol in tols] + [("max_iter", base.eval_tol, cap) for cap in caps]
    for sweep, tol, cap in points:
        infos: list = []
        ppl = perplexity(model, tokens, batch_size, tgt_len, max_tokens=max_tokens, device=device, infos=infos,
                         settings=replace(base, eval_tol=tol, eval_max_iter=cap))
        rows.append({"sweep": sweep, "tol": tol, "max_iter": cap, "valid_ppl": ppl,
                     "mean_nfe": float(np.mean([info.forward.nfe for info in infos])),
                     "tokens": min(len(tokens) - 1, max_tokens or len(tokens))})
    return rows


# ---- Table 4 on the trained pair, at matched perplexity ---------------------------------------------

TRAINED_TOLS = (1e-6, 1e-4, 1e-3, 1e-2, 3e-2, 1e-1, 3e-1)  # forward tolerances tried, tightest first
PPL_SLACK = 0.01  # the chosen tolerance keeps the validation perplexity within 1% of the best one


def choose_tolerance(points: list[dict], slack: float = PPL_SLACK) -> dict:
    """The loosest tolerance whose perplexity is within ``slack`` of the best of ``points`` (dicts with
    'tol' and 'valid_ppl', as :func:`solver_sweep` gives).

    >>> choose_tolerance([{"tol": 1e-6, "valid_ppl": 100.0}, {"tol": 1e-2, "valid_ppl": 100.5},
    ...                   {"tol": 1e-1, "valid_ppl": 103.0}])["tol"]
    0.01
    """
    best = min(point["valid_ppl"] for point in points)
    return max((point for point in points if point["valid_ppl"] <= best * (1 + slack)), key=lambda p: p["tol"])


@dataclass
class TrainedRuntimeRow:
    """A row of the trained pair's CSV: the timing, and the tolerance sweep that chose its settings."""

    timing: RuntimeRow  # its fields are columns
    deq_tol: float  # the DEQ's forward tolerance, training and evaluation
    deq_valid_ppl: float  # its validation perplexity at deq_tol
    best_valid_ppl: float  # the best over the sweep
    tol_sweep: str  # 'tol:perplexity' of every tolerance tried
    trained_steps: int  # training steps behind the weights


def run_trained_runtime(deq_dir: str | Path, explicit_dir: str | Path, csv_path: str | Path, *, pair_key: str,
                        max_tokens: int | None, rounds: int, tols: Iterable[float] = TRAINED_TOLS,
                        device: str = "cpu") -> list[dict]:
    """Table 4 on a trained pair: DEQ / explicit step times at the DEQ's loosest forward tolerance that keeps
    its validation perplexity within 1% of its best (on the first ``max_tokens`` validation tokens), on
    the runs' own checkpoints, corpus, batch and segment length. Writes :class:`TrainedRuntimeRow` rows;
    returns the CSV's records."""
    from deq.bench.common import columns, write_rows
    from deq.bench.runtime import PAIRS, RuntimeConfig, time_pair
    from deq.data import batchify, prepare
    from deq.presets import RuntimeScale

    deq_model, deq_cfg, deq_row, deq_step = load_run(deq_dir)
    explicit_model, explicit_cfg, explicit_row, explicit_step = load_run(explicit_dir)
    dataset = deq_cfg.dataset or deq_row.dataset
    corpus = prepare(dataset, deq_cfg.data_root, deq_cfg.data_mirror)
    deq_model.to(device), explicit_model.to(device)
    sweep = solver_sweep(deq_model, corpus.valid, deq_cfg.eval_batch_size, deq_cfg.eval_tgt_len, tols, (),
                         max_tokens=max_tokens, device=device)
    chosen = choose_tolerance(sweep)
    settings = replace(deq_row.solver, tol=chosen["tol"], eval_tol=chosen["tol"])
    scale = RuntimeScale(deq_cfg.tgt_len, deq_cfg.batch_size, rounds, 3, dataset, paper_depth=False)
    # two validation batches of the shape the runs trained on, cut as training cuts its streams
    streams, T = batchify(corpus.valid, scale.batch).to(device), scale.tgt_len
    batches = [(streams[:, i * T:(i + 1) * T], streams[:, i * T + 1:(i + 1) * T + 1]) for i in range(2)]
    pair = replace(PAIRS[pair_key], deq=deq_row.name, explicit=explicit_row.name, clip=deq_cfg.clip)
    rows = time_pair(f"{pair_key} (trained)", pair, RuntimeConfig(deq_cfg.preset, scale, device),
                     {"deq": deq_model, "explicit": explicit_model}, deq_row, explicit_row, settings, batches)
    tol_sweep = " ".join(f"{p['tol']:g}:{p['valid_ppl']:.2f}" for p in sweep)
    rows = [TrainedRuntimeRow(row, chosen["tol"], chosen["valid_ppl"], min(p["valid_ppl"] for p in sweep), tol_sweep,
                              deq_step if row.entry != "explicit" else explicit_step) for row in rows]
    write_rows(rows, csv_path)
    return [columns(row) for row in rows]
