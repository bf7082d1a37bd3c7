"""The study's figures, each drawn from the files the runs and benchmarks wrote.

Every function reads its inputs and writes one figure twice (PNG at 150 dpi and PDF), atomically.
An input that is missing, empty or all NaN still gives a figure, with "no data" in the empty panel.
How to read each figure (this text is reused by the report captions):

- ``fig2_convergence`` (paper Figure 2, right): relative residual ||f(z)-z|| / ||f(z)|| (log) of a
  forward solve against function evaluations, DEQ (solid) and weight-tied stack (dashed), at an
  early (light) and a late (dark) checkpoint. In the paper the DEQ's residual keeps falling; the
  weight-tied stack's stalls and oscillates around the fixed point.
- ``fig2_solver_iterations`` (Figure 2, left): solver iterations per segment over training, forward
  (solid) and implicit backward (dashed), one colour per run. Grey marks the pretraining steps (no
  backward solve: the DEQ ran as an explicit weight-tied stack). In the paper both counts grow
  slowly over training, and the backward needs far fewer than the forward.
- ``fig3_sweep`` (Figure 3): validation perplexity of a trained DEQ evaluated at looser forward
  tolerances (left, log x) and at lower iteration caps (right). Dotted lines mark where the paper
  found perplexity stops improving: tolerance 0.1, and a cap of 30 at sequence length 75.
- ``memory_bars`` (memory columns of Tables 2-3): each model's peak training memory as a percentage
  of the table's largest explicit model: the paper's bar (grey, labelled in GB), ours at the paper's
  exact widths (blue, GB; the committed ``make paper-memory`` measurement, some rows extrapolated to
  batch 15) and ours at the study's scale (cyan, MiB; scaled-down models, so only its percentages
  compare). DEQ rows are hatched, with bold names. The footnote says how and at what scale each
  was measured.
- ``memory_vs_depth``: training memory (MiB, log; the allocator's peak over one step plus weights and
  Adam moments, see :mod:`deq.bench.depth`) of one cell's explicit weight-tied stack (thick)
  and of the DEQ with several solvers against effective depth (layers, or the iteration cap);
  dotted: the activations autograd saved. The explicit stack grows linearly with depth, the DEQ
  only by its solver's buffers (Broyden's grow with the cap unless its history is bounded, ``-m8``).
  The paper's largest saving is 86.6% (24.7 to 3.3 GB).
- ``size_sweep``: the paper's first claim across sizes (``results/size_sweep.csv``): test perplexity
  (left) and the peak memory of one training step (right, the allocator's, in the run itself)
  against non-embedding parameters (log), each DEQ (solid, circles) beside its explicit counterpart
  (dashed, squares), one colour per cell family. The paper: at each size the DEQ's perplexity matches
  the explicit network's, with far less memory. The right panel's labels give the DEQ's reduction.
- ``training_curves``: training loss (nats/token) over steps for each run, one panel per group;
  circles are validation losses (log of the validation perplexity), stars the final ones from
  ``result.json``, and a dotted line the paper's test loss log(ppl) where the run is a paper row.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

PathLike = str | os.PathLike
DPI = 150
MIB = 2**20
PAPER_TOL = 0.1  # Figure 3: forward tolerances below this gave no better perplexity
PAPER_CAP = 30  # Figure 3: iteration caps above this gave no better perplexity (sequence length 75)
PAPER_BEST_SAVING = "86.6%, 24.7 to 3.3 GB"  # 70-layer TrellisNet vs DEQ-TrellisNet, Table 3
PAPER_TABLES = {2: "Table 2: Penn Treebank", 3: "Table 3: WikiText-103"}
FAMILIES = {"transformer": "transformer cell", "trellis": "TrellisNet cell"}
KINDS = {"deq": ("DEQ", "Blues", "-"), "weight_tied": ("weight-tied", "Oranges", "--")}  # label, colours, style
SHADES = {"early": 0.5, "late": 0.9}  # position in the kind's colour map: early lighter, late darker
COLOURS = colormaps["tab10"].colors


def plot_convergence(convergence_csv: PathLike, png: PathLike, pdf: PathLike) -> None:
    """Figure 2 (right): relative residual against function evaluations, per (kind, checkpoint)."""
    frame = _read_csv(convergence_csv, ("run", "kind", "checkpoint"), ("step", "nfe", "rel_residual"))
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set(title="Figure 2 (right): forward-solve convergence", xlabel="function evaluations (count)",
           ylabel="relative residual ||f(z)-z|| / ||f(z)|| (log)")
    frame = frame[frame.rel_residual > 0]  # a log axis shows only positive residuals (drops NaN too)
    several_runs = frame.run.nunique() > 1
    for (kind, checkpoint, run), curve in frame.groupby(["kind", "checkpoint", "run"]):  # deq, early first
        name, colours, style = KINDS.get(kind, (kind, "Greys", ":"))
        step = curve.step.dropna()
        label = f"{name}, step {step.iloc[0]:.0f} ({checkpoint})" if len(step) else f"{name} ({checkpoint})"
        ax.plot(curve.nfe, curve.rel_residual, style, color=colormaps[colours](SHADES.get(checkpoint, 0.7)),
                marker="." if len(curve) < 4 else None, label=f"{label} [{run}]" if several_runs else label)
    if frame.empty:
        _no_data(ax)
    else:
        ax.set_yscale("log")
    _legend(ax)
    # supxlabel as a footnote: unlike fig.text, the constrained layout keeps room for it
    fig.supxlabel("paper (NFE 0-350): the DEQ converges; the weight-tied stack oscillates around the fixed point",
                  fontsize=8, color="0.3")
    _save(fig, png, pdf)


def plot_solver_iterations(metrics: Mapping[str, PathLike], png: PathLike, pdf: PathLike) -> None:
    """Figure 2 (left): forward (solid) and backward (dashed) solver iterations over training."""
    fig = Figure(figsize=(7, 4.5), layout="constrained")
    ax = fig.subplots()
    ax.set(title="Figure 2 (left): solver iterations over training", xlabel="training step (optimiser steps)",
           ylabel="solver iterations per segment")
    plotted = shaded = False
    for colour, (label, path) in zip(itertools.cycle(COLOURS), metrics.items()):
        lines = _read_jsonl(path, ("step", "fwd_iters", "bwd_iters"))
        shaded |= _shade_pretraining(ax, lines, labelled=shaded)
        for column, style, phase in (("fwd_iters", "-", "forward"), ("bwd_iters", "--", "backward")):
            points = lines[["step", column]].dropna()
            if len(points):
                ax.plot(points.step, points[column], style, color=colour, label=f"{label}: {phase}",
                        marker="." if len(points) < 4 else None)
                plotted = True
    if not plotted:
        _no_data(ax)
    _legend(ax)
    fig.supxlabel("paper: iterations grow slowly over training; the backward needs far fewer than the forward",
                  fontsize=8, color="0.3")
    _save(fig, png, pdf)


def plot_sweep(sweep_csv: PathLike, png: PathLike, pdf: PathLike) -> None:
    """Figure 3: validation perplexity against the forward tolerance and against the iteration cap."""
    frame = _read_csv(sweep_csv, ("run", "sweep"), ("tol", "max_iter", "valid_ppl", "mean_nfe", "tokens"))
    fig = Figure(figsize=(11, 4.5), layout="constrained")
    tol_ax, cap_ax = fig.subplots(1, 2, sharey=True)
    _sweep_panel(tol_ax, frame[(frame.sweep == "tol") & (frame.tol > 0)], "tol",
                 "forward tolerance eps (relative residual, log)", PAPER_TOL, "paper: eps < 0.1 suffices")
    tol_ax.set(xscale="log", ylabel="validation perplexity (per token)")
    _sweep_panel(cap_ax, frame[frame.sweep == "max_iter"], "max_iter", "forward iteration cap (solver iterations)",
                 PAPER_CAP, "paper: cap 30 suffices at seq. length 75")
    fig.suptitle("Figure 3: validation perplexity vs solver tolerance and iteration cap")
    _save(fig, png, pdf)


def plot_memory_bars(memory_csv: PathLike, png: PathLike, pdf: PathLike,
                     paper_memory_csv: PathLike | None = None) -> None:
    """Memory columns of Tables 2-3: the paper's, ours at the paper's widths (``paper_memory_csv``, the
    committed :mod:`deq.bench.memory` CSV at the paper preset, where given) and ours at the study's scale, each as %
    of its table's largest explicit model. The ``@floor`` rows (a DEQ's cell as a one-layer stack, a bound rather
    than a model) are left to the tables."""
    frame = _read_csv(memory_csv, ("name", "driver", "scale", "method"),
                      ("paper_table", "memory_bytes", "paper_memory_gb"))
    frame = frame[~frame.name.str.endswith("@floor")].reset_index(drop=True)
    widths = _read_csv(paper_memory_csv, ("name", "method", "device", "revision", "extrapolated"),
                       ("memory_bytes",)).set_index("name") if paper_memory_csv else None
    frame["paper_width_bytes"] = (frame.name.map(widths.memory_bytes) if widths is not None and not widths.empty
                                  else np.nan)
    sizes = [max(1, (frame.paper_table == table).sum()) for table in PAPER_TABLES]
    fig = Figure(figsize=(11, 3.0 + 0.8 * sum(sizes)), layout="constrained")
    axes = fig.subplots(len(PAPER_TABLES), 1, height_ratios=[size + 1 for size in sizes])
    for ax, (table, title) in zip(axes, PAPER_TABLES.items()):
        _memory_panel(ax, frame[frame.paper_table == table].reset_index(drop=True), title)
    fig.suptitle("Peak training memory (embeddings excluded): paper vs measured")
    at_widths = "not measured (no results/reference/cpu/memory_paper.csv)"
    if widths is not None and not widths.empty:
        plotted = widths[widths.index.isin(frame.name)]  # the footnote counts the bars, not the @floor rows
        extrapolated = plotted.extrapolated.astype(str).str.lower() == "true"
        at_widths = (f"{_values(widths.method)} on {_values(widths.device)}, revision {_values(widths.revision)}; "
                     f"{int(extrapolated.sum())} of {len(plotted)} rows extrapolated to batch 15 from smaller batches")
    note = (f"paper: sequence 150, batch 15, GPU and method not stated. Ours at paper widths (sequence 150, batch 15): "
            f"{at_widths}. Ours at the study's scale: method {_values(frame.method)}; scale {_values(frame.scale)}.")
    fig.supxlabel(textwrap.fill(note, 150), fontsize=8, color="0.3")
    _save(fig, png, pdf)


def plot_memory_depth(depth_csv: PathLike, png: PathLike, pdf: PathLike) -> None:
    """Training memory against effective depth, explicit stack vs DEQ solvers, one panel per family."""
    frame = _read_csv(depth_csv, ("family", "row", "model"),
                      ("depth", "activation_bytes", "fwd_buffer_bytes", "bwd_buffer_bytes", "total_bytes"))
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    for ax, (family, title) in zip(fig.subplots(1, len(FAMILIES)), FAMILIES.items()):
        _depth_panel(ax, frame[frame.family == family], title)
    fig.suptitle(f"Training memory vs effective depth (paper's best saving: {PAPER_BEST_SAVING})")
    _save(fig, png, pdf)


def plot_size_sweep(size_sweep_csv: PathLike, png: PathLike, pdf: PathLike) -> None:
    """Test perplexity and training-step peak memory against parameters, DEQ vs explicit, per family."""
    frame = _read_csv(size_sweep_csv, ("family", "size", "driver", "model", "run", "dataset", "device", "preset"),
                      ("nonembedding_params", "test_ppl", "train_step_peak_mb", "memory_reduction"))
    fig = Figure(figsize=(11, 4.8), layout="constrained")
    ppl_ax, memory_ax = fig.subplots(1, 2)
    ppl_ax.set(title="test perplexity vs size", xlabel="non-embedding parameters (log)",
               ylabel="test perplexity (per token)")
    memory_ax.set(title="training memory vs size", xlabel="non-embedding parameters (log)",
                  ylabel="peak memory of a training step (MB)")
    for colour, (family, rows) in zip(itertools.cycle(COLOURS), frame.groupby("family", sort=False)):
        for deq, style, marker in ((True, "-", "o"), (False, "--", "s")):
            curve = rows[(rows.driver == "deq") == deq].sort_values("nonembedding_params")
            kind = "DEQ" if deq else f"explicit ({_values(curve.driver)})"
            for ax, column in ((ppl_ax, "test_ppl"), (memory_ax, "train_step_peak_mb")):
                points = curve[np.isfinite(curve[column]) & (curve.nonembedding_params > 0)]
                ax.plot(points.nonembedding_params, points[column], style, marker=marker, color=colour,
                        label=f"{FAMILIES.get(family, family)}: {kind}")
                for x, y, size in zip(points.nonembedding_params, points[column], points["size"]):
                    ax.annotate(size, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7, color=colour)
            if deq:
                for x, y, saving in zip(curve.nonembedding_params, curve.train_step_peak_mb, curve.memory_reduction):
                    if np.isfinite(saving) and np.isfinite(y):
                        memory_ax.annotate(f"-{saving:.0%}", (x, y), textcoords="offset points", xytext=(4, -10),
                                           fontsize=8, color=colour, fontweight="bold")
    for ax in (ppl_ax, memory_ax):
        if ax.get_lines():
            ax.set_xscale("log")
        else:
            _no_data(ax)
        _legend(ax)
    fig.suptitle("Across sizes (paper: a DEQ matches the explicit network of the same cell and size in perplexity, "
                 "with far less training memory)", fontsize=10)
    fig.supxlabel(textwrap.fill(f"Preset {_values(frame.preset)}, corpus {_values(frame.dataset)}, device "
                                f"{_values(frame.device)}. Memory: the allocator's peak over the forward and backward "
                                "of each run's last training step (weights and Adam moments excluded); labels: the "
                                "DEQ's reduction against its explicit counterpart.", 150), fontsize=8, color="0.3")
    _save(fig, png, pdf)


def plot_training_curves(runs: Mapping[str, PathLike], png: PathLike, pdf: PathLike) -> None:
    """Training loss over steps with validation points, one panel per label group ("group: run")."""
    groups = _groups(runs)
    ncols, nrows = min(len(groups), 2), math.ceil(len(groups) / 2)
    fig = Figure(figsize=(6.5 * ncols, 4.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (group, members) in zip(axes, groups.items()):
        _training_panel(ax, group, members)
    for ax in axes[len(groups):]:
        ax.set_visible(False)
    fig.suptitle("Training curves")
    _save(fig, png, pdf)


# figure file stem -> (function, one-sentence caption); the report's rules iterate over this
FIGURES: dict[str, tuple[Callable[..., None], str]] = {
    "fig2_convergence": (plot_convergence, "Forward-solve residual vs function evaluations (paper Figure 2, right)."),
    "fig2_solver_iterations": (plot_solver_iterations, "Solver iterations over training (paper Figure 2, left)."),
    "fig3_sweep": (plot_sweep, "Validation perplexity vs forward tolerance and iteration cap (paper Figure 3)."),
    "memory_bars": (plot_memory_bars, "Training memory, paper vs measured, as % of the largest explicit model."),
    "memory_vs_depth": (plot_memory_depth, "Training memory vs effective depth, explicit stack vs DEQ solvers."),
    "size_sweep": (plot_size_sweep, "Perplexity and training memory vs parameters, DEQ vs explicit, across sizes."),
    "training_curves": (plot_training_curves, "Training and validation loss of every run, paper test loss marked."),
}


# ---- panels ----------------------------------------------------------------------------------------

def _shade_pretraining(ax: Axes, lines: pd.DataFrame, labelled: bool) -> bool:
    """Grey from the first pretraining step (no backward solve) to the first solver step after it."""
    pretraining = lines.step[lines.bwd_iters.isna()].dropna()
    if pretraining.empty:
        return False
    after = lines.step[lines.bwd_iters.notna() & (lines.step > pretraining.max())]
    start, end = pretraining.min(), after.min() if len(after) else pretraining.max()
    if start == end:  # one step: widen it so that it shows
        start, end = start - 0.5, end + 0.5
    ax.axvspan(start, end, color="0.85", zorder=0, label=None if labelled else "pretraining (explicit stack)")
    return True


def _sweep_panel(ax: Axes, rows: pd.DataFrame, column: str, xlabel: str, paper: float, note: str) -> None:
    ax.set(title=f"perplexity vs {'tolerance' if column == 'tol' else 'iteration cap'}", xlabel=xlabel)
    rows = rows[np.isfinite(rows.valid_ppl) & np.isfinite(rows[column])]
    for colour, (run, curve) in zip(itertools.cycle(COLOURS), rows.groupby("run")):
        curve = curve.sort_values(column)
        ax.plot(curve[column], curve.valid_ppl, "-o", color=colour, label=run)
    ax.axvline(paper, color="k", linestyle=":", linewidth=1)
    ax.text(paper, 0.5, f"{note} ", transform=ax.get_xaxis_transform(), rotation=90, ha="right", va="center")
    if rows.empty:
        _no_data(ax)
    _legend(ax)


def _memory_panel(ax: Axes, rows: pd.DataFrame, title: str) -> None:
    ax.set(title=title, xlabel="% of the largest explicit model")
    if rows.empty:
        return _no_data(ax)
    is_deq = (rows.driver == "deq").to_numpy()
    sources = (("paper", rows.paper_memory_gb, 1, "GB", "0.6"),
               ("ours, paper widths", rows.paper_width_bytes, 1e9, "GB", "tab:blue"),
               ("ours, study scale", rows.memory_bytes, MIB, "MiB", "tab:cyan"))
    y, height, largest, references = np.arange(len(rows)), 0.8 / len(sources), 0.0, {}
    for k, (source, values, scale, unit, colour) in enumerate(sources):
        explicit = values[~is_deq & (values > 0).to_numpy()]
        ref = explicit.idxmax() if len(explicit) else None  # the row that is 100%
        references[source] = rows.at[ref, "name"] if ref is not None else "none"
        percent = (values / values[ref] * 100 if ref is not None else values * np.nan).fillna(0)
        largest = max(largest, percent.max())
        offset = (k - (len(sources) - 1) / 2) * height
        drawn = ax.barh(y + offset, percent, height=height, color=colour, edgecolor="k", label=source)
        for bar, deq in zip(drawn, is_deq):
            bar.set_hatch("//" if deq else None)
        ax.bar_label(drawn, labels=[_amount(v, scale, unit) for v in values], padding=3, fontsize=7)
    ax.set_yticks(y, rows["name"], fontsize=8)
    for tick, deq in zip(ax.get_yticklabels(), is_deq):
        tick.set_fontweight("bold" if deq else "normal")
    ax.invert_yaxis()  # the table's order, top to bottom
    ax.set_xlim(0, 1.35 * largest if largest > 0 else 100)
    names = textwrap.fill("100%: " + "; ".join(f"{source}: {name}" for source, name in references.items()), 110)
    ax.set_xlabel(f"% of the largest explicit model\n{names}", fontsize=9)
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, Patch(facecolor="w", edgecolor="k", hatch="//", label="DEQ (hatched, bold)")],
              fontsize=8, loc="lower right")


def _depth_panel(ax: Axes, rows: pd.DataFrame, title: str) -> None:
    ax.set(title=title, xlabel="effective depth (layers or iteration cap, log2)",
           ylabel="training memory, measured peak (MiB, log)")
    rows = rows[rows.total_bytes > 0]
    if rows.empty:
        return _no_data(ax)
    models = sorted(rows.model.unique(), key=lambda model: (model != "explicit", model))
    for colour, model in zip(itertools.cycle(COLOURS), models):
        curve = rows[rows.model == model].sort_values("depth")
        ax.plot(curve.depth, curve.total_bytes / MIB, "-o", color=colour, linewidth=3 if model == "explicit" else 1.5,
                markersize=4, label=f"{model} (total)")
        saved = curve[curve.activation_bytes > 0]
        ax.plot(saved.depth, saved.activation_bytes / MIB, ":", color=colour, linewidth=1)
    depths = sorted(int(depth) for depth in rows.depth.dropna().unique())
    ax.set(yscale="log", title=f"{title}\n{_best_saving(rows)}".strip())
    ax.set_xscale("log", base=2)
    ax.set_xticks(depths, [str(depth) for depth in depths])
    handles, _ = ax.get_legend_handles_labels()
    ax.legend(handles=[*handles, Line2D([], [], color="k", linestyle=":", label="activations (same colour)")],
              fontsize=8)


def _training_panel(ax: Axes, group: str, members: list[tuple[str, Path]]) -> None:
    ax.set(title=group or "training runs", xlabel="training step (optimiser steps)",
           ylabel="training loss (nats/token)")
    keys: dict[str, Line2D] = {}  # legend entries for the marks, in black (each run's are in its colour)
    for colour, (label, folder) in zip(itertools.cycle(COLOURS), members):
        lines = _read_jsonl(folder / "metrics.jsonl", ("step", "loss", "valid_ppl", "valid_loss"))
        train = lines[np.isfinite(lines.loss) & lines.step.notna()]
        valid = pd.DataFrame({"step": lines.step, "loss": _valid_loss(lines)}).dropna()
        final = pd.DataFrame({"step": [lines.step.max()],
                              "loss": _valid_loss(pd.DataFrame([_read_json(folder / "result.json")]))}).dropna()
        paper = _paper_loss(label)
        if len(train):
            ax.plot(train.step, train.loss, "-", color=colour, label=label, marker="." if len(train) < 4 else None)
        for points, marker, key in ((valid, "o", "validation"), (final, "*", "final validation (result.json)")):
            if len(points):
                ax.plot(points.step, points.loss, marker, color=colour, markersize=10 if marker == "*" else 5)
                keys[key] = Line2D([], [], color="k", marker=marker, linestyle="", label=key)
        if paper is not None:
            ax.axhline(paper, color=colour, linestyle=":", linewidth=1)
            keys["paper"] = Line2D([], [], color="k", linestyle=":", label="paper test loss log(ppl)")
    handles, _ = ax.get_legend_handles_labels()
    if not handles:  # no training loss to show
        _no_data(ax)
    if handles or keys:
        ax.legend(handles=[*handles, *keys.values()], fontsize=8)


# ---- reading ---------------------------------------------------------------------------------------

def _read_csv(path: PathLike, text: tuple[str, ...], numbers: tuple[str, ...]) -> pd.DataFrame:
    """The CSV with at least these columns (text '' and numbers NaN where absent); empty if no file."""
    try:
        frame = pd.read_csv(path, dtype=dict.fromkeys(text, str))  # a revision of digits stays text
    except (FileNotFoundError, pd.errors.EmptyDataError):
        frame = pd.DataFrame()
    for column in text:
        frame[column] = frame[column].fillna("").astype(str) if column in frame else ""
    return _numbers(frame, numbers)


def _read_jsonl(path: PathLike, numbers: tuple[str, ...]) -> pd.DataFrame:
    """JSON lines (NaN and Infinity allowed); a line cut short by a crash, or a blank one, is skipped."""
    records = []
    for line in Path(path).read_text().splitlines() if Path(path).is_file() else []:
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return _numbers(pd.DataFrame([record for record in records if isinstance(record, dict)]), numbers)


def _read_json(path: PathLike) -> dict:
    try:
        record = json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return {}
    return record if isinstance(record, dict) else {}


def _numbers(frame: pd.DataFrame, columns: tuple[str, ...]) -> pd.DataFrame:
    """``columns`` as numbers: None, text and absent columns become NaN."""
    frame = frame.copy()
    for column in columns:
        frame[column] = pd.to_numeric(frame[column], errors="coerce") if column in frame else np.nan
    return frame


def _valid_loss(frame: pd.DataFrame) -> pd.Series:
    """Validation loss in nats/token: ``valid_loss`` where written, else log(``valid_ppl``); NaN if neither."""
    frame = _numbers(frame, ("valid_loss", "valid_ppl"))
    loss = frame.valid_loss.where(np.isfinite(frame.valid_loss), np.log(frame.valid_ppl.where(frame.valid_ppl > 0)))
    return loss.where(np.isfinite(loss))


def _paper_loss(label: str) -> float | None:
    """log of the paper's test perplexity when the label (after any group prefix) names a paper row."""
    from deq.rows.configs import CONFIGS  # imported here: it loads torch, which no other figure needs

    row = CONFIGS.get(label.split(": ", 1)[-1].strip())
    return math.log(row.paper_ppl) if row is not None and row.paper_ppl > 0 else None


def _groups(runs: Mapping[str, PathLike]) -> dict[str, list[tuple[str, Path]]]:
    """Labels "group: run" grouped by their prefix ('' for labels without one)."""
    groups: dict[str, list[tuple[str, Path]]] = {}
    for label, folder in runs.items():
        groups.setdefault(label.split(": ", 1)[0] if ": " in label else "", []).append((label, Path(folder)))
    return groups or {"": []}


# ---- drawing and saving ----------------------------------------------------------------------------

def _legend(ax: Axes) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)


def _no_data(ax: Axes) -> None:
    ax.text(0.5, 0.5, "no data", transform=ax.transAxes, ha="center", va="center", fontsize=14, color="0.4")


def _values(column: pd.Series) -> str:
    values = sorted({str(value) for value in column if value})
    return ", ".join(values) if values else "unknown"


def _amount(value: float, scale: float, unit: str) -> str:
    return f"{value / scale:.1f} {unit}" if np.isfinite(value) else "n/a"


def _best_saving(rows: pd.DataFrame) -> str:
    """'at depth D: <model> uses X% less' than the explicit stack at the largest depth; '' if unmeasured."""
    deepest = rows[rows.depth == rows.depth.max()].groupby("model").total_bytes.min()
    if "explicit" not in deepest or len(deepest) < 2:
        return ""
    model = deepest.drop("explicit").idxmin()
    return f"at depth {rows.depth.max():.0f}: {model} uses {1 - deepest[model] / deepest['explicit']:.1%} less"


def _save(fig: Figure, png: PathLike, pdf: PathLike) -> None:
    """PNG and PDF, each written beside its target then renamed over it, so none is ever half-written."""
    for path, fmt in ((Path(png), "png"), (Path(pdf), "pdf")):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.stem}.{os.getpid()}.tmp.{fmt}")
        try:
            # CreationDate None: the same figure gives the same PDF bytes, so a rerun leaves no diff
            fig.savefig(tmp, format=fmt, dpi=DPI, metadata={"CreationDate": None} if fmt == "pdf" else None)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
