"""Measured effects of the differences from the official code that remain (docs/fidelity.md).

``python -m deq.report.fidelity`` measures each one on small float64 models at random init (seed 0,
a few seconds on a CPU), writes ``results/reference/cpu/fidelity.csv`` (with the date, revision and
torch version) and renders the table of ``docs/fidelity.md`` between its markers from that CSV.
``tests/test_fidelity.py`` reruns the measurement and checks CSV and page against it, so neither can
drift from the code.

What is measured (the keys of :data:`EFFECTS`):

- ``trellis_x_prev``: the DEQ-TrellisNet carries the previous segment's last embedding x_{-1} into the
  next segment's injection, where the official code zero-pads it: relative change of the second
  segment's equilibrium output if x_{-1} were zeroed.
- ``chunk_memory``: in training, chunk k+1 of a segment solved in subsequences sees chunk k's tracked
  f(z*) as memory, where the official forward sees z*: the relative size of that difference, the
  forward residual of chunk k at the v1 settings (DEQ-Transformer cell; at random init it does not
  reach the tolerance in 31 evaluations, so this is an upper end).
- ``stopping_calls_v1`` and ``stopping_calls_old``: f calls of one DEQ-TrellisNet forward solve under the
  v1 rule (whole-batch RMS < 1e-6, cap 46) and under the per-sample relative 1e-3 the rows used before.
- ``protective_break``: the largest residual of those solves over the first one, against the official
  protective break's factor 1e5 * L (never reached means the official and our solve return the same).
- ``v2_stop_per_sample`` and ``v2_stop_batch``: Anderson f calls until every sample's relative residual
  is below 1e-3 (ours) and until the whole batch's is (v2's ``gx.norm() / F.norm()``), on one trace
  (a DEQ-TrellisNet cell: the transformer cell at random init reaches neither within the cap).
"""

from __future__ import annotations

import argparse
import datetime
import subprocess
from dataclasses import replace
from pathlib import Path

import pandas as pd
import torch

import deq
from deq.io import atomic_write_text

__all__ = ["EFFECTS", "measure", "render_table", "write"]

CSV = Path("results/reference/cpu/fidelity.csv")
DOC = Path("docs/fidelity.md")
START, END = "<!-- effects:start -->", "<!-- effects:end -->"

# key -> (what differs, the metric, the test that pins the behaviour)
EFFECTS = {
    "trellis_x_prev": ("DEQ-TrellisNet: x_{-1} carried across segments (official: zeros)",
                       "relative change of segment 2's output if zeroed",
                       "tests/test_trellis_cell.py::test_two_segments_with_memory_equal_one_long_segment"),
    "chunk_memory": ("training: chunk k+1's memory is f(z*_k), official forward z*_k",
                     "norm of f(z*) - z* over norm of z*, chunk 1",
                     "tests/test_drivers.py::test_gradients_cross_subsequences"),
    "stopping_calls_v1": ("stopping rule: v1 whole-batch RMS < 1e-6, cap 46 (the rows now)",
                          "f calls, DEQ-TrellisNet forward",
                          "tests/test_solvers.py::test_batch_rms_is_the_official_whole_batch_rule"),
    "stopping_calls_old": ("stopping rule: per-sample relative 1e-3, cap 46 (the rows before)",
                           "f calls, DEQ-TrellisNet forward",
                           "tests/test_solvers.py::test_stops_as_soon_as_every_sample_meets_tol"),
    "protective_break": ("official protective break (1e5 L x the first residual) not modelled",
                         "largest residual / first residual (L = 50)",
                         "tests/test_solvers.py::test_a_diverging_solve_runs_to_the_cap_and_returns_its_lowest_iterate"),
    "v2_stop_per_sample": ("v2 variant: every sample's relative residual < 1e-3 (ours)",
                           "Anderson f calls, DEQ-TrellisNet forward",
                           "tests/test_solvers.py::test_stops_as_soon_as_every_sample_meets_tol"),
    "v2_stop_batch": ("v2 variant: the batch's relative residual < 1e-3 (official v2)",
                      "Anderson f calls, same trace", "tests/test_solvers.py::test_batch_rms_is_the_official_whole_batch_rule"),
}


def _trellis():
    from deq.models.cell_configs import TrellisCellConfig
    from deq.models.trellis import TrellisCell

    torch.manual_seed(0)
    return TrellisCell(TrellisCellConfig(d_embed=16, d_hidden=32, d_out=16, dropout=0.0)).double().eval()


def _transformer():
    from deq.models.cell_configs import TransformerCellConfig
    from deq.models.transformer import TransformerCell

    torch.manual_seed(0)
    cfg = TransformerCellConfig(d_model=32, n_head=2, d_head=16, d_inner=64, dropout=0.0)
    return TransformerCell(cfg).double().eval()


def _solve(cell, x, memory, **settings):
    injection = cell.inject(x, memory)
    return deq.solve(lambda z: cell(z, injection, memory), cell.init_state(injection), **settings)


def measure() -> dict[str, float]:
    """Every effect of :data:`EFFECTS`, measured now (deterministic: float64, seed 0)."""
    out = {}
    v1 = dict(solver="broyden", tol=1e-6, max_iter=46, stop_mode="batch_rms")
    with torch.no_grad():
        cell = _trellis()
        x = x_trellis = torch.randn(4, 100, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
        z1, _ = _solve(cell, x[:, :50], None, **v1)
        memory = cell.next_memory(z1, None, x[:, :50], None, 0)
        z2, _ = _solve(cell, x[:, 50:], memory, **v1)
        z2_zero, _ = _solve(cell, x[:, 50:], (torch.zeros_like(memory[0]), *memory[1:]), **v1)
        out["trellis_x_prev"] = ((z2_zero - z2).norm() / z2.norm()).item()

        _, v1_stats = _solve(cell, x[:, :50], None, **v1)
        _, old_stats = _solve(cell, x[:, :50], None, solver="broyden", tol=1e-3, max_iter=46, stop_mode="rel")
        out["stopping_calls_v1"], out["stopping_calls_old"] = v1_stats.nfe, old_stats.nfe
        trace = v1_stats.trace[:, 0]
        out["protective_break"] = (trace.max() / trace[0]).item()

        cell = _transformer()
        x = torch.randn(4, 40, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        injection = cell.inject(x[:, :20], None)
        z1, _ = _solve(cell, x[:, :20], None, solver="broyden", tol=1e-6, max_iter=31, stop_mode="batch_rms")
        out["chunk_memory"] = ((cell(z1, injection, None) - z1).norm() / z1.norm()).item()

        cell, x = _trellis(), x_trellis[:, :50]  # the transformer cell at random init reaches neither in 30
        _, stats = _solve(cell, x, None, solver="anderson", tol=1e-3, max_iter=30, stop_mode="rel")
        f_norm = stats.abs_trace / stats.rel_trace  # ||f(z_k)|| per sample
        batch_rel = stats.abs_trace.square().sum(1).sqrt() / f_norm.square().sum(1).sqrt()
        per_sample = (stats.rel_trace < 1e-3).all(dim=1)
        out["v2_stop_per_sample"] = _first_true(per_sample, stats.n_iter)
        out["v2_stop_batch"] = _first_true(batch_rel < 1e-3, stats.n_iter)
    return out


def _first_true(flags: torch.Tensor, n: int) -> int:
    """Evaluations up to and including the first True (n, the cap, if none)."""
    hits = flags.nonzero()
    return int(hits[0, 0]) + 1 if len(hits) else n


def render_table(frame: pd.DataFrame) -> str:
    """The Markdown table of docs/fidelity.md, from the CSV's rows."""
    lines = [START, "", "| difference | metric | measured | pinned by |", "|---|---|---|---|"]
    for r in frame.to_dict("records"):
        lines.append(f"| {r['difference']} | {r['metric']} | {r['value']:.4g} | `{r['test']}` |")
    first = frame.iloc[0]
    lines += ["", f"Measured by `python -m deq.report.fidelity` on {first['date']} at {first['revision']} "
              f"(torch {first['torch']}); `{CSV}`.", "", END]
    return "\n".join(lines)


def write(csv: Path = CSV, doc: Path = DOC) -> pd.DataFrame:
    """Measure, write the CSV, and replace the table between the markers of ``doc``."""
    values = measure()
    revision = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    frame = pd.DataFrame([{"key": key, "difference": what, "metric": metric, "value": values[key], "test": test,
                           "date": datetime.date.today().isoformat(), "revision": revision or "unknown",
                           "torch": torch.__version__, "command": "python -m deq.report.fidelity"}
                          for key, (what, metric, test) in EFFECTS.items()])
    atomic_write_text(csv, frame.to_csv(index=False))
    text = doc.read_text()
    if START not in text or END not in text:
        raise ValueError(f"{doc} has no {START} ... {END} markers to write the table between")
    head, rest = text.split(START, 1)
    atomic_write_text(doc, head + render_table(frame) + rest.split(END, 1)[1])
    return frame


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.report.fidelity", description=__doc__.splitlines()[0])
    parser.add_argument("--csv", type=Path, default=CSV, help="the CSV to write (default: %(default)s)")
    parser.add_argument("--doc", type=Path, default=DOC, help="the page whose table to rewrite (default: %(default)s)")
    args = parser.parse_args(argv)
    print(write(args.csv, args.doc)[["key", "value"]].to_string(index=False))


if __name__ == "__main__":
    main()
