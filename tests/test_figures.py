"""Every figure is written as a complete PNG and PDF, from full inputs and from empty or NaN ones, and draws
what its inputs hold: each series through its CSV or JSON values, its labels, and the paper's reference marks."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgb
from matplotlib.figure import Figure

from deq.report import figures
from deq.rows.configs import CONFIGS

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _csv(path, rows):
    pd.DataFrame(rows).to_csv(path, index=False)
    return path


def _jsonl(path, records):
    # json.dumps writes NaN as the bare literal NaN, as the training loop's writer does
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return path


def _metrics(step, bwd=True, **extra):
    return {"step": step, "loss": 6.0 / step, "fwd_iters": 10 + step, "bwd_iters": 4 if bwd else None, **extra}


def convergence(tmp_path):
    # every (kind, checkpoint) curve differs, so a curve drawn under another's label shows
    rows = [{"run": "r", "kind": kind, "checkpoint": checkpoint, "step": step, "nfe": nfe,
             "rel_residual": rate ** nfe if kind == "deq" else rate + 0.01 * (nfe % 2), "abs_residual": 1.0}
            for kind in ("deq", "weight_tied") for checkpoint, step, rate in (("early", 10, 0.5), ("late", 100, 0.25))
            for nfe in range(1, 6)]
    return _csv(tmp_path / "convergence.csv", rows)


def solver_iterations(tmp_path):
    run, other = tmp_path / "deq-run", tmp_path / "other-run"
    run.mkdir()
    other.mkdir()
    # two pretraining steps (no backward solve), then the solver, then a line cut short by a crash
    _jsonl(run / "metrics.jsonl", [_metrics(1, bwd=False), _metrics(2, bwd=False), _metrics(3), _metrics(4)])
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"step": 5, "lo')
    # a second run, solving from the first step, with counts of its own
    _jsonl(other / "metrics.jsonl", [_metrics(step, fwd_iters=20 + 2 * step, bwd_iters=6 + step) for step in (1, 2, 3)])
    return {"DEQ-Transformer": run / "metrics.jsonl", "DEQ-TrellisNet": other / "metrics.jsonl"}


def sweep(tmp_path):
    # two trained runs, b listed before a and unsorted, so the order of the CSV is not the order drawn
    tol = [{"run": run, "sweep": "tol", "tol": t, "max_iter": 30, "valid_ppl": base + t, "mean_nfe": 5, "tokens": 100}
           for run, base in (("b", 40), ("a", 30)) for t in (1e-2, 1e-3, 1e-1, 1.0)]
    cap = [{"run": run, "sweep": "max_iter", "tol": 1e-3, "max_iter": c, "valid_ppl": base + 10 / c, "mean_nfe": c,
            "tokens": 100} for run, base in (("b", 40), ("a", 30)) for c in (10, 5, 30)]
    return _csv(tmp_path / "sweep.csv", tol + cap)


def memory_bars(tmp_path):
    # at the study's scale the small DEQ outweighs its explicit row (as a tiny smoke model can), so
    # a 100% taken from any row rather than the largest explicit one would show
    rows = [("ptb-trellisnet-60-aux", 2, "untied", 8.5, 40e6), ("ptb-deq-trellisnet", 2, "deq", 1.2, 6e6),
            ("wt103-transformer-xl-small-4", 3, "untied", 4.8, 20e6),
            ("wt103-transformer-xl-small-tied-16", 3, "weight_tied", 6.8, math.nan),
            ("wt103-deq-transformer-small", 3, "deq", 1.1, 25e6), ("ptb-deq-trellisnet@floor", 2, "weight_tied", math.nan, 1e6)]
    return _csv(tmp_path / "memory.csv", [
        {"name": n, "paper_table": t, "driver": d, "scale": "smoke", "memory_bytes": b, "method": "cpu-allocator-peak",
         "paper_memory_gb": gb} for n, t, d, gb, b in rows])


def memory_depth(tmp_path):
    # the trellis cell's bytes are 3x the transformer's and Broyden's grow with depth, so every curve differs
    rows = [{"family": family, "row": "r", "depth": depth, "model": model,
             "activation_bytes": scale * (depth * 1e6 if model == "explicit" else 1e6), "fwd_buffer_bytes": 0,
             "bwd_buffer_bytes": 0, "total_bytes": scale * 1e6 * {"explicit": depth, "deq-anderson": 2,
                                                                  "deq-broyden": 2 + depth / 8}[model]}
            for family, scale in (("transformer", 1), ("trellis", 3)) for depth in (2, 4, 8, 16)
            for model in ("explicit", "deq-anderson", "deq-broyden")]
    return _csv(tmp_path / "depth.csv", rows)


def memory_paper_widths(tmp_path):
    """The committed paper-width measurement (``make paper-memory``) for Table 2's two rows only, and a
    floor row (not drawn, so not counted in the footnote)."""
    return _csv(tmp_path / "memory_paper.csv", [
        {"name": "ptb-trellisnet-60-aux", "memory_bytes": 6.5e9, "method": "cpu-allocator-peak", "device": "cpu",
         "revision": "abc1234", "extrapolated": True},
        {"name": "ptb-deq-trellisnet@floor", "memory_bytes": 0.3e9, "method": "cpu-allocator-peak", "device": "cpu",
         "revision": "abc1234", "extrapolated": True},
        {"name": "ptb-deq-trellisnet", "memory_bytes": 1.6e9, "method": "cpu-allocator-peak", "device": "cpu",
         "revision": "abc1234", "extrapolated": True}])


def size_sweep(tmp_path):
    rows = [{"family": "transformer", "size": f"width {w}", "driver": driver, "model": "m", "run": f"{driver}-{w}",
             "dataset": "ptb", "nonembedding_params": 1000 * w, "test_ppl": ppl, "train_step_peak_mb": mb,
             "ppl_ratio": None, "memory_reduction": 0.6 if driver == "deq" else None, "device": "cpu", "preset": "cpu"}
            for w, driver, ppl, mb in ((64, "deq", 300.0, 40.0), (64, "weight_tied", 305.0, 100.0),
                                      (128, "deq", 240.0, 70.0), (128, "weight_tied", 245.0, 180.0))]
    return _csv(tmp_path / "size_sweep.csv", rows)


def training_curves(tmp_path):
    # two paper rows in one group and a run that is no paper row in another; every run's numbers differ
    runs = {}
    for k, label in enumerate(("Table 2: ptb-deq-trellisnet", "Table 2: ptb-trellisnet-60-aux", "Table 3: small")):
        folder = tmp_path / label.split(": ")[1]
        folder.mkdir()
        _jsonl(folder / "metrics.jsonl", [_metrics(1, loss=6.0 + k), _metrics(2, loss=3.0 + k, valid_ppl=300.0 + k),
                                          _metrics(3, loss=2.0 + k, valid_loss=5.0 + k)])
        (folder / "result.json").write_text(json.dumps({"valid_ppl": 200.0 + k, "test_ppl": 210.0}))
        runs[label] = folder
    return runs


# figure stem -> builder of its synthetic input in the documented format
INPUTS = {"fig2_convergence": convergence, "fig2_solver_iterations": solver_iterations, "fig3_sweep": sweep,
          "memory_bars": memory_bars, "memory_vs_depth": memory_depth, "size_sweep": size_sweep,
          "training_curves": training_curves}


def _empty(stem, tmp_path):
    """Inputs with nothing to plot: a header-only or NaN-only CSV, or a run that logged only NaN."""
    if stem in ("fig2_solver_iterations", "training_curves"):
        folder = tmp_path / "empty-run"
        folder.mkdir()
        _jsonl(folder / "metrics.jsonl", [{"step": 1, "loss": math.nan, "fwd_iters": None, "bwd_iters": None}])
        return {"Table 2: empty": folder / "metrics.jsonl"} if stem == "fig2_solver_iterations" else {"x": folder}
    full = pd.read_csv(INPUTS[stem](tmp_path))
    nan_rows = full.head(1).assign(**{c: math.nan for c in full.select_dtypes("number").columns})
    return _csv(tmp_path / "nan.csv", nan_rows)


@pytest.fixture
def drawn(monkeypatch):
    """The figures the plotting functions build, caught in place of being saved, to read what they draw."""
    figs = []
    monkeypatch.setattr(figures, "_save", lambda fig, png, pdf: figs.append(fig))
    return figs


def _curves(ax):
    """legend label -> (x, y) of each labelled line; reference lines and point marks have matplotlib's '_' labels."""
    lines = [line for line in ax.get_lines() if not line.get_label().startswith("_")]
    curves = {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in lines}
    assert len(curves) == len(lines), "two lines share a legend label"
    return curves


def _unlabelled(ax):
    return [line for line in ax.get_lines() if line.get_label().startswith("_")]


def _legend(ax):
    return [text.get_text() for text in ax.get_legend().get_texts()]


def _records(path):
    """The complete lines of a metrics file (the line a crash cut short is no record)."""
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def _assert_written(png, pdf):
    assert png.read_bytes().startswith(PNG_MAGIC)
    assert pdf.read_bytes().startswith(b"%PDF")
    assert sorted(p.name for p in png.parent.iterdir() if ".tmp." in p.name) == []


def test_every_figure_is_listed_with_a_caption():
    # The report's rules loop over FIGURES; a figure missing there would never be drawn.
    assert set(figures.FIGURES) == set(INPUTS)
    assert all(callable(function) and caption.endswith(".") for function, caption in figures.FIGURES.values())


@pytest.mark.parametrize("stem", sorted(INPUTS))
def test_figure_is_written_as_png_and_pdf(stem, tmp_path):
    # Both formats must exist and be complete files: the report embeds the PNG, the paper copy uses the PDF.
    function, _ = figures.FIGURES[stem]
    out = tmp_path / "out"
    function(INPUTS[stem](tmp_path), out / f"{stem}.png", out / f"{stem}.pdf")
    _assert_written(out / f"{stem}.png", out / f"{stem}.pdf")


@pytest.mark.parametrize("stem", sorted(INPUTS))
def test_figure_survives_empty_and_nan_inputs(stem, tmp_path):
    # A smoke run can log NaN or nothing at all; the workflow must still get its figure, not a crash.
    function, _ = figures.FIGURES[stem]
    function(_empty(stem, tmp_path), tmp_path / "nan.png", tmp_path / "nan.pdf")
    _assert_written(tmp_path / "nan.png", tmp_path / "nan.pdf")


@pytest.mark.parametrize("stem", sorted(INPUTS))
def test_figure_survives_missing_inputs(stem, tmp_path):
    # Before a rule's inputs exist (or when a benchmark was skipped) the figure says "no data".
    function, _ = figures.FIGURES[stem]
    runs = stem in ("fig2_solver_iterations", "training_curves")
    function({"gone": tmp_path / "gone"} if runs else tmp_path / "no.csv", tmp_path / "m.png", tmp_path / "m.pdf")
    _assert_written(tmp_path / "m.png", tmp_path / "m.pdf")


@pytest.mark.parametrize("stem", sorted(INPUTS))
def test_figure_survives_a_single_point(stem, tmp_path):
    # A smoke run may log one step or one depth: a curve of one point must still be drawn.
    function, _ = figures.FIGURES[stem]
    full = INPUTS[stem](tmp_path)
    if isinstance(full, dict):  # run folders / metrics files: keep the first line of each
        for path in full.values():
            metrics = path if path.suffix == ".jsonl" else path / "metrics.jsonl"
            metrics.write_text(metrics.read_text().splitlines()[0] + "\n")
    else:
        full = _csv(tmp_path / "one.csv", pd.read_csv(full).head(1))
    function(full, tmp_path / "one.png", tmp_path / "one.pdf")
    _assert_written(tmp_path / "one.png", tmp_path / "one.pdf")


def test_empty_panel_says_no_data(tmp_path, drawn):
    # An empty figure must say why it is empty, rather than look like a plotting bug.
    figures.plot_sweep(tmp_path / "no.csv", tmp_path / "a.png", tmp_path / "a.pdf")
    texts = [t.get_text() for ax in drawn[0].axes for t in ax.texts]
    assert texts.count("no data") == 2


def test_failed_save_leaves_no_file(tmp_path, monkeypatch):
    # A crash while saving must not leave a half-written figure that Snakemake would take as finished.
    def broken_savefig(self, path, **kwargs):
        with open(path, "wb") as file:
            file.write(b"\x89PNG half")
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        figures.plot_sweep(sweep(tmp_path), tmp_path / "s.png", tmp_path / "s.pdf")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.csv"]


def test_memory_bars_draw_the_paper_width_csv_and_every_text_fits(tmp_path, drawn):
    # The paper-width bars are the committed measurement's GB (not the study's MiB), and no label or
    # footnote may run off the figure (the footnote used to be cut at both edges).
    figures.plot_memory_bars(memory_bars(tmp_path), tmp_path / "m.png", tmp_path / "m.pdf",
                             memory_paper_widths(tmp_path))
    fig = drawn[0]
    FigureCanvasAgg(fig).draw()  # lays the figure out as savefig does
    labels = {t.get_text() for ax in fig.axes for t in ax.texts}
    assert {"6.5 GB", "1.6 GB", "8.5 GB", "1.2 GB"} <= labels  # paper-width and paper bars, in GB
    box = fig.bbox
    texts = [t for ax in fig.axes for t in (*ax.texts, ax.xaxis.label, *ax.get_yticklabels())]
    texts += [fig._supxlabel, fig._suptitle]
    for text in texts:
        extent = text.get_window_extent()
        assert box.x0 - 1 <= extent.x0 and extent.x1 <= box.x1 + 1, text.get_text()[:60]
        assert box.y0 - 1 <= extent.y0 and extent.y1 <= box.y1 + 1, text.get_text()[:60]
    assert "abc1234" in fig._supxlabel.get_text() and "2 of 2 rows extrapolated" in fig._supxlabel.get_text()


def test_size_sweep_draws_every_run_at_its_parameter_count(tmp_path, drawn):
    # What is drawn, not only that a file exists: each driver's line goes through its runs' (parameters,
    # perplexity) and (parameters, memory) points, the DEQ's saving is labelled, the paper's claim is stated.
    figures.plot_size_sweep(size_sweep(tmp_path), tmp_path / "a.png", tmp_path / "a.pdf")
    ppl_ax, memory_ax = drawn[0].axes
    lines = {(ax is ppl_ax, line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
             for ax in (ppl_ax, memory_ax) for line in ax.get_lines()}
    assert lines[True, "transformer cell: DEQ"] == ([64_000, 128_000], [300.0, 240.0])
    assert lines[True, "transformer cell: explicit (weight_tied)"] == ([64_000, 128_000], [305.0, 245.0])
    assert lines[False, "transformer cell: DEQ"] == ([64_000, 128_000], [40.0, 70.0])
    assert lines[False, "transformer cell: explicit (weight_tied)"] == ([64_000, 128_000], [100.0, 180.0])
    assert len(ppl_ax.get_lines()) == len(memory_ax.get_lines()) == 2  # one line per driver, no stray series
    assert [t.get_text() for t in memory_ax.texts].count("-60%") == 2
    # each point is named by its size, so a reader can match it to the table
    assert sorted(t.get_text() for t in ppl_ax.texts) == ["width 128", "width 128", "width 64", "width 64"]
    for ax, title, ylabel in ((ppl_ax, "test perplexity vs size", "test perplexity (per token)"),
                              (memory_ax, "training memory vs size", "peak memory of a training step (MB)")):
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, "non-embedding parameters (log)", ylabel)
        assert _legend(ax) == ["transformer cell: DEQ", "transformer cell: explicit (weight_tied)"]
        assert ax.get_xscale() == "log"
    assert "paper" in drawn[0]._suptitle.get_text()


def test_convergence_draws_each_kind_and_checkpoint_through_its_csv_rows(tmp_path, drawn):
    # Figure 2 (right) is read by setting the DEQ's residual beside the weight-tied stack's at the same
    # checkpoint: each (kind, checkpoint) must be one line through exactly its rows of the CSV, DEQ solid and
    # weight-tied dashed, early lighter than late, on the log scale on which a geometric fall is straight.
    csv = convergence(tmp_path)
    figures.plot_convergence(csv, tmp_path / "c.png", tmp_path / "c.pdf")
    (ax,) = drawn[0].axes
    table = pd.read_csv(csv)

    def rows(kind, checkpoint):
        curve = table[(table.kind == kind) & (table.checkpoint == checkpoint)]
        return list(curve.nfe), list(curve.rel_residual)

    labels = {"DEQ, step 10 (early)": ("deq", "early"), "DEQ, step 100 (late)": ("deq", "late"),
              "weight-tied, step 10 (early)": ("weight_tied", "early"),
              "weight-tied, step 100 (late)": ("weight_tied", "late")}
    assert _curves(ax) == {label: rows(*key) for label, key in labels.items()}
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert {label: line.get_linestyle() for label, line in lines.items()} == {
        label: "-" if kind == "deq" else "--" for label, (kind, _) in labels.items()}
    lightness = {label: sum(to_rgb(line.get_color())) for label, line in lines.items()}
    assert lightness["DEQ, step 10 (early)"] > lightness["DEQ, step 100 (late)"]
    assert lightness["weight-tied, step 10 (early)"] > lightness["weight-tied, step 100 (late)"]
    assert sorted(_legend(ax)) == sorted(labels)
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel(), ax.get_yscale()) == (
        "Figure 2 (right): forward-solve convergence", "function evaluations (count)",
        "relative residual ||f(z)-z|| / ||f(z)|| (log)", "log")
    assert "the weight-tied stack oscillates" in drawn[0]._supxlabel.get_text()  # the paper's finding, to compare


def test_solver_iterations_draw_each_runs_forward_and_backward_counts(tmp_path, drawn):
    # Figure 2 (left) compares each run's forward and backward counts over training: each must be one line
    # through exactly the steps that logged it (the backward only once the solver runs; the line a crash cut
    # short is skipped), forward solid and backward dashed in the run's own colour, and the pretraining steps
    # shaded, so that their missing backward reads as intended rather than as lost data.
    metrics = solver_iterations(tmp_path)
    figures.plot_solver_iterations(metrics, tmp_path / "s.png", tmp_path / "s.pdf")
    (ax,) = drawn[0].axes
    expected = {}
    for label, path in metrics.items():
        records = _records(path)
        for column, phase in (("fwd_iters", "forward"), ("bwd_iters", "backward")):
            logged = [record for record in records if record[column] is not None]
            expected[f"{label}: {phase}"] = ([record["step"] for record in logged],
                                             [record[column] for record in logged])
    assert _curves(ax) == expected
    # worked out by hand: the backward starts after the two pretraining steps, and the cut line is no step 5
    assert expected["DEQ-Transformer: backward"] == ([3, 4], [4, 4])
    assert expected["DEQ-Transformer: forward"][0] == [1, 2, 3, 4]
    lines = {line.get_label(): line for line in ax.get_lines()}
    for label in metrics:
        forward, backward = lines[f"{label}: forward"], lines[f"{label}: backward"]
        assert (forward.get_linestyle(), backward.get_linestyle()) == ("-", "--")
        assert forward.get_color() == backward.get_color()
    assert lines["DEQ-Transformer: forward"].get_color() != lines["DEQ-TrellisNet: forward"].get_color()
    (span,) = ax.patches  # from the first pretraining step to the first step with a backward solve
    assert (span.get_x(), span.get_x() + span.get_width(), span.get_label()) == (1, 3, "pretraining (explicit stack)")
    assert sorted(_legend(ax)) == sorted([*expected, "pretraining (explicit stack)"])
    assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (
        "Figure 2 (left): solver iterations over training", "training step (optimiser steps)",
        "solver iterations per segment")
    assert "the backward needs far fewer" in drawn[0]._supxlabel.get_text()


def test_sweep_draws_each_runs_perplexity_beside_the_papers_thresholds(tmp_path, drawn):
    # Figure 3 is read against the paper's thresholds: in each panel every run must be one line through its
    # sweep's rows in order of the swept value, and a dotted vertical line with its note must mark where the
    # paper found perplexity stops improving (tolerance 0.1, iteration cap 30).
    csv = sweep(tmp_path)
    figures.plot_sweep(csv, tmp_path / "s.png", tmp_path / "s.pdf")
    tol_ax, cap_ax = drawn[0].axes
    table = pd.read_csv(csv)
    panels = ((tol_ax, "tol", 0.1, "paper: eps < 0.1 suffices", "perplexity vs tolerance",
               "forward tolerance eps (relative residual, log)"),
              (cap_ax, "max_iter", 30, "paper: cap 30 suffices at seq. length 75", "perplexity vs iteration cap",
               "forward iteration cap (solver iterations)"))
    for ax, column, paper, note, title, xlabel in panels:
        rows = table[table.sweep == column].sort_values(column)
        assert _curves(ax) == {run: (list(curve[column]), list(curve.valid_ppl)) for run, curve in rows.groupby("run")}
        assert _legend(ax) == ["a", "b"]
        (mark,) = _unlabelled(ax)
        assert (list(mark.get_xdata()), mark.get_linestyle()) == ([paper, paper], ":")
        assert [text.get_text().strip() for text in ax.texts] == [note]
        assert (ax.get_title(), ax.get_xlabel()) == (title, xlabel)
    assert (tol_ax.get_ylabel(), tol_ax.get_xscale()) == ("validation perplexity (per token)", "log")
    assert drawn[0]._suptitle.get_text().startswith("Figure 3:")


def test_memory_bars_are_each_sources_memory_as_percent_of_its_tables_largest_explicit_model(tmp_path, drawn):
    # Sources measured at different scales compare only as a share of the same table's largest explicit
    # model: every bar must be its row's value over that reference, labelled with its absolute amount (the
    # paper's bar in GB is the reference a reader checks against), with DEQ rows hatched and named in bold.
    memory_csv, widths_csv = memory_bars(tmp_path), memory_paper_widths(tmp_path)
    figures.plot_memory_bars(memory_csv, tmp_path / "m.png", tmp_path / "m.pdf", widths_csv)
    table = pd.read_csv(memory_csv)
    widths = pd.read_csv(widths_csv).set_index("name").memory_bytes
    # the amounts a reader sees beside the bars, worked out by hand from the fixtures (MiB = 2**20 bytes)
    amounts = {2: ["8.5 GB", "1.2 GB", "6.5 GB", "1.6 GB", "38.1 MiB", "5.7 MiB"],
               3: ["4.8 GB", "6.8 GB", "1.1 GB", "n/a", "n/a", "n/a", "19.1 MiB", "n/a", "23.8 MiB"]}
    references = {2: "paper: ptb-trellisnet-60-aux; ours, paper widths: ptb-trellisnet-60-aux; "
                     "ours, study scale: ptb-trellisnet-60-aux",
                  3: "paper: wt103-transformer-xl-small-tied-16; ours, paper widths: none; "
                     "ours, study scale: wt103-transformer-xl-small-4"}
    axes = drawn[0].axes
    assert [ax.get_title() for ax in axes] == ["Table 2: Penn Treebank", "Table 3: WikiText-103"]
    for ax, number in zip(axes, (2, 3)):
        rows = table[(table.paper_table == number) & ~table.name.str.endswith("@floor")]  # a bound, not a model
        explicit = (rows.driver != "deq").to_numpy()
        sources = {"paper": rows.paper_memory_gb, "ours, paper widths": rows.name.map(widths),
                   "ours, study scale": rows.memory_bytes}
        bars = {container.get_label(): container for container in ax.containers}
        assert list(bars) == list(sources)
        for source, values in sources.items():
            # a source without an explicit model measured in this table has no 100%: its bars are empty
            percent = (values / values[explicit].max() * 100).fillna(0)
            assert [bar.get_width() for bar in bars[source]] == pytest.approx(list(percent))
            assert [bar.get_hatch() for bar in bars[source]] == [None if e else "//" for e in explicit]
        assert [text.get_text() for text in ax.texts] == amounts[number]
        assert [tick.get_text() for tick in ax.get_yticklabels()] == list(rows.name)
        assert [tick.get_fontweight() for tick in ax.get_yticklabels()] == ["normal" if e else "bold" for e in explicit]
        assert _legend(ax) == [*sources, "DEQ (hatched, bold)"]
        # the label is wrapped at a space (which the line break replaces) or after a hyphen (which it keeps)
        assert f"100%: {references[number]}" in ax.get_xlabel().replace("-\n", "-").replace("\n", " ")
    assert drawn[0]._suptitle.get_text() == "Peak training memory (embeddings excluded): paper vs measured"


def test_memory_vs_depth_draws_each_models_total_and_activations_from_the_csv(tmp_path, drawn):
    # The claim is a slope: the explicit stack's memory grows with depth, the DEQ's does not. Each model's
    # total and saved activations (MiB) must be drawn through its own family's rows, the activations dotted in
    # the model's colour, and each panel must state the saving at the largest depth beside the paper's best.
    csv = memory_depth(tmp_path)
    figures.plot_memory_depth(csv, tmp_path / "d.png", tmp_path / "d.pdf")
    table = pd.read_csv(csv)
    mib = 2**20
    models = ("explicit", "deq-anderson", "deq-broyden")
    axes = drawn[0].axes
    assert len(axes) == 2
    for ax, family, title in zip(axes, ("transformer", "trellis"), ("transformer cell", "TrellisNet cell")):
        rows = table[table.family == family]
        curves = {model: rows[rows.model == model].sort_values("depth") for model in models}
        assert _curves(ax) == {f"{model} (total)": (list(curve.depth), list(curve.total_bytes / mib))
                               for model, curve in curves.items()}
        model_of = {line.get_color(): line.get_label().removesuffix(" (total)") for line in ax.get_lines()
                    if not line.get_label().startswith("_")}
        activations = {model_of[line.get_color()]: (list(line.get_xdata()), list(line.get_ydata()))
                       for line in _unlabelled(ax)}
        assert activations == {model: (list(curve.depth), list(curve.activation_bytes / mib))
                               for model, curve in curves.items()}
        assert {line.get_linestyle() for line in _unlabelled(ax)} == {":"}
        widths = {line.get_label(): line.get_linewidth() for line in ax.get_lines()}
        assert widths["explicit (total)"] > widths["deq-anderson (total)"]  # the baseline stands out
        # worked out by hand: at depth 16 the explicit stack holds 16 units, Anderson 2
        assert ax.get_title() == f"{title}\nat depth 16: deq-anderson uses 87.5% less"
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("effective depth (layers or iteration cap, log2)",
                                                      "training memory, measured peak (MiB, log)")
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
        assert [tick.get_text() for tick in ax.get_xticklabels()] == ["2", "4", "8", "16"]
        assert _legend(ax) == [f"{model} (total)" for model in models] + ["activations (same colour)"]
    assert "86.6%, 24.7 to 3.3 GB" in drawn[0]._suptitle.get_text()  # the paper's best saving, Table 3


def test_training_curves_draw_each_runs_losses_and_the_papers_test_loss(tmp_path, drawn):
    # A run is judged against the paper: its training loss must be drawn through its logged steps, its
    # validation losses (log of the perplexity where only that was logged) and the final one from result.json
    # as marks in the run's colour, and a paper row's test loss log(ppl) as a dotted line in that colour; a run
    # that is no paper row gets no line that could be mistaken for one.
    runs = training_curves(tmp_path)
    figures.plot_training_curves(runs, tmp_path / "t.png", tmp_path / "t.pdf")
    panels = {ax.get_title(): ax for ax in drawn[0].axes if ax.get_visible()}
    assert list(panels) == ["Table 2", "Table 3"]
    for label, folder in runs.items():
        ax = panels[label.split(": ")[0]]
        records = _records(folder / "metrics.jsonl")
        (train,) = [line for line in ax.get_lines() if line.get_label() == label]
        assert (list(train.get_xdata()), list(train.get_ydata())) == (
            [record["step"] for record in records], [record["loss"] for record in records])
        marks = {line.get_marker(): line for line in _unlabelled(ax) if line.get_color() == train.get_color()}
        valid = [(record["step"], record["valid_loss"] if "valid_loss" in record else math.log(record["valid_ppl"]))
                 for record in records if "valid_loss" in record or "valid_ppl" in record]
        assert list(marks["o"].get_xdata()) == [step for step, _ in valid]
        assert list(marks["o"].get_ydata()) == pytest.approx([loss for _, loss in valid])
        final = math.log(json.loads((folder / "result.json").read_text())["valid_ppl"])
        assert (list(marks["*"].get_xdata()), list(marks["*"].get_ydata())) == ([records[-1]["step"]], [final])
        paper = CONFIGS.get(label.split(": ")[1])
        if paper is None:
            assert sorted(marks) == ["*", "o"]
        else:
            assert sorted(marks) == ["*", "None", "o"]  # "None": the reference line has no marker
            assert (marks["None"].get_ydata(), marks["None"].get_linestyle()) == ([math.log(paper.paper_ppl)] * 2, ":")
    keys = ["validation", "final validation (result.json)"]
    assert _legend(panels["Table 2"]) == [*list(runs)[:2], *keys, "paper test loss log(ppl)"]
    assert _legend(panels["Table 3"]) == [list(runs)[2], *keys]
    for ax in panels.values():
        assert (ax.get_xlabel(), ax.get_ylabel()) == ("training step (optimiser steps)", "training loss (nats/token)")
    assert drawn[0]._suptitle.get_text() == "Training curves"
