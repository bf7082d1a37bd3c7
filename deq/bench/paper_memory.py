"""Training memory of every row of Tables 2-3 at the paper's exact widths and depths, on this machine.

``python -m deq.bench.paper_memory --out results/reference/cpu/memory_paper.csv`` (``make paper-memory``;
the workflow target ``snakemake results/reference/cpu/memory_paper.csv``; not part of ``all``). The
protocol is the paper's: sequence 150, batch 15, word embeddings excluded; each row is built at the
``paper`` preset (its registered widths and depth) and one training step is measured as the memory
benchmark does (:func:`deq.bench.memory.measure_row`: the allocator's peak over forward + backward with
the embedding frozen, plus the weights and Adam moments held before the step; ``method`` names the
counter). The DEQ rows run their paper solver settings (``docs/fidelity.md``: the v1 Broyden, every
pair kept, subsequences) *to the cap*: their tolerances are set out of reach, since the official
Broyden preallocates its whole history and the cap is the real case. A warm-up step before the
measured one makes the segment memory and the Adam state (a DEQ's warm-up runs its cell as a
one-layer stack, which makes the same tensors in far less time).

Batch 15 of most rows does not fit a 2-core machine's time (a DEQ-Transformer medium step at batch 15
is minutes of CPU) or memory (the paper gives the 70-layer TrellisNet 24.7 GB). Every row is therefore
measured at batches :data:`FIT_BATCHES`, fitted with peak = a + b * batch (a: what does not grow with
the batch, the parameter state; b: activations, solver buffers and temporaries per sample), and
extrapolated to 15 (``extrapolated`` True); a row whose estimated cost at batch 15 fits
``direct_budget_s`` and half the free memory is also measured at 15, and that measurement is its
number, with the fit's error at 15 beside it (``fit_error``; the check of the method, printed).

Besides the paper rows, :data:`VARIANTS` measures settings that decide what the paper's figures count,
e.g. the PTB DEQ-TrellisNet solved over the whole 150-token segment instead of v1's subsequences of
50 (its Broyden history alone, 45 pairs over 2 x 1400 x 150 x 15 float32 numbers, is 2.3 GB).

:func:`render_readme_table` turns the CSV into the README's table of pairs (``--readme`` rewrites it
between its markers; a test keeps the two equal).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deq.bench.memory import PAIRS, PROTOCOL_BATCH, PROTOCOL_SEQ, Scale, _memory_budget, config_at, deq_buffer_bytes, \
    estimate, measure_row, state_width
from deq.engine.memory import device_name
from deq.io import atomic_write_text
from deq.rows.configs import CONFIGS, LMConfig

__all__ = ["FIT_BATCHES", "VARIANTS", "fit_line", "render_readme_table", "run_paper_memory"]

# Every row is measured at these batches and extrapolated to 15. Not batch 1: there a transformer row's
# peak falls before the backward's temporaries grow (measured: XL-small-4 166 MB at batch 1 = its
# activations + parameter state exactly, then +84, +96, +87, +97 MB per sample at 2, 4, 8, 15), which
# put the line through 1 and 2 5-9% under the measured batch-15 peaks.
FIT_BATCHES = (2, 4)
DIRECT_BUDGET_S = 120.0  # estimated seconds of a row's two steps at batch 15 under which 15 is measured too
UNREACHABLE_TOL = 1e-30  # the DEQ rows run to their caps
FIT_TOLERANCE = 0.02  # the largest relative error at batch 15 the fit may show where 15 was measured
GB = 1e9
README_START, README_END = "<!-- paper-memory:start -->", "<!-- paper-memory:end -->"
# name -> (the row it varies, SolverSettings changes, what it settles)
VARIANTS = {
    "ptb-deq-trellisnet@whole-segment": ("ptb-deq-trellisnet", dict(subseq_len=0),
                                         "v1 settings solved over the whole 150-token segment, no subsequences"),
    "wt103-deq-transformer-medium@whole-segment": ("wt103-deq-transformer-medium", dict(subseq_len=0),
                                                   "v1 settings solved over the whole 150-token segment"),
}


def to_the_cap(cfg: LMConfig) -> LMConfig:
    """A DEQ row whose solves cannot meet their tolerance, so that both run to their caps."""
    if cfg.driver != "deq":
        return cfg
    return replace(cfg, solver=replace(cfg.solver, tol=UNREACHABLE_TOL, backward_tol=UNREACHABLE_TOL,
                                       eval_tol=UNREACHABLE_TOL))


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares (a, b) of value = a + b * batch over ``points`` {batch: value} (two or more)."""
    if len(points) < 2:
        raise ValueError(f"a line needs two or more batches, got {sorted(points)}")
    b, a = np.polyfit(list(points), list(points.values()), 1)
    return float(a), float(b)


def _revision() -> str:
    """The checkout's short revision; 'unknown' outside a git checkout or without git (the GPU machine)."""
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
    except OSError:
        return "unknown"
    return out.stdout.strip() or "unknown"


def measure_paper_row(name: str, cfg: LMConfig, *, preset: str, seq_len: int, target_batch: int,
                      fit_batches: tuple[int, ...], direct_budget_s: float, device: str) -> dict:
    """One row: measured at ``fit_batches`` (and at ``target_batch`` where it fits), fitted, extrapolated."""
    cfg = to_the_cap(cfg)
    scale = Scale(preset, True, seq_len, target_batch)
    est_s, est_peak = estimate(cfg, scale, 2, device)
    direct = est_s <= direct_budget_s and est_peak <= _memory_budget(device)
    points = {b: measure_row(cfg, replace(scale, batch=b), 2, device, cheap_warmup=True) for b in fit_batches}
    a, b = fit_line({batch: r["memory_bytes"] for batch, r in points.items()})
    act_a, act_b = fit_line({batch: r["activation_bytes"] for batch, r in points.items()})
    extrapolated = a + b * target_batch
    largest = points[max(points)]
    row = {"name": name, "row": cfg.name, "paper_table": cfg.paper_table, "driver": cfg.driver,
           "family": cfg.family, "n_layer": cfg.n_layer, "seq_len": seq_len, "batch": target_batch,
           "fit_batches": " ".join(map(str, fit_batches)), "fit_a_bytes": a, "fit_b_bytes": b,
           "fit_memory_bytes": extrapolated, "est_s": est_s, "est_peak_bytes": est_peak,
           "param_state_bytes": largest["param_state_bytes"],
           "activation_bytes": act_a + act_b * target_batch, "solver_code": cfg.solver.code if cfg.solver else "",
           "subseq_len": cfg.solver.subseq_len if cfg.solver else None,
           "fwd_iters": largest["fwd_iters"], "bwd_iters": largest["bwd_iters"], "fwd_buffer_bytes": 0,
           "bwd_buffer_bytes": 0, "method": largest["method"], "step_s_largest_fit_batch": largest["step_s"]}
    if cfg.driver == "deq":
        row["fwd_buffer_bytes"], row["bwd_buffer_bytes"] = deq_buffer_bytes(cfg.solver, target_batch, seq_len,
                                                                             state_width(cfg))
    if direct:
        measured = measure_row(cfg, scale, 2, device, cheap_warmup=True)
        row.update(memory_bytes=measured["memory_bytes"], extrapolated=False,
                   fit_error=extrapolated / measured["memory_bytes"] - 1, activation_bytes=measured["activation_bytes"],
                   step_s_batch=measured["step_s"])
    else:
        row.update(memory_bytes=extrapolated, extrapolated=True, fit_error=None, step_s_batch=None)
    # What the peak holds besides the parameter state and the solver's history (computed from its code):
    # activations, gradients and the backward's temporaries. (activation_bytes, the saved-tensor account,
    # counts a tensor once per op that saves it, so it can exceed this.)
    row["rest_bytes"] = row["memory_bytes"] - row["param_state_bytes"] - max(row["fwd_buffer_bytes"],
                                                                             row["bwd_buffer_bytes"])
    return row


def run_paper_memory(out_csv: str | Path | None = None, *, preset: str = "paper", seq_len: int = PROTOCOL_SEQ,
                     target_batch: int = PROTOCOL_BATCH, fit_batches: tuple[int, ...] = FIT_BATCHES,
                     direct_budget_s: float = DIRECT_BUDGET_S, names: tuple[str, ...] | None = None,
                     variants: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every row of Tables 2-3 (or ``names``) and :data:`VARIANTS` (or ``variants``); writes ``out_csv``.

    ``preset``, ``seq_len`` and the batches exist for tests ('smoke' widths on a few tokens); the
    benchmark is the default.
    """
    device, revision = "cuda" if torch.cuda.is_available() else "cpu", _revision()  # the code that runs
    names = tuple(CONFIGS) if names is None else names
    variants = tuple(VARIANTS) if variants is None else variants
    unknown = sorted(set(names) - set(CONFIGS)) + sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown row(s) {unknown}; choose from {[*CONFIGS, *VARIANTS]}")
    jobs = [(name, config_at(name, Scale(preset, True, seq_len, target_batch))) for name in names]
    for variant in variants:
        base, change, _ = VARIANTS[variant]
        cfg = config_at(base, Scale(preset, True, seq_len, target_batch))
        jobs.append((variant, replace(cfg, solver=replace(cfg.solver, **change))))
    rows = []
    for name, cfg in jobs:
        row = measure_paper_row(name, cfg, preset=preset, seq_len=seq_len, target_batch=target_batch,
                                fit_batches=fit_batches, direct_budget_s=direct_budget_s, device=device)
        row["paper_memory_gb"] = CONFIGS[cfg.name].paper_memory_gb if name in CONFIGS else None
        row["variant_of"] = VARIANTS[name][2] if name in VARIANTS else ""
        rows.append(row)
        how = "extrapolated" if row["extrapolated"] else f"measured (fit error {100 * row['fit_error']:+.2f}%)"
        print(f"{name}: {row['memory_bytes'] / GB:.3f} GB at batch {target_batch}, {how}", flush=True)
    frame = pd.DataFrame(rows)
    by_name = frame.set_index("name")
    frame["deq"], frame["reduction"], frame["paper_reduction"] = "", None, None
    for deq_name, counterparts in PAIRS.items():
        for name in counterparts:
            if deq_name in by_name.index and name in by_name.index:
                i = frame.index[frame.name == name][0]
                frame.loc[i, "deq"] = deq_name
                frame.loc[i, "reduction"] = 1 - by_name.at[deq_name, "memory_bytes"] / by_name.at[name, "memory_bytes"]
                frame.loc[i, "paper_reduction"] = 1 - (by_name.at[deq_name, "paper_memory_gb"]
                                                       / by_name.at[name, "paper_memory_gb"])
    frame["memory_gb"] = frame.memory_bytes / GB
    frame["device"], frame["date"] = device_name(), datetime.date.today().isoformat()
    frame["revision"], frame["torch"] = revision, torch.__version__
    frame["command"] = "python -m deq.bench.paper_memory"
    checked = frame[~frame.extrapolated.astype(bool)]
    for r in checked.itertuples():
        verdict = "ok" if abs(r.fit_error) <= FIT_TOLERANCE else f"ABOVE {FIT_TOLERANCE:.0%}"
        print(f"fit check {r.name}: extrapolated {r.fit_memory_bytes / GB:.3f} GB vs measured "
              f"{r.memory_bytes / GB:.3f} GB at batch {target_batch}: {100 * r.fit_error:+.2f}% ({verdict})")
    if out_csv is not None:
        atomic_write_text(out_csv, frame.to_csv(index=False))
    return frame


def render_readme_table(frame: pd.DataFrame) -> str:
    """The README's table of pairs (between its markers) from the reference CSV."""
    rows = frame.set_index("name")
    first = frame.iloc[0]
    lines = [README_START, "",
             f"| DEQ | vs | DEQ GB, ours (paper) | explicit GB, ours (paper) | reduction, ours (paper) |",
             "|---|---|---|---|---|"]
    for deq_name, counterparts in PAIRS.items():
        for name in counterparts:
            if deq_name not in rows.index or name not in rows.index:
                continue
            d, e = rows.loc[deq_name], rows.loc[name]
            lines.append(f"| {deq_name}{_mark(d)} | {name}{_mark(e)} | {d.memory_gb:.2f} ({d.paper_memory_gb:g}) | "
                         f"{e.memory_gb:.2f} ({e.paper_memory_gb:g}) | {100 * e.reduction:.1f}% "
                         f"({100 * e.paper_reduction:.1f}%) |")
    lines += ["", "What each peak holds (GB at batch 15): the parameter state (weights and Adam moments, "
              "embedding excluded), the solver's history (Broyden's U and V at the cap, computed from its code), "
              "and the rest (activations, gradients, the backward's temporaries).", "",
              "| row | peak | parameter state | solver history | rest | paper |", "|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        history = max(r.fwd_buffer_bytes, r.bwd_buffer_bytes) / GB
        paper = "" if pd.isna(r.paper_memory_gb) else f"{r.paper_memory_gb:g}"
        name = r.name if not r.variant_of or pd.isna(r.variant_of) else f"{r.name} ({r.variant_of})"
        rest = r.memory_gb - r.param_state_bytes / GB - history
        lines.append(f"| {name}{_mark(r)} | {r.memory_gb:.2f} | {r.param_state_bytes / GB:.2f} | {history:.2f} | "
                     f"{rest:.2f} | {paper} |")
    checks = frame[~frame.extrapolated.astype(bool)]
    check = ", ".join(f"{r.name} {100 * r.fit_error:+.2f}%" for r in checks.itertuples()) or "none"
    lines += ["", f"\\* extrapolated from batches {first.fit_batches} (peak = a + b x batch); the others measured "
              f"at batch {first.batch}, where the fit's error at {first.batch} was: {check}. Measured on "
              f"{first.device}, {first.date}, revision {first.revision}, torch {first.torch}, method "
              f"`{first.method}`; `results/reference/cpu/memory_paper.csv`, `make paper-memory`.", "", README_END]
    return "\n".join(lines)


def _mark(row) -> str:
    return "\\*" if bool(row.extrapolated) else ""


def write_readme(frame: pd.DataFrame, readme: Path = Path("README.md")) -> None:
    text = readme.read_text()
    if README_START not in text or README_END not in text:
        raise ValueError(f"{readme} has no {README_START} ... {README_END} markers")
    head, rest = text.split(README_START, 1)
    atomic_write_text(readme, head + render_readme_table(frame) + rest.split(README_END, 1)[1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.bench.paper_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/reference/cpu/memory_paper.csv"),
                        help="the CSV to write (default: %(default)s)")
    parser.add_argument("--rows", nargs="*", default=None, help="only these rows (default: every row and variant)")
    parser.add_argument("--readme", action="store_true", help="also rewrite README.md's table from the CSV")
    parser.add_argument("--readme-only", action="store_true", help="only rewrite README.md's table from --out")
    args = parser.parse_args(argv)
    if args.readme_only:
        write_readme(pd.read_csv(args.out))
        return
    names = variants = None
    if args.rows is not None:
        names = tuple(r for r in args.rows if r in CONFIGS)
        variants = tuple(r for r in args.rows if r not in CONFIGS)
    frame = run_paper_memory(args.out, names=names, variants=variants)
    if args.readme:
        write_readme(frame)


if __name__ == "__main__":
    main()
