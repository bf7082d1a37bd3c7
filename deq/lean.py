"""The lean memory mode's evidence on trained models (:data:`deq.settings.LEAN`; its memory is the depth
benchmark's ``lean`` and ``floor`` rows).

``python -m deq.lean accuracy RUN... --out CSV``: on validation batches of each trained DEQ run (consecutive
segments, each attending to the previous one's memory as in training; a stream's first segment, which has
none, only makes the memory), the gradient of the training loss with respect to every parameter, computed
three ways on the same checkpoint and batch: ``standard`` (the run's own solver settings, as it trained),
``lean`` (the same settings in the lean mode) and the reference (float64, forward and backward solved to a
per-sample relative residual of 1e-10: :data:`REFERENCE`). Each row gives a mode's cosine to the reference
and its relative error ||g - g_ref|| / ||g_ref||, with what its solves reached; ``ref_agreement`` is the
reference's own error, the relative difference to a second float64 gradient whose forward and backward are
solved by other methods (:data:`CROSS_CHECK`: plain iteration instead of Broyden, Broyden instead of GMRES).
A third mode, ``lean backward``, is the lean backward solve from a converged forward
(:data:`CONVERGED_FORWARD`): where ``lean`` misses the reference, it tells the implicit gradient's error
from the forward's. The model runs in eval mode (no dropout, so the three see the same function) with the
training solves' settings.

``python -m deq.lean twin RUN [--out DIR]`` trains the lean twin of a run: its ``config.yaml`` with ``lean:
true`` (same row, budget, seed and data), into ``results/lean/<preset>/<run>-lean`` by default (an existing
checkpoint there resumes). ``python -m deq.lean training STANDARD LEAN [STANDARD LEAN ...] --out CSV
--figure PNG``: each pair's validation and test loss side by side, the relative difference of the validation
loss, and their training curves on one panel per pair.

``python -m deq.lean widths --out CSV``: the lean mode's memory against its floor at the paper's widths for
each cap from 8 to 64 (:func:`width_memory`): the depth benchmark's points at batches 2 and 4, read at batch 15
on their lines, as the paper-memory benchmark extrapolates.

The committed evidence (``results/reference/cpu/lean_*``; README, Models) was made from the cpu study's
trained DEQ-Transformer (``results/runs/cpu/wt103-deq-transformer-small-w64``) and, as the cpu study trains
no TrellisNet, from a DEQ-TrellisNet trained at the cpu preset by ``python -m deq.train --config
config/lean/ptb-deq-trellisnet-cpu.yaml --out results/lean/cpu/ptb-deq-trellisnet``; each with its twin.

Both write CSVs stamped with the command, revision and date (:func:`deq.report.readme.provenance`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from deq.evaluate import load_run
from deq.report.benchmarks import GOAL_COSINE, GOAL_LOSS, LEAN_GOAL
from deq.settings import LEAN, SolverSettings, solver_name

__all__ = ["REFERENCE", "GradientRow", "TrainingRow", "WidthRow", "gradient_accuracy", "train_twin",
           "training_comparison", "width_memory"]

# The reference gradient's solves, in float64: a forward and a backward to a per-sample relative residual of
# 1e-10, with caps far above what they need on a trained model (the CSV records what they reached). The
# forward is full-history Broyden: on the cpu DEQ-TrellisNet's first validation batch, Anderson (m=6) stalled
# at 7e-4 and 6e-5 on 2 of 32 sequences after 400 iterations, where Broyden reached 1e-10 on all 32 in 146.
REFERENCE = dict(solver="broyden", solver_options={}, tol=1e-10, max_iter=400, stop_mode="rel",
                 backward_solver="gmres", backward_options={"m": 20}, backward_tol=1e-10, backward_max_iter=800)
# The ``lean backward`` mode: the lean backward (its solver and cap) from the equilibrium itself, in float32,
# the forward solved as the reference's is (per-sample relative residuals, the backward's too). It isolates the
# lean implicit gradient's error from a forward left short of z*.
CONVERGED_FORWARD = {key: REFERENCE[key] for key in ("solver", "solver_options", "tol", "max_iter", "stop_mode")}
# The cross-check solves both again by other methods: the forward by plain iteration, the backward by Broyden.
CROSS_CHECK = dict(solver="picard", max_iter=2000, backward_solver="broyden", backward_options={},
                   backward_max_iter=300)


def training_solves(settings: SolverSettings) -> SolverSettings:
    """``settings`` with the evaluation solve set to the training one (the model runs in eval mode)."""
    return replace(settings, eval_solver=settings.solver, eval_tol=settings.tol, eval_max_iter=settings.max_iter)


@dataclass
class GradientRow:
    """One run, validation batch and mode: a row of the accuracy CSV."""

    run: str
    row: str  # the registry row
    step: int  # training steps behind the weights
    batch: int  # validation segment (batch_size streams x tgt_len tokens): 1, 2, ..., each after the last
    mode: str  # 'standard' (the run's settings), 'lean' or 'lean backward' (from a converged forward)
    solvers: str  # forward / backward solver and options
    cosine: float  # of the full parameter gradient to the reference's
    rel_error: float  # ||g - g_ref|| / ||g_ref||
    fwd_nfe: int
    fwd_rel_residual_max: float
    bwd_n_iter: int
    bwd_rel_residual_max: float
    ref_fwd_rel_residual_max: float  # what the reference's solves reached
    ref_bwd_rel_residual_max: float
    ref_agreement: float  # ||g_ref - g_check|| / ||g_ref||, the cross-check's solves other methods
    loss: float  # the batch's training loss under this mode


def _gradient(model, settings: SolverSettings, tokens: torch.Tensor, targets: torch.Tensor, memory,
              aux_weight: float):
    """(flat float64 gradient of the training loss over every parameter, EquilibriumInfo, loss)."""
    model.zero_grad(set_to_none=True)
    out = model(tokens, targets, memory, settings=settings)
    loss = out.loss if out.aux_loss is None else out.loss + aux_weight * out.aux_loss
    loss.backward()
    flat = [(p.grad if p.grad is not None else torch.zeros_like(p)).flatten().double() for p in model.parameters()]
    return torch.cat(flat), out.info, loss.item()


def _solvers(s: SolverSettings) -> str:
    return f"{solver_name(s.solver, s.solver_options)} / {solver_name(s.backward_solver, s.backward_options)}"


def gradient_accuracy(run_dir: str | Path, n_batches: int = 3) -> list[GradientRow]:
    """The standard and lean gradients of a trained DEQ run against the float64 reference (module docstring),
    on validation segments 1 to ``n_batches`` of the shape it trained on, each with the previous segment's
    memory as training carries it (the reference's, so every mode sees the same function)."""
    from deq.data import batchify, prepare
    from deq.models.drivers import DEQDriver

    model, cfg, row, step = load_run(run_dir)
    if not isinstance(model.driver, DEQDriver):
        raise ValueError(f"{run_dir}: the lean mode is a DEQ's; this run trains {row.name!r}, a {row.driver} model")
    trained = model.driver.settings
    modes = {"standard": training_solves(trained), "lean": training_solves(trained.lean()),
             "lean backward": training_solves(replace(trained.lean(), **CONVERGED_FORWARD))}
    reference = training_solves(replace(trained, **REFERENCE))
    check = replace(reference, **CROSS_CHECK)
    reference_model = copy.deepcopy(model).double()
    corpus = prepare(cfg.dataset or row.dataset, cfg.data_root, cfg.data_mirror)
    streams, T = batchify(corpus.valid, cfg.batch_size), cfg.tgt_len
    rows, memory = [], None
    for i in range(n_batches + 1):
        tokens, targets = streams[:, i * T:(i + 1) * T], streams[:, i * T + 1:(i + 1) * T + 1]
        if i > 0:  # segment 0 only makes the memory the first batch attends to, as a stream's start in training
            rows += _batch_rows(run_dir, row, step, i, modes, model, reference_model, reference, check, tokens,
                                targets, memory)
        with torch.no_grad():  # the next segment's memory, from the reference's equilibrium: the same for all
            memory = reference_model(tokens, targets, memory, settings=reference).memory
    return rows


def _batch_rows(run_dir, row, step, batch, modes, model, reference_model, reference, check, tokens, targets,
                memory) -> list[GradientRow]:
    """One batch's rows: each mode against the float64 reference, with the same float64 ``memory``."""
    single = tuple(m.float() for m in memory)
    g_ref, ref, _ = _gradient(reference_model, reference, tokens, targets, memory, row.aux_weight)
    agreement = ((_gradient(reference_model, check, tokens, targets, memory, row.aux_weight)[0] - g_ref).norm()
                 / g_ref.norm()).item()
    rows = []
    for mode, settings in modes.items():
        g, info, loss = _gradient(model, settings, tokens, targets, single, row.aux_weight)
        rows.append(GradientRow(
            Path(run_dir).name, row.name, step, batch, mode, _solvers(settings),
            torch.nn.functional.cosine_similarity(g, g_ref, dim=0).item(),
            ((g - g_ref).norm() / g_ref.norm()).item(), info.forward.nfe, info.forward.rel_residual.max().item(),
            info.backward.n_iter, info.backward.rel_residual.max().item(),
            ref.forward.rel_residual.max().item(), ref.backward.rel_residual.max().item(), agreement, loss))
    return rows


@dataclass
class TrainingRow:
    """One run of the lean / standard comparison: a row of its CSV."""

    run: str
    mode: str  # 'standard' or 'lean'
    row: str
    steps: int
    seed: int
    solvers: str  # training forward / backward
    valid_loss: float  # log of the final validation perplexity
    test_loss: float
    valid_rel_diff: float  # (lean - standard) / standard validation loss, on both rows
    train_step_peak_bytes: int | None  # the run's measured training-step peak (deq.train)


def training_comparison(standard_dir: str | Path, lean_dir: str | Path) -> list[TrainingRow]:
    """The two runs' final losses (``result.json``) side by side; they must train the same row, budget and seed."""
    from deq.engine.config import lm_row, load_config

    runs = {"standard": Path(standard_dir), "lean": Path(lean_dir)}
    configs = {mode: load_config(path / "config.yaml") for mode, path in runs.items()}  # written by deq.train
    if not configs["lean"].lean or configs["standard"].lean:
        raise ValueError(f"need a standard run and a lean run; got lean={configs['standard'].lean} for "
                         f"{standard_dir} and lean={configs['lean'].lean} for {lean_dir}")
    differ = {key: (value, getattr(configs["lean"], key)) for key, value in vars(configs["standard"]).items()
              if key not in ("lean", "data_mirror", "data_root") and getattr(configs["lean"], key) != value}
    if differ:
        raise ValueError(f"the runs differ beyond the lean mode: {differ}")
    results = {mode: json.loads((path / "result.json").read_text()) for mode, path in runs.items()}
    valid = {mode: math.log(r["valid_ppl"]) for mode, r in results.items()}
    diff = (valid["lean"] - valid["standard"]) / valid["standard"]
    return [TrainingRow(path.name, mode, configs[mode].model, results[mode]["steps"], configs[mode].seed,
                        _solvers(lm_row(configs[mode]).solver), valid[mode], math.log(results[mode]["test_ppl"]),
                        diff, results[mode].get("train_step_peak_bytes")) for mode, path in runs.items()]


def train_twin(run_dir: str | Path, out: str | Path | None = None) -> Path:
    """Train the run in ``run_dir`` again in the lean mode (module docstring); returns its folder."""
    from deq.engine.config import load_config
    from deq.train import train

    cfg = load_config(Path(run_dir) / "config.yaml")  # written by deq.train
    if cfg.lean:
        raise ValueError(f"{run_dir} already trained with lean: true; give the standard run")
    out = Path(out) if out is not None else Path("results", "lean", cfg.preset, f"{Path(run_dir).name}-lean")
    train(replace(cfg, lean=True), out)
    return out


@dataclass
class WidthRow:
    """One cell, cap and model at a preset's widths, on its line in the batch: a row of the widths CSV."""

    family: str
    row: str  # the registry row whose cell is used (deq.bench.depth.DEPTH_ROWS)
    d_state: int
    seq_len: int
    batch: int  # the batch the line is read at (the preset's depth batch)
    cap: int  # the DEQ's forward cap, the explicit stack's depth, 1 for the floor
    model: str  # 'deq-lean', 'explicit' or 'floor' (the one-layer stack)
    batches: str  # the batches measured, space-separated
    fit_a_bytes: float  # total bytes = a + b x batch through the measured points (least squares)
    fit_b_bytes: float
    total_bytes: int  # a + b x batch: peak of the step, weights and Adam moments (deq.bench.depth's total)
    floor_ratio: float  # total / the floor's total, both on their lines
    ran_to_cap: bool  # every measured solve ran to its cap


def width_memory(preset: str = "paper", caps: tuple[int, ...] = (8, 16, 32, 64),
                 batches: tuple[int, ...] = (2, 4)) -> list[WidthRow]:
    """The lean mode's memory against the floor at ``preset``'s widths, for each cap of ``caps``: the depth
    benchmark's ``lean``, ``explicit`` and ``floor`` points (:func:`deq.bench.depth.measure_depth`) measured at
    ``batches``, each model's line read at the preset's batch, as the paper-memory benchmark extrapolates."""
    from deq.bench.common import scales
    from deq.bench.depth import DEPTH_ROWS, measure_depth
    from deq.bench.memory import fit_line

    target = scales(preset).depth.batch
    rows = []
    for family in DEPTH_ROWS:
        points: dict[tuple[str, int], dict] = {}
        for batch in batches:
            for r in measure_depth(family, preset, caps, {"lean": LEAN}, batch):
                points.setdefault((r.model, r.depth), {})[batch] = r
        lines = {key: fit_line({b: r.total_bytes for b, r in at.items()}) for key, at in points.items()}
        total = {key: a + b * target for key, (a, b) in lines.items()}  # each line read at the preset's batch
        for (model, cap), at in points.items():
            first = next(iter(at.values()))
            rows.append(WidthRow(family, first.row, first.d_state, first.seq_len, target, cap, model,
                                 " ".join(map(str, at)), *lines[model, cap], round(total[model, cap]),
                                 total[model, cap] / total["floor", 1], all(r.iters_eq_cap for r in at.values())))
    return rows


# ---- the command ------------------------------------------------------------------------------------

def _write(rows: list, out: Path, argv: list[str], start: float) -> None:
    """``rows`` as a CSV stamped with the command, revision and date (atomically)."""
    import pandas as pd

    from deq.bench.common import columns
    from deq.io import atomic_write_text
    from deq.provenance import REPO
    from deq.report.readme import provenance, with_provenance

    fields = provenance(REPO, ["python", "-m", "deq.lean", *argv], time.monotonic() - start)
    atomic_write_text(out, with_provenance(pd.DataFrame([columns(r) for r in rows]), fields).to_csv(index=False))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m deq.lean", description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    accuracy = commands.add_parser("accuracy", help="lean and standard gradients against a float64 reference")
    accuracy.add_argument("runs", nargs="+", type=Path, help="trained DEQ run folders (results/runs/<preset>/<run>)")
    accuracy.add_argument("--batches", type=int, default=3, help="validation batches per run (default 3)")
    accuracy.add_argument("--out", type=Path, required=True, help="CSV to write")
    twin = commands.add_parser("twin", help="train a run again with lean: true")
    twin.add_argument("run", type=Path, help="the standard run's folder")
    twin.add_argument("--out", type=Path, default=None, help="run folder (default results/lean/<preset>/<run>-lean)")
    training = commands.add_parser("training", help="lean runs against their standard twins")
    training.add_argument("runs", nargs="+", type=Path, metavar="STANDARD LEAN",
                          help="pairs: a run trained with its row's settings, then its twin trained with lean: true")
    training.add_argument("--out", type=Path, required=True, help="CSV to write")
    training.add_argument("--figure", type=Path, required=True, help="PNG of both training curves (a PDF beside it)")
    widths = commands.add_parser("widths", help="lean memory against the floor at the paper's widths, per cap")
    widths.add_argument("--preset", default="paper", help="whose widths and batch (default paper)")
    widths.add_argument("--caps", type=int, nargs="+", default=[8, 16, 32, 64], help="forward caps")
    widths.add_argument("--batches", type=int, nargs="+", default=[2, 4], help="batches the lines go through")
    widths.add_argument("--out", type=Path, required=True, help="CSV to write")
    args = parser.parse_args(argv)
    start = time.monotonic()
    if args.command == "twin":
        print(f"lean twin trained in {train_twin(args.run, args.out)}", flush=True)
        return 0
    if args.command == "widths":
        if len(set(args.batches)) < 2 or min(args.batches + args.caps) < 1:
            parser.error(f"--batches needs two or more different batches >= 1 and --caps caps >= 1; got "
                         f"--batches {args.batches} --caps {args.caps}")
        rows = width_memory(args.preset, tuple(args.caps), tuple(args.batches))
        lean = [r for r in rows if r.model == "deq-lean"]
        for r in lean:
            print(f"{r.row} cap {r.cap}: lean {r.total_bytes / 1e9:.3f} GB = {r.floor_ratio:.3f}x the floor "
                  f"(batch {r.batch}, line through batches {r.batches})", flush=True)
        print(f"lean / floor, worst: {max(r.floor_ratio for r in lean):.3f}x (goal <= {LEAN_GOAL})", flush=True)
    elif args.command == "accuracy":
        if args.batches < 1:
            parser.error(f"--batches must be >= 1, got {args.batches}")
        rows = [r for run in args.runs for r in gradient_accuracy(run, args.batches)]
        for r in rows:
            print(f"{r.run} batch {r.batch} {r.mode:8s} cosine {r.cosine:.6f} rel. error {r.rel_error:.2e} "
                  f"(bwd {r.bwd_n_iter} iters, residual {r.bwd_rel_residual_max:.1e}; reference's own error "
                  f"{r.ref_agreement:.1e})", flush=True)
        worst = min(r.cosine for r in rows if r.mode == "lean")
        print(f"lean: smallest cosine {worst:.6f} (goal >= {GOAL_COSINE})", flush=True)
    else:
        from deq.report.figures import plot_training_curves

        if len(args.runs) % 2:
            parser.error(f"training takes pairs STANDARD LEAN; got {len(args.runs)} folders: "
                         f"{' '.join(map(str, args.runs))}")
        rows, curves = [], {}
        for standard, lean in zip(args.runs[::2], args.runs[1::2]):
            pair = training_comparison(standard, lean)
            for r, path in zip(pair, (standard, lean)):
                print(f"{r.run} ({r.mode}): valid loss {r.valid_loss:.4f}, test loss {r.test_loss:.4f}", flush=True)
                curves[f"{r.row}, {r.steps} steps, seed {r.seed}: {r.mode} ({r.solvers})"] = path
            print(f"lean vs standard validation loss: {100 * pair[0].valid_rel_diff:+.2f}% (goal within "
                  f"{GOAL_LOSS:.0%})", flush=True)
            rows += pair
        plot_training_curves(curves, args.figure, args.figure.with_suffix(".pdf"))
    _write(rows, args.out, argv, start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
