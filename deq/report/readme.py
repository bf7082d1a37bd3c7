"""README's measured numbers, rendered from the committed reference CSVs (measure, then render).

Every measured number the README quotes (the Performance section, the Quickstart's timings) stands between two markers,
``<!-- NAME:start -->`` and ``<!-- NAME:end -->``, and is rendered from a committed CSV under
``results/reference/cpu/`` by the block's renderer in :data:`BLOCKS`; prose outside the markers
explains method and quotes no measurement.

- ``python -m deq.report.readme`` rewrites every block of README.md from the CSVs (``make readme``);
- ``python -m deq.report.readme --check`` changes nothing and exits 1 naming the stale blocks;
- ``python -m deq.report.readme measure NAME [--preset P] [--checkout DIR]`` runs ``python -m deq.bench NAME
  --preset P`` (default cpu) in a checkout (this repository by default; a clean ``git worktree`` gives a
  clean revision) and writes ``results/reference/cpu/NAME.csv`` (``NAME_P.csv`` for another preset, e.g.
  ``memory_paper.csv``, ``make paper-memory``): the benchmark's CSV with its provenance on every row
  (:data:`PROVENANCE`).
- ``python -m deq.report.readme time`` clones this repository's HEAD into a fresh folder, runs the
  README's two commands there as a newcomer would (:data:`QUICKSTART`), and writes their wall times
  to ``results/reference/cpu/quickstart.csv``; the Quickstart's timings are rendered from it.

The module reads CSVs only (pandas, numpy): it imports neither torch nor the benchmarks, and
depends on the benchmarks' CSV columns alone (each block names the ones it reads; a missing one
is an error naming it).
"""

from __future__ import annotations

import argparse
import datetime
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from deq.io import atomic_write_text
from deq.provenance import REPO, cpu_name, revision, version
from deq.report.benchmarks import (GOAL_COSINE, GOAL_DEPTH, GOAL_LOSS, GOAL_REDUCTION, LEAN_GOAL, MB, bound,
                                   explicit_line, fmt, mb, pct, per_call_ratio, solver_table, spread)

REFERENCE = Path("results/reference/cpu")  # relative to the repository root
BENCHMARKS = ("solvers", "memory", "depth", "runtime")  # python -m deq.bench NAME
# Columns `measure` adds to every row of a reference CSV (memory_paper.csv's precedent: device, date,
# revision, torch, command): when, at which revision (+dirty: tracked files differed from it), with
# which libraries, on which CPU and how many cores, by which command, and how long it took (seconds).
PROVENANCE = ("date", "revision", "torch", "torchdeq", "machine", "command", "wall_s")
# Read as text: a short revision of digits only ("6813947", "0123456") must not become a number.
TEXT = {"revision": str}


# ---- measure: a benchmark's CSV with its provenance ---------------------------------------------

def bench_command(name: str, preset: str = "cpu") -> list[str]:
    """The benchmark's command line, as recorded in ``command`` (``python`` for the interpreter)."""
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; choose from {list(BENCHMARKS)}")
    return ["python", "-m", "deq.bench", name, "--preset", preset]


def provenance(checkout: Path, command: list[str], wall_s: float) -> dict[str, object]:
    """The :data:`PROVENANCE` fields of a measurement made now in ``checkout`` by ``command``."""
    return {"date": datetime.date.today().isoformat(), "revision": revision(checkout),
            "torch": version("torch") or "not installed", "torchdeq": version("torchdeq") or "not installed",
            "machine": f"{cpu_name()}, {os.cpu_count()} cores", "command": " ".join(command), "wall_s": round(wall_s, 1)}


def with_provenance(frame: pd.DataFrame, fields: dict[str, object]) -> pd.DataFrame:
    """``frame`` with ``fields`` as columns on every row (replacing same-named columns)."""
    missing = sorted(set(PROVENANCE) - set(fields))
    if missing:
        raise ValueError(f"provenance lacks {missing}; it needs {list(PROVENANCE)}")
    return frame.drop(columns=[c for c in PROVENANCE if c in frame.columns]).assign(**fields)


def measure(name: str, checkout: Path = REPO, out_dir: Path | None = None, preset: str = "cpu") -> Path:
    """Run benchmark ``name`` in ``checkout`` with this interpreter, write ``out_dir/name.csv`` (``name_preset.csv``
    for a preset other than cpu) with provenance."""
    command = bench_command(name, preset)
    out_dir = REPO / REFERENCE if out_dir is None else out_dir
    with tempfile.TemporaryDirectory() as tmp:
        start = time.monotonic()
        subprocess.run([sys.executable, *command[1:], "--out", tmp], cwd=checkout, check=True)
        wall_s = time.monotonic() - start
        frame = pd.read_csv(Path(tmp) / f"{name}.csv", dtype=TEXT)
    target = out_dir / (f"{name}.csv" if preset == "cpu" else f"{name}_{preset}.csv")
    atomic_write_text(target, with_provenance(frame, provenance(checkout, command, wall_s)).to_csv(index=False))
    return target


# ---- time: the README's two commands in a fresh clone ---------------------------------------------

QUICKSTART = ("make test", "make run PRESET=smoke")  # run in this order, in one fresh clone
PASSED = re.compile(r"(\d+) passed")


def time_quickstart(parent: Path = REPO.parent, out_dir: Path | None = None) -> Path:
    """Clone HEAD into a new folder under ``parent``, run :data:`QUICKSTART` there one after the other,
    and write each command's wall time (and pytest's count of passed tests, where it prints one) with its
    provenance to ``out_dir/quickstart.csv``. A command that fails stops it, naming its log; nothing is
    written then. ``parent`` must hold what the tests expect beside a checkout (``../shared/data``)."""
    clone = Path(tempfile.mkdtemp(prefix="deq-quickstart-", dir=parent))
    subprocess.run(["git", "clone", "--quiet", str(REPO), str(clone)], check=True)
    rows = []
    for command in QUICKSTART:
        log = clone / f"{command.replace(' ', '_').replace('=', '-')}.log"
        start = time.monotonic()
        with open(log, "w") as out:
            done = subprocess.run(command, shell=True, cwd=clone, stdout=out, stderr=subprocess.STDOUT)
        wall_s = time.monotonic() - start
        if done.returncode != 0:
            raise RuntimeError(f"`{command}` failed (exit {done.returncode}) in {clone}; see {log}")
        counts = PASSED.findall(log.read_text())
        rows.append({"passed": int(counts[-1]) if counts else None,
                     **provenance(clone, command.split(), wall_s)})
    target = (REPO / REFERENCE if out_dir is None else out_dir) / "quickstart.csv"
    atomic_write_text(target, pd.DataFrame(rows).astype({"passed": "Int64"}).to_csv(index=False))
    return target


QUICKSTART_COLUMNS = ("passed", *PROVENANCE)


def render_quickstart(frame: pd.DataFrame) -> str:
    by = {row.command: row for row in frame.itertuples()}
    missing = [command for command in QUICKSTART if command not in by]
    if missing:
        raise ValueError(f"quickstart.csv lacks {missing}; remake it with: {REMAKE['quickstart']}")
    test, run = by["make test"], by["make run PRESET=smoke"]
    first = frame.iloc[0]
    return (f"Timed in a fresh clone (`python -m deq.report.readme time`, {first.date}, revision {first.revision}, "
            f"{first.machine}): `make test` ran {int(test.passed):,} tests in {test.wall_s / 60:.0f} minutes "
            f"({test.wall_s:,.0f} s, the install included), then `make run PRESET=smoke` took {run.wall_s:,.0f} s; "
            f"`{REFERENCE}/quickstart.csv`.")


# ---- reading: every block names the CSV and the columns it reads -----------------------------------

GB = 1e9
REMAKE = {name: f"python -m deq.report.readme measure {name}" for name in BENCHMARKS} | {
    "memory_paper": "python -m deq.report.readme measure memory --preset paper",
    "quickstart": "python -m deq.report.readme time",
    "lean_accuracy": "python -m deq.lean accuracy RUN... --out results/reference/cpu/lean_accuracy.csv (deq.lean)",
    "lean_training": "python -m deq.lean training STANDARD LEAN... --out results/reference/cpu/lean_training.csv "
                     "--figure results/reference/cpu/lean_training.png (deq.lean)",
    "lean_widths": "python -m deq.lean widths --out results/reference/cpu/lean_widths.csv (deq.lean)"}


def read_reference(name: str, needs: tuple[str, ...], root: Path) -> pd.DataFrame:
    """``root/name.csv``, after checking that it has every column in ``needs``."""
    path = root / f"{name}.csv"
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing; make it with: {REMAKE[name]}")
    frame = pd.read_csv(path, dtype=TEXT)
    missing = [column for column in needs if column not in frame.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing} that README's blocks read; remake it with: "
                         f"{REMAKE[name]}")
    return frame


def _span(values, spec: str) -> str:
    """'lo-hi' of ``values`` in ``spec`` (one number where both print alike)."""
    lo, hi = format(min(values), spec), format(max(values), spec)
    return lo if lo == hi else f"{lo} to {hi}" if min(values) < 0 else f"{lo}-{hi}"


def _join(words: list[str]) -> str:
    return words[0] if len(words) == 1 else ", ".join(words[:-1]) + " and " + words[-1]


def measured_by(frame: pd.DataFrame, name: str) -> str:
    """The block's closing line: where, when, at which revision and by which command ``name.csv`` was made."""
    first = frame.iloc[0]
    return (f"Measured on {first.machine}, {first.date}, revision {first.revision}, torch {first.torch}, by "
            f"`{first.command}` ({first.wall_s / 60:.0f} minutes); `{REFERENCE / name}.csv`.")


# ---- solvers: the table, the goals and the findings ---------------------------------------------

OURS, PEER = "deq-harness", "torchdeq"
# The issue's goals for wall time per f call, ours / the other (a ratio at or under the limit meets it).
SOLVER_GOALS = (("our Broyden / our Anderson, wall per f call (equal nfe)", (OURS, "broyden"), (OURS, "anderson"), 1.3),
                ("our Broyden / torchdeq Broyden, wall at equal nfe", (OURS, "broyden"), (PEER, "broyden"), 0.7),
                ("our Anderson / torchdeq Anderson, wall at equal nfe", (OURS, "anderson"), (PEER, "anderson"), 1.0))
SOLVER_COLUMNS = ("source", "solver", "phase", "wall_ms", "wall_ms_q1", "wall_ms_q3", "n_iter", "nfe", "ms_per_nfe",
                  "overhead_ms_per_nfe", "rel_residual_max", "converged_fraction", "bwd_n_iter",
                  "bwd_rel_residual_max", "bwd_converged_fraction", "f_eval_ms", "round_walls_ms", "device",
                  *PROVENANCE)


def render_solvers(frame: pd.DataFrame) -> str:
    rows = frame.to_dict("records")
    by = {(r["source"], r["solver"], r["phase"]): r for r in rows}
    first, anderson = rows[0], by[OURS, "anderson", "forward"]
    rounds = len(str(first["round_walls_ms"]).split())
    lines = [f"On {first['device']}; torch {first['torch']}, torchdeq "
             f"{first['torchdeq']}. Medians of {rounds} "
             f"interleaved rounds after a warm-up (IQR in brackets); one f evaluation takes {first['f_eval_ms']:.1f} "
             f"ms. At random initialisation convergence is slow: after {anderson['n_iter']} forward iterations our "
             f"Anderson leaves {1 - anderson['converged_fraction']:.0%} of the samples above the forward tolerance.",
             "", *solver_table(rows)]
    lines += ["", "Ratios compare wall time per f call, as medians over rounds of the within-round ratio; a "
              "backward reaches its tolerance when every sample does.", "",
              "| target | measured | goal | met |", "|---|---|---|---|"]
    ratios = {}
    for label, a, b, limit in SOLVER_GOALS:
        ratios[a, b] = value = per_call_ratio(by, a, b, "forward_fixed_nfe")
        met = "" if value is None else ("yes" if value <= limit else "NO")
        lines.append(f"| {label} | {fmt(value, '.3g') or 'n/a'} | <= {limit} | {met} |")
    cheap = {}
    for label, a, b, _ in SOLVER_GOALS:
        cheap[a, b] = value = per_call_ratio(by, a, b, "solver_only")
        if value is not None:  # where the time goes: the solvers' own work, for reference
            lines.append(f"| solver only (cheap f): {label.split(',')[0]} | {value:.3g} |  |  |")
    backward = {key[:2]: r for key, r in by.items() if key[2] == "train_step" and key[1] != "picard"}
    for (source, name), r in backward.items():
        met = "yes" if r["bwd_converged_fraction"] >= 1 else "NO"
        lines.append(f"| {source} {name} backward reaches its tolerance (worst rel residual; share of samples) | "
                     f"{r['bwd_rel_residual_max']:.2g}; {r['bwd_converged_fraction']:.2f} | every sample | {met} |")
    lines += ["", "Findings:", *solver_findings(by, ratios, cheap, backward), "", measured_by(frame, "solvers")]
    return "\n".join(lines)


def solver_findings(by: dict, ratios: dict, cheap: dict, backward: dict) -> list[str]:
    (bb, bt, at), (cbb, cbt, cat) = ([table[a, b] for _, a, b, _ in SOLVER_GOALS] for table in (ratios, cheap))
    bb_goal, bt_goal, at_goal = (limit for *_, limit in SOLVER_GOALS)
    out = [f"- Broyden's cost per f call is {fmt(bb, '.2f')}x Anderson's on the cell (goal <= {bb_goal}x)"]
    if bt is not None:
        out[0] += (f" and {bt:.2f}x torchdeq's Broyden at equal nfe (goal <= {bt_goal}x): two low-rank products per "
                   "step instead of three, in the row-vector shapes that CPU GEMV runs fast. On the cheap f, where "
                   f"only the solvers' own work counts, ours costs {fmt(cbt, '.2f')}x torchdeq's Broyden")
    out[0] += f"; full-memory Broyden costs {fmt(cbb, '.1f')}x our Anderson there."
    if at is not None:
        overhead = by[OURS, "anderson", "forward_fixed_nfe"]["overhead_ms_per_nfe"]
        own = (f"our Anderson's own work {overhead:.2f} ms per call" if overhead >= 0 else
               f"our Anderson's own work below the noise of one f call: wall per call minus one f is {overhead:.2f} ms")
        out.append(f"- Our Anderson costs {at:.2f}x torchdeq's on the cell (goal <= {at_goal}x; one f call takes "
                   f"{by[OURS, 'anderson', 'forward']['f_eval_ms']:.1f} ms, {own}) and {fmt(cat, '.2f')}x on the cheap f.")
    reached = {(s, name): r["bwd_converged_fraction"] >= 1 for (s, name), r in backward.items()}
    ours = [name.capitalize() for (s, name), ok in reached.items() if s == OURS and ok]
    missed = [name.capitalize() for (s, name), ok in reached.items() if s == OURS and not ok]
    sentence = ("- Backward: ours reaches the backward tolerance with " + (_join(ours) if ours else "neither solver")
                + (f" and not with {_join(missed)}" if missed else ""))
    for name, r in [(name, backward[s, name]) for (s, name), ok in reached.items() if s == PEER and not ok]:
        sentence += (f"; torchdeq's {name.capitalize()} stalls at a relative residual of "
                     f"{r['bwd_rel_residual_max']:.0e} on the same problem")
        if name == "anderson" and reached.get((OURS, "anderson")):
            sentence += (" (its bordered mixing system is nearly singular in float32 once residuals are parallel; "
                         "ours uses the difference form and a relative ridge)")
    out.append(sentence + ".")
    return out


# ---- memory at the paper's protocol --------------------------------------------------------------

MEMORY_COLUMNS = ("name", "deq", "scale", "memory_bytes", "total_bytes", "driver_bytes", "reduction",
                  "accounted_reduction", "driver_reduction", "paper_reduction", "lean_reduction", "floor_ratio",
                  *PROVENANCE)


def render_memory(frame: pd.DataFrame) -> str:
    rows = frame.set_index("name")
    lines = ["| DEQ | vs | scale | DEQ MB | explicit MB | measured reduction | accounted | driver only (accounted) "
             "| paper | lean DEQ MB | lean reduction |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in frame[frame.deq.fillna("") != ""].itertuples():
        lines.append(f"| {r.deq} | {r.name} | {r.scale} | {mb(rows.at[r.deq, 'memory_bytes'])} | "
                     f"{mb(r.memory_bytes)} | {pct(r.reduction)} | {pct(r.accounted_reduction)} | "
                     f"{pct(r.driver_reduction)} | {pct(r.paper_reduction)} | "
                     f"{mb(rows.at[f'{r.deq}@lean', 'memory_bytes'])} | {pct(r.lean_reduction)} |")
    transformers = frame[frame.name.str.contains("transformer")]
    outside = (transformers.total_bytes - transformers.driver_bytes) / MB
    lines += ["", f"The driver-only column leaves out what both models of a pair pay outside the driver, chiefly the "
              f"softmax over the vocabulary: for the transformer rows {_span(outside, '.0f')} MB of the "
              f"{_span(transformers.total_bytes / MB, '.0f')} MB accounted.", "", floor_finding(frame), "",
              measured_by(frame, "memory")]
    return "\n".join(lines)


# ---- memory against depth ------------------------------------------------------------------------

FLAT = 0.05  # the goal's "flat": max / min - 1 over caps 8-64 at most this
DEPTH_COLUMNS = ("family", "row", "width", "d_state", "seq_len", "batch", "depth", "model", "activation_bytes",
                 "fwd_buffer_bytes", "total_bytes", "reduction", *PROVENANCE)


def render_depth(frame: pd.DataFrame) -> str:
    floors = frame[frame.model == "floor"].set_index("family")
    frame = frame[frame.model != "floor"]
    families = list(dict.fromkeys(frame.family))
    variants = [m for m in dict.fromkeys(frame.model) if m != "explicit"]
    short = [v.removeprefix("deq-") for v in variants]
    depths = sorted(set(frame.depth))
    shown = [d for d in depths if d >= GOAL_DEPTH]
    first = frame.iloc[0]
    lines = [f"Depths {_join([str(d) for d in depths])}; sequence {first.seq_len} x batch {first.batch}. Measured "
             f"totals, reduction against the explicit stack at the same depth:", "",
             f"| cell | explicit stack, measured | bound at {GOAL_DEPTH} | {GOAL_REDUCTION:.0%} possible from depth | "
             + " | ".join(f"depth {d}" + (": " + " / ".join(short) if d == shown[0] else "") for d in shown) + " |",
             "|---|---|---|---|" + "---|" * len(shown)]
    facts = {}
    for family in families:
        rows = frame[frame.family == family]
        by = {(r.model, r.depth): r for r in rows.itertuples()}
        line = explicit_line({key: r._asdict() for key, r in by.items()})
        reach = next((d for d in range(1, 1025) if bound(line, d) >= GOAL_REDUCTION), None)
        r = rows.iloc[0]
        cell = f"{r.row} cell (width {r.width}" + (f", state {r.d_state}" if r.d_state != r.width else "") + ")"
        lines.append(f"| {cell} | {line[0] / MB:.1f} MB + {line[1] / MB:.1f} MB per layer | "
                     f"{pct(bound(line, GOAL_DEPTH))} | {reach or 'over 1024'} | "
                     + " | ".join(" / ".join(pct(by[v, d].reduction) for v in variants) for d in shown) + " |")
        facts[family] = (by, line)
    lines += [""] + depth_findings(facts, variants, depths) + lean_findings(frame, floors)
    return "\n".join(lines + ["", measured_by(frame, "depth")])


def lean_findings(frame: pd.DataFrame, floors: pd.DataFrame) -> list[str]:
    """The lean mode against the one-layer floor, per cell, over caps 8-64 (the goal's range)."""
    if "deq-lean" not in set(frame.model):
        return []
    lean = frame[(frame.model == "deq-lean") & (frame.depth >= 8)]
    parts = [f"the {family} cell's total is {rows.floor_ratio.min():.2f}-{rows.floor_ratio.max():.2f}x its floor "
             f"({floors.total_bytes[family] / MB:.1f} MB)" for family, rows in lean.groupby("family", sort=False)]
    met = (lean.floor_ratio <= LEAN_GOAL).all()
    return [f"- Lean mode (`deq.settings.LEAN`), caps 8-64: {_join(parts)}; the floor is the cell's one-layer "
            f"weight-tied stack, measured in the same run. Goal <= {LEAN_GOAL:g}x: {'met' if met else 'NOT met'}."]


def depth_findings(facts: dict, variants: list[str], depths: list[int]) -> list[str]:
    capped = [d for d in depths if d >= 8]
    activation_spread = max(spread([by[v, d].activation_bytes for d in capped])
                            for by, _ in facts.values() for v in variants)
    total = {(family, v): spread([by[v, d].total_bytes for d in capped])
             for family, (by, _) in facts.items() for v in variants}
    growing = {v: [f"{family} +{100 * total[family, v]:.0f}%" for family in facts if total[family, v] > FLAT]
               for v in variants}
    flat = [moved for moved in total.values() if moved <= FLAT]
    out = [f"- From cap {capped[0]} to {capped[-1]} the DEQ's saved activations change by at most "
           f"{pct(activation_spread)} for every variant"
           + (f", its measured total by at most {pct(max(flat))}" if flat else "")
           + ("" if not any(growing.values()) else ", except where it grows: " + "; ".join(
               f"`{v.removeprefix('deq-')}` ({', '.join(g)})" for v, g in growing.items() if g)) + "."]
    bounds = {family: bound(line, GOAL_DEPTH) for family, (_, line) in facts.items()}
    best = {family: max(variants, key=lambda v: by[v, GOAL_DEPTH].reduction) for family, (by, _) in facts.items()}
    met = [family for family, (by, _) in facts.items() if by[best[family], GOAL_DEPTH].reduction >= GOAL_REDUCTION]
    out.append(f"- The goal \"total >= {GOAL_REDUCTION:.0%} below the explicit stack from depth {GOAL_DEPTH}\" is "
               + (f"met at depth {GOAL_DEPTH} for {_join(met)}" if met else
                  f"not met at depth {GOAL_DEPTH} by any variant")
               + f". The explicit stack's measured line I + depth x L gives the bound 1 - (I + L) / (I + {GOAL_DEPTH} "
               "L) for a DEQ that kept one layer's worth of everything and no solver buffers (I: weights, gradients "
               "and moments, input and readout, one layer's backward temporaries): "
               + _join([f"{pct(b)} for {family}" for family, b in bounds.items()]) + ".")
    last = depths[-1]
    for family, (by, _) in facts.items():
        r = by[best[family], GOAL_DEPTH]
        reached = next((d for d in depths if by[best[family], d].reduction >= GOAL_REDUCTION), None)
        passes = (f"passes {GOAL_REDUCTION:.0%} from depth {reached} ({pct(by[best[family], reached].reduction)})"
                  if reached else
                  f"stays under {GOAL_REDUCTION:.0%} up to depth {last} ({pct(by[best[family], last].reduction)})")
        gap = 100 * (bounds[family] - r.reduction)
        out.append(f"- The {r.row} cell: the leanest variant at depth {GOAL_DEPTH}, "
                   f"`{best[family].removeprefix('deq-')}`, is {pct(r.reduction)} below the explicit stack, "
                   f"{abs(gap):.1f} points {'under' if gap >= 0 else 'over'} the bound, and {passes}; its forward "
                   f"solver buffers hold {mb(r.fwd_buffer_bytes)} MB (state {r.d_state} x {r.seq_len} x {r.batch}).")
    return out


# ---- runtime: Table 4's pairs --------------------------------------------------------------------

RUNTIME_COLUMNS = ("pair", "entry", "phase", "model", "tgt_len", "batch", "rounds", "explicit_depth", "ratio",
                   "ratio_q1", "ratio_q3", "ratio_of_medians", "paper_ratio", "goal", "goal_met", "fwd_nfe",
                   "fwd_max_iter", "fwd_at_cap_fraction", "f_ms", "fwd_solve_ms", "fwd_overhead_ms", "bwd_solve_ms",
                   "bwd_n_iter", "bwd_max_iter", "step_ms", *PROVENANCE)


def render_runtime(frame: pd.DataFrame) -> str:
    by = {(r.pair, r.entry, r.phase): r for r in frame.itertuples()}
    pairs, phases = list(dict.fromkeys(frame.pair)), list(dict.fromkeys(frame.phase))
    first = frame.iloc[0]
    lines = [f"Segments of {first.tgt_len} tokens x batch {first.batch}, random-init weights, the explicit rows at "
             f"the paper's depth; medians of {first.rounds} interleaved rounds after a warm-up, DEQ / explicit as the "
             f"median of the within-round ratios with its IQR.", "",
             "| pair | phase | DEQ / explicit [IQR] | ratio of medians | at equal forward f calls | paper | goal "
             "| met |",
             "|---|---|---|---|---|---|---|---|"]
    undecided = []
    for pair in pairs:
        for i, phase in enumerate(phases):
            d, matched = by[pair, "deq", phase], by.get((pair, "deq_matched", phase))
            label = f"{d.model} vs {by[pair, 'explicit', phase].model}" if i == 0 else ""
            lines.append(f"| {label} | {phase} | {d.ratio:.2f} [{d.ratio_q1:.2f}, {d.ratio_q3:.2f}] | "
                         f"{d.ratio_of_medians:.2f} | {fmt(matched and matched.ratio, '.2f')} | {d.paper_ratio:.2f} | "
                         f"<= {d.goal:g} | {'yes' if d.goal_met in (True, 'True') else 'NO'} |")
            if d.ratio_q1 <= d.goal <= d.ratio_q3:
                undecided.append(f"{pair} {phase}")
    lines += ["", "Where the DEQ's time goes (untrained, so its forward solve may run to the cap):"]
    for pair in pairs:
        deq = [by[pair, "deq", phase] for phase in phases]
        explicit = [by[pair, "explicit", phase] for phase in phases]
        train = by[pair, "deq", "train"]
        calls, at_cap = _span([r.fwd_nfe for r in deq], ".0f"), _span([100 * r.fwd_at_cap_fraction for r in deq], ".0f")
        per_call = _span([d.f_ms / e.f_ms for d, e in zip(deq, explicit)], ".1f")
        overhead = _span([100 * r.fwd_overhead_ms / r.fwd_solve_ms for r in deq], ".0f")
        lines.append(
            f"- {train.model}: {calls} forward f calls (cap {train.fwd_max_iter:.0f}; {at_cap}% of the steps at the "
            f"cap) against {train.explicit_depth} layers; one f call costs {per_call}x one explicit layer; the "
            f"solver's own work is {overhead}% of the forward solve; the backward solve timed alone "
            f"({train.bwd_n_iter:.0f} iterations, cap {train.bwd_max_iter:.0f}) is "
            f"{train.bwd_solve_ms / train.step_ms:.0%} of a training step.")
    if undecided:
        lines += ["", f"The IQR straddles the goal for {_join(undecided)}: not decided at this noise level."]
    return "\n".join(lines + ["", measured_by(frame, "runtime")])


def floor_finding(frame: pd.DataFrame) -> str:
    """Each DEQ row's peak, with its row's settings and in the lean mode, over its floor (``<deq>@floor``)."""
    rows = frame.set_index("name")
    deqs = list(dict.fromkeys(d for d in frame.deq.fillna("") if d))
    standard, lean = list(rows.floor_ratio[deqs]), list(rows.floor_ratio[[f"{d}@lean" for d in deqs]])
    worst = max(lean)
    same = sum(rows.at[d, "memory_bytes"] == rows.at[f"{d}@lean", "memory_bytes"] for d in deqs)
    return (f"Against each DEQ's floor (its cell as a one-layer weight-tied stack, the `@floor` rows; both measured, "
            f"or both on their lines where either is extrapolated), at the solvers' caps: the paper's settings hold {_span(standard, '.2f')}x the floor, the lean mode "
            f"{_span(lean, '.2f')}x (goal <= {LEAN_GOAL:g}x: {'met' if worst <= LEAN_GOAL else 'NOT met'}; worst "
            f"{deqs[lean.index(worst)]})."
            + (f" For {same} of {len(deqs)} DEQ rows the lean peak equals the row's to the byte: the step's peak is "
               "set where neither solver's buffers are alive (the backward through f(z*) and the readout), so a "
               "smaller history cannot lower it there." if same else ""))


# ---- memory at the paper's widths (make paper-memory) --------------------------------------------

PAPER_MEMORY_COLUMNS = ("name", "deq", "memory_bytes", "paper_memory_gb", "reduction", "paper_reduction",
                        "lean_reduction", "floor_ratio",
                        "extrapolated", "fit_error", "fit_batches", "batch", "param_state_bytes", "fwd_buffer_bytes",
                        "bwd_buffer_bytes", "variant_of", "device", "date", "revision", "torch", "method")


def _pairs(frame: pd.DataFrame) -> list[tuple[str, str]]:
    """(DEQ, explicit) pairs: each explicit row names its DEQ in ``deq``; DEQs in order of first mention."""
    explicit = frame[frame.deq.fillna("") != ""]
    return [(deq, name) for deq in dict.fromkeys(explicit.deq) for name in explicit.name[explicit.deq == deq]]


def _mark(row) -> str:
    return "\\*" if bool(row.extrapolated) else ""


def _history_gb(row) -> float:
    return max(row.fwd_buffer_bytes, row.bwd_buffer_bytes) / GB


def render_paper_memory(frame: pd.DataFrame) -> str:
    frame = frame.assign(memory_gb=frame.memory_bytes / GB)
    rows = frame.set_index("name")
    first = frame.iloc[0]
    lines = ["| DEQ | vs | DEQ GB, ours (paper) | explicit GB, ours (paper) | reduction, ours (paper) | "
             "lean DEQ GB | reduction, lean |", "|---|---|---|---|---|---|---|"]
    for deq_name, name in _pairs(frame):
        d, e, lean = rows.loc[deq_name], rows.loc[name], rows.loc[f"{deq_name}@lean"]
        lines.append(f"| {deq_name}{_mark(d)} | {name}{_mark(e)} | {d.memory_gb:.2f} ({d.paper_memory_gb:g}) | "
                     f"{e.memory_gb:.2f} ({e.paper_memory_gb:g}) | {100 * e.reduction:.1f}% "
                     f"({100 * e.paper_reduction:.1f}%) | {lean.memory_gb:.2f}{_mark(lean)} | "
                     f"{100 * e.lean_reduction:.1f}% |")
    lines += ["", "What each peak holds (GB at batch 15): the parameter state (weights and Adam moments, "
              "embedding excluded), the solver's history (Broyden's U and V at the cap, computed from its code), "
              "and the rest (activations, gradients, the backward's temporaries).", "",
              "| row | peak | parameter state | solver history | rest | paper |", "|---|---|---|---|---|---|"]
    for r in frame.itertuples():
        history = _history_gb(r)
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
              f"`{first.method}`; `results/reference/cpu/memory_paper.csv`, `make paper-memory`."]
    return "\n".join(lines)


def render_paper_memory_findings(frame: pd.DataFrame) -> str:
    frame = frame.assign(memory_gb=frame.memory_bytes / GB)
    rows, pairs, first = frame.set_index("name"), _pairs(frame), frame.iloc[0]
    errors = frame.fit_error[~frame.extrapolated.astype(bool)].astype(float)
    side = ("always above it, so the extrapolated rows are if anything slightly high" if (errors > 0).all() else
            "always below it, so the extrapolated rows are if anything slightly low" if (errors < 0).all() else
            "on either side of it")
    out = [f"- The fit: where batch {first.batch} fitted the machine, the line through batches "
           f"{first.fit_batches.replace(' ', ' and ')} lands within {errors.abs().max():.1%} of the measured peak, "
           f"{side}."]
    deqs = [rows.loc[d] for d in dict.fromkeys(d for d, _ in pairs)]
    history = _span([100 * _history_gb(r) / r.memory_gb for r in deqs if "trellis" in r.name], ".0f")
    sentence = (f"- The DEQ rows: {_span([r.memory_gb / r.paper_memory_gb for r in deqs], '.2f')} times the paper's "
                f"GB; the solver's history is {history}% of a DEQ-TrellisNet's peak")
    for name, r in rows[rows.variant_of.fillna("") != ""].iterrows():
        base = rows.loc[name.split("@")[0]]
        if "trellis" in name and name.endswith("@whole-segment"):
            sentence += (f"; {base.name} solved over the whole segment (`{name}`) holds "
                         f"{_history_gb(r) / _history_gb(base):.1f} times the history ({_history_gb(r):.1f} GB) and "
                         f"{r.memory_gb / base.memory_gb:.1f} times the peak ({r.memory_gb:.2f} GB; the paper's "
                         f"{base.name}: {base.paper_memory_gb:g} GB)")
    out.append(sentence + ".")
    explicit = [rows.loc[e] for _, e in pairs]
    share = _span([100 * r.memory_gb / r.paper_memory_gb for r in explicit], ".0f")
    sentence = f"- The explicit rows: {share}% of the paper's GB"
    for r in explicit:
        if "checkpoint" in r.name:
            sentence += (f"; the checkpointed {r.name} gives a reduction of {100 * r.reduction:.1f}% against the "
                         f"paper's {100 * r.paper_reduction:.1f}%")
    low = min(explicit, key=lambda r: r.reduction)
    out += [sentence + ".", f"- The smallest reduction: {low.deq} against {low.name}, {100 * low.reduction:.1f}% "
            f"against the paper's {100 * low.paper_reduction:.1f}%.", "- " + floor_finding(frame)]
    return "\n".join(out)


# ---- the lean memory mode on trained models (python -m deq.lean) ---------------------------------

LEAN_ACCURACY_COLUMNS = ("run", "row", "step", "batch", "mode", "solvers", "cosine", "rel_error", "fwd_rel_residual_max",
                         "bwd_n_iter",
                         "bwd_rel_residual_max", "ref_fwd_rel_residual_max", "ref_bwd_rel_residual_max",
                         "ref_agreement", *PROVENANCE)
LEAN_TRAINING_COLUMNS = ("run", "mode", "row", "steps", "seed", "solvers", "valid_loss", "test_loss",
                         "valid_rel_diff", *PROVENANCE)


def render_lean_accuracy(frame: pd.DataFrame) -> str:
    lines = ["| run (row, steps) | mode: forward / backward | cosine to the reference, per batch | relative error, "
             "worst | forward residual, worst | backward iterations, residual (worst) |", "|---|---|---|---|---|---|"]
    for (run, mode), rows in frame.groupby(["run", "mode"], sort=False):
        r = rows.iloc[0]
        lines.append(f"| {run} ({r.row}, {r.step}) | {mode}: {r.solvers} | "
                     f"{' / '.join(f'{c:.5f}' for c in rows.cosine)} | {rows.rel_error.max():.1e} | "
                     f"{rows.fwd_rel_residual_max.max():.1e} | {rows.bwd_n_iter.max()}, "
                     f"{rows.bwd_rel_residual_max.max():.1e} |")
    lean = frame[frame["mode"] == "lean"]
    worst = lean.cosine.min()
    standard = frame[frame["mode"] == "standard"].set_index(["run", "batch"]).cosine
    misses = [f"{r.run} batch {r.batch} (lean forward residual {r.fwd_rel_residual_max:.1e} at its cap; "
              f"standard {standard.get((r.run, r.batch), float('nan')):.5f})"
              for r in lean.itertuples() if r.cosine < GOAL_COSINE]
    isolated = frame[frame["mode"] == "lean backward"].cosine
    lines += ["", f"{frame.batch.nunique()} validation batches per run; the reference is float64 with both solves "
              f"to 1e-10 (reached: forward {frame.ref_fwd_rel_residual_max.max():.0e}, backward "
              f"{frame.ref_bwd_rel_residual_max.max():.0e}), and a second float64 gradient solved by other methods "
              f"(forward: plain iteration; backward: Broyden) lands within {frame.ref_agreement.max():.0e} of it. "
              f"Lean mode: smallest cosine {worst:.5f} "
              f"(goal >= {GOAL_COSINE:g}: {'met' if worst >= GOAL_COSINE else 'NOT met'})."
              + (f" Below it: {'; '.join(misses)}." if misses else "")
              + (f" The lean backward from a converged forward (mode `lean backward`): smallest cosine "
                 f"{isolated.min():.5f}." if len(isolated) else ""), "", measured_by(frame, "lean_accuracy")]
    return "\n".join(lines)


def render_lean_training(frame: pd.DataFrame) -> str:
    lines = ["| run | mode: forward / backward | steps, seed | validation loss | test loss |", "|---|---|---|---|---|"]
    lines += [f"| {r.run} | {r.mode}: {r.solvers} | {r.steps}, {r.seed} | {r.valid_loss:.4f} | {r.test_loss:.4f} |"
              for r in frame.itertuples()]
    pairs = frame[frame["mode"] == "standard"]  # each pair's difference is on both of its rows
    diffs = ", ".join(f"{r.row} {100 * r.valid_rel_diff:+.2f}%" for r in pairs.itertuples())
    lines += ["", f"Lean against standard validation loss: {diffs} (goal within {GOAL_LOSS:.0%}: "
              f"{'met' if (pairs.valid_rel_diff.abs() <= GOAL_LOSS).all() else 'NOT met'}); the training curves: "
              f"`{REFERENCE}/lean_training.png`.", "", measured_by(frame, "lean_training")]
    return "\n".join(lines)


LEAN_WIDTHS_COLUMNS = ("family", "row", "d_state", "seq_len", "batch", "cap", "model", "batches", "total_bytes",
                       "floor_ratio", "ran_to_cap", *PROVENANCE)


def render_lean_widths(frame: pd.DataFrame) -> str:
    lines = ["| cell (row, state) | cap | lean DEQ GB | floor GB | lean / floor | explicit stack GB, same depth | "
             "lean reduction vs the stack |", "|---|---|---|---|---|---|---|"]
    for (family, row), cell in frame.groupby(["family", "row"], sort=False):
        floor = cell[cell.model == "floor"].total_bytes.iloc[0]
        explicit = cell[cell.model == "explicit"].set_index("cap").total_bytes
        for r in cell[cell.model == "deq-lean"].itertuples():
            lines.append(f"| {family} ({row}, {r.d_state} x {r.seq_len} x {r.batch}) | {r.cap} | "
                         f"{r.total_bytes / 1e9:.3f} | {floor / 1e9:.3f} | {r.floor_ratio:.3f}x | "
                         f"{explicit[r.cap] / 1e9:.3f} | {pct(1 - r.total_bytes / explicit[r.cap])} |")
    lean = frame[frame.model == "deq-lean"]
    worst = lean.loc[lean.floor_ratio.idxmax()]
    first = frame.iloc[0]
    batches = ", ".join(str(first.batches).split())
    lines += ["", f"Each model's total (the step's allocator peak, weights and Adam moments, as the depth benchmark) "
              f"on its line through batches {batches}, read at batch {first.batch}, the floor's too. Lean / "
              f"floor at every cap: worst {worst.floor_ratio:.3f}x ({worst.row}, cap {worst.cap}; goal <= "
              f"{LEAN_GOAL:g}x: {'met' if worst.floor_ratio <= LEAN_GOAL else 'NOT met'}); every solve ran to its "
              f"cap: {'yes' if frame.ran_to_cap.all() else 'no'}.", "", measured_by(frame, "lean_widths")]
    return "\n".join(lines)


# ---- README: every block between its markers ------------------------------------------------------

# block name -> (reference CSV, columns it reads, renderer)
BLOCKS = {
    "solvers": ("solvers", SOLVER_COLUMNS, render_solvers),
    "paper-memory": ("memory_paper", PAPER_MEMORY_COLUMNS, render_paper_memory),
    "paper-memory-findings": ("memory_paper", PAPER_MEMORY_COLUMNS, render_paper_memory_findings),
    "memory": ("memory", MEMORY_COLUMNS, render_memory),
    "depth": ("depth", DEPTH_COLUMNS, render_depth),
    "runtime": ("runtime", RUNTIME_COLUMNS, render_runtime),
    "quickstart": ("quickstart", QUICKSTART_COLUMNS, render_quickstart),
    "lean-accuracy": ("lean_accuracy", LEAN_ACCURACY_COLUMNS, render_lean_accuracy),
    "lean-training": ("lean_training", LEAN_TRAINING_COLUMNS, render_lean_training),
    "lean-widths": ("lean_widths", LEAN_WIDTHS_COLUMNS, render_lean_widths),
}
MARKED = re.compile(r"<!-- ([a-z0-9-]+):start -->.*?<!-- \1:end -->", re.S)


def block(name: str, body: str) -> str:
    """A generated block as it stands in the README, markers included."""
    return f"<!-- {name}:start -->\n\n{body}\n\n<!-- {name}:end -->"


def render_blocks(root: Path = REPO / REFERENCE) -> dict[str, str]:
    """Every block of :data:`BLOCKS`, markers included, from the CSVs under ``root``."""
    return {name: block(name, render(read_reference(csv, needs, root)))
            for name, (csv, needs, render) in BLOCKS.items()}


def rewrite(text: str, blocks: dict[str, str]) -> str:
    """``text`` with every marked block replaced by its rendering; each block must be marked exactly once."""
    found = [match[1] for match in MARKED.finditer(text)]
    missing, unknown = sorted(set(blocks) - set(found)), sorted(set(found) - set(blocks))
    repeated = sorted({name for name in found if found.count(name) > 1})
    if missing or unknown or repeated:
        raise ValueError(f"README's generated blocks: missing {missing}, unknown {unknown}, repeated {repeated}; "
                         f"each of {list(blocks)} must stand once between <!-- NAME:start --> and <!-- NAME:end -->")
    return MARKED.sub(lambda match: blocks[match[1]], text)


def stale_blocks(text: str, blocks: dict[str, str]) -> list[str]:
    """The names of the blocks whose text in ``text`` differs from their rendering."""
    rewrite(text, blocks)  # the markers are checked first
    return [match[1] for match in MARKED.finditer(text) if match[0] != blocks[match[1]]]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deq.report.readme", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 naming the stale blocks")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md", help="default: %(default)s")
    sub = parser.add_subparsers(dest="action")
    run = sub.add_parser("measure", help="run a benchmark and write its reference CSV")
    run.add_argument("name", choices=BENCHMARKS)
    run.add_argument("--preset", choices=("cpu", "paper"), default="cpu", help="default: %(default)s")
    run.add_argument("--checkout", type=Path, default=REPO, help="where to run it (default: this repository)")
    run.add_argument("--out", type=Path, default=None, help=f"folder for NAME.csv (default: {REFERENCE})")
    clock = sub.add_parser("time", help="time the README's two commands in a fresh clone of HEAD")
    clock.add_argument("--parent", type=Path, default=REPO.parent, help="where the clone goes (default: %(default)s)")
    args = parser.parse_args(argv)
    if args.action == "time":
        print(time_quickstart(args.parent.resolve()))
        return 0
    if args.action == "measure":
        print(measure(args.name, args.checkout.resolve(), args.out, args.preset))
        return 0
    text, blocks = args.readme.read_text(), render_blocks()
    if args.check:
        stale = stale_blocks(text, blocks)
        if stale:
            print(f"{args.readme}: stale generated block(s) {stale}; rerun: python -m deq.report.readme",
                  file=sys.stderr)
            return 1
        return 0
    new = rewrite(text, blocks)
    if new != text:
        atomic_write_text(args.readme, new)
    return 0


if __name__ == "__main__":
    sys.exit(main())
