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
extrapolated to 15 (``extrapolated`` True); a row whose cost at batch 15, extrapolated from its largest
fit batch (seconds linear in the batch, the peak on the line), fits ``direct_budget_s`` and half the
free memory is also measured at 15, and that measurement is its
number, with the fit's error at 15 beside it (``fit_error``; the check of the method, printed). The
columns are :class:`PaperMemoryRow`'s fields.

Besides the paper rows, :data:`VARIANTS` measures settings that decide what the paper's figures count,
e.g. the PTB DEQ-TrellisNet solved over the whole 150-token segment instead of v1's subsequences of
50 (its Broyden history alone, 45 pairs over 2 x 1400 x 150 x 15 float32 numbers, is 2.3 GB).

README's tables of it are rendered by :mod:`deq.report.readme` (``--readme`` runs it after measuring).
"""

from __future__ import annotations

import argparse
import datetime
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from deq.bench.common import columns, write_rows
from deq.bench.memory import PAIRS, PROTOCOL_BATCH, PROTOCOL_SEQ, config_at, deq_buffer_bytes, measure_row, state_width
from deq.engine.memory import device_name
from deq.presets import MemoryScale
from deq.provenance import revision
from deq.rows.configs import CONFIGS, LMConfig

__all__ = ["FIT_BATCHES", "VARIANTS", "PaperMemoryRow", "fit_line", "run_paper_memory"]

# Every row is measured at these batches and extrapolated to 15. Not batch 1: there a transformer row's
# peak falls before the backward's temporaries grow (measured: XL-small-4 166 MB at batch 1 = its
# activations + parameter state exactly, then +84, +96, +87, +97 MB per sample at 2, 4, 8, 15), which
# put the line through 1 and 2 5-9% under the measured batch-15 peaks.
FIT_BATCHES = (2, 4)
DIRECT_BUDGET_S = 120.0  # extrapolated seconds of a row's two steps at batch 15 under which 15 is measured too
UNREACHABLE_TOL = 1e-30  # the DEQ rows run to their caps
FIT_TOLERANCE = 0.02  # the largest relative error at batch 15 the fit may show where 15 was measured
GB = 1e9
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


def free_memory(device: str) -> int:
    """Bytes free now: the GPU's, or the machine's MemAvailable (/proc/meminfo; 16 GB where unreadable)."""
    if device == "cuda":
        return torch.cuda.mem_get_info()[0]
    try:
        return next(int(line.split()[1]) * 1024 for line in Path("/proc/meminfo").read_text().splitlines()
                    if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return 16 * GB


def fit_line(points: dict[int, float]) -> tuple[float, float]:
    """Least-squares (a, b) of value = a + b * batch over ``points`` {batch: value} (two or more)."""
    if len(points) < 2:
        raise ValueError(f"a line needs two or more batches, got {sorted(points)}")
    b, a = np.polyfit(list(points), list(points.values()), 1)
    return float(a), float(b)


@dataclass
class PaperMemoryRow:
    """One row (or variant) at the paper's widths: a row of ``memory_paper.csv``."""

    name: str  # registry row, or a variant of VARIANTS
    row: str  # the registry row measured
    paper_table: int
    driver: str
    family: str
    n_layer: int
    seq_len: int
    batch: int  # the protocol's batch the row is reported at
    fit_batches: str  # the batches measured for the fit, space-separated
    fit_a_bytes: float  # peak = a + b * batch
    fit_b_bytes: float
    fit_memory_bytes: float  # the line at the protocol's batch
    est_s: float  # seconds of two steps at the protocol's batch, extrapolated from the largest fit batch
    param_state_bytes: int  # weights, gradients and Adam moments, embedding excluded
    activation_bytes: float  # saved for backward (fitted, or measured at batch)
    solver_code: str  # 'v1', 'v2' or '' (explicit)
    subseq_len: int | None
    fwd_iters: int | None
    bwd_iters: int | None
    fwd_buffer_bytes: int  # computed solver histories at the protocol's batch
    bwd_buffer_bytes: int
    method: str  # the allocator counter
    step_s_largest_fit_batch: float
    memory_bytes: float  # THE number: measured at batch where it fits, else fit_memory_bytes
    extrapolated: bool
    fit_error: float | None  # fit / measured - 1 at batch, where measured
    step_s_batch: float | None
    rest_bytes: float  # memory - parameter state - the larger solver history: activations, gradients, temporaries
    paper_memory_gb: float | None
    variant_of: str  # what a variant settles ('' for a paper row)
    deq: str = ""  # an explicit row's DEQ
    reduction: float | None = None  # 1 - DEQ / this row
    paper_reduction: float | None = None  # ... the paper's
    memory_gb: float = 0.0
    device: str = ""
    date: str = ""
    revision: str = ""
    torch: str = torch.__version__
    command: str = "python -m deq.bench.paper_memory"


def measure_paper_row(name: str, cfg: LMConfig, scale: MemoryScale, fit_batches: tuple[int, ...], direct_budget_s: float,
                      device: str) -> PaperMemoryRow:
    """One row: measured at ``fit_batches`` (and at ``scale.batch`` where it fits), fitted, extrapolated."""
    cfg, seq_len, target_batch = to_the_cap(cfg), scale.seq_len, scale.batch
    points = {b: measure_row(cfg, replace(scale, batch=b), 2, device, cheap_warmup=True) for b in fit_batches}
    a, b = fit_line({batch: step.memory_bytes for batch, step in points.items()})
    act_a, act_b = fit_line({batch: step.activation_bytes for batch, step in points.items()})
    fit, largest = a + b * target_batch, points[max(points)]
    est_s = (largest.warmup_s + largest.step_s) * target_batch / max(points)
    memory, activations, fit_error, step_s = fit, act_a + act_b * target_batch, None, None
    if est_s <= direct_budget_s and fit <= free_memory(device) / 2:
        step = measure_row(cfg, scale, 2, device, cheap_warmup=True)
        memory, activations, step_s = step.memory_bytes, step.activation_bytes, step.step_s
        fit_error = fit / memory - 1
    fwd, bwd = deq_buffer_bytes(cfg.solver, target_batch, seq_len, state_width(cfg)) if cfg.driver == "deq" else (0, 0)
    paper_gb = CONFIGS[cfg.name].paper_memory_gb if name in CONFIGS else None
    return PaperMemoryRow(
        name, cfg.name, cfg.paper_table, cfg.driver, cfg.family, cfg.n_layer, seq_len, target_batch,
        " ".join(map(str, fit_batches)), a, b, fit, est_s, largest.param_state_bytes, activations,
        cfg.solver.code if cfg.solver else "", cfg.solver.subseq_len if cfg.solver else None, largest.fwd_iters,
        largest.bwd_iters, fwd, bwd, largest.method, largest.step_s, memory, fit_error is None, fit_error, step_s,
        memory - largest.param_state_bytes - max(fwd, bwd), paper_gb, VARIANTS[name][2] if name in VARIANTS else "",
        memory_gb=memory / GB)


def run_paper_memory(out_csv: str | Path | None = None, *, preset: str = "paper", seq_len: int = PROTOCOL_SEQ,
                     target_batch: int = PROTOCOL_BATCH, fit_batches: tuple[int, ...] = FIT_BATCHES,
                     direct_budget_s: float = DIRECT_BUDGET_S, names: tuple[str, ...] | None = None,
                     variants: tuple[str, ...] | None = None) -> pd.DataFrame:
    """Every row of Tables 2-3 (or ``names``) and :data:`VARIANTS` (or ``variants``); writes ``out_csv``.

    ``preset``, ``seq_len`` and the batches exist for tests ('smoke' widths on a few tokens); the
    benchmark is the default.
    """
    device, code = "cuda" if torch.cuda.is_available() else "cpu", revision()  # the code that runs
    names = tuple(CONFIGS) if names is None else names
    variants = tuple(VARIANTS) if variants is None else variants
    unknown = sorted(set(names) - set(CONFIGS)) + sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown row(s) {unknown}; choose from {[*CONFIGS, *VARIANTS]}")
    scale = MemoryScale(preset, True, seq_len, target_batch)
    jobs = [(name, config_at(name, scale)) for name in names]
    for variant in variants:
        base, change, _ = VARIANTS[variant]
        cfg = config_at(base, scale)
        jobs.append((variant, replace(cfg, solver=replace(cfg.solver, **change))))
    rows = {}
    for name, cfg in jobs:
        row = rows[name] = measure_paper_row(name, cfg, scale, fit_batches, direct_budget_s, device)
        row.device, row.date, row.revision = device_name(), datetime.date.today().isoformat(), code
        how = "extrapolated" if row.extrapolated else f"measured (fit error {100 * row.fit_error:+.2f}%)"
        print(f"{name}: {row.memory_bytes / GB:.3f} GB at batch {target_batch}, {how}", flush=True)
    for deq_name, counterparts in PAIRS.items():
        for name in counterparts:
            if deq_name in rows and name in rows:
                ours, theirs = rows[deq_name], rows[name]
                theirs.deq, theirs.reduction = deq_name, 1 - ours.memory_bytes / theirs.memory_bytes
                theirs.paper_reduction = 1 - ours.paper_memory_gb / theirs.paper_memory_gb
    for r in rows.values():
        if not r.extrapolated:
            verdict = "ok" if abs(r.fit_error) <= FIT_TOLERANCE else f"ABOVE {FIT_TOLERANCE:.0%}"
            print(f"fit check {r.name}: extrapolated {r.fit_memory_bytes / GB:.3f} GB vs measured "
                  f"{r.memory_bytes / GB:.3f} GB at batch {target_batch}: {100 * r.fit_error:+.2f}% ({verdict})")
    write_rows(list(rows.values()), out_csv)
    return pd.DataFrame([columns(r) for r in rows.values()])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.bench.paper_memory", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("results/reference/cpu/memory_paper.csv"),
                        help="the CSV to write (default: %(default)s)")
    parser.add_argument("--rows", nargs="*", default=None, help="only these rows (default: every row and variant)")
    parser.add_argument("--readme", action="store_true", help="then rewrite README.md's tables (deq.report.readme)")
    args = parser.parse_args(argv)
    names = variants = None
    if args.rows is not None:
        names = tuple(r for r in args.rows if r in CONFIGS)
        variants = tuple(r for r in args.rows if r not in CONFIGS)
    run_paper_memory(args.out, names=names, variants=variants)
    if args.readme:  # README's tables are rendered from the reference CSVs, this one among them
        from deq.report.readme import main as rewrite_readme

        rewrite_readme([])


if __name__ == "__main__":
    main()
