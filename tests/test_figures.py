"""Every figure is written as a complete PNG and PDF, from full inputs and from empty or NaN ones."""

from __future__ import annotations

import json
import math

import pandas as pd
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from deq.report import figures

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
    rows = [{"run": "r", "kind": kind, "checkpoint": checkpoint, "step": step, "nfe": nfe,
             "rel_residual": 0.5 ** nfe if kind == "deq" else 0.1 + 0.01 * (nfe % 2), "abs_residual": 1.0}
            for kind in ("deq", "weight_tied") for checkpoint, step in (("early", 10), ("late", 100))
            for nfe in range(1, 6)]
    return _csv(tmp_path / "convergence.csv", rows)


def solver_iterations(tmp_path):
    run = tmp_path / "deq-run"
    run.mkdir()
    # two pretraining steps (no backward solve), then the solver, then a line cut short by a crash
    _jsonl(run / "metrics.jsonl", [_metrics(1, bwd=False), _metrics(2, bwd=False), _metrics(3), _metrics(4)])
    with open(run / "metrics.jsonl", "a") as file:
        file.write('{"step": 5, "lo')
    return {"DEQ-Transformer": run / "metrics.jsonl"}


def sweep(tmp_path):
    tol = [{"run": "a", "sweep": "tol", "tol": t, "max_iter": 30, "valid_ppl": 30 + t, "mean_nfe": 5, "tokens": 100}
           for t in (1e-3, 1e-2, 1e-1, 1.0)]
    cap = [{"run": "a", "sweep": "max_iter", "tol": 1e-3, "max_iter": c, "valid_ppl": 30 + 10 / c, "mean_nfe": c,
            "tokens": 100} for c in (5, 10, 30)]
    return _csv(tmp_path / "sweep.csv", tol + cap)


def memory_bars(tmp_path):
    rows = [("ptb-trellisnet-60-aux", 2, "untied", 8.5, 40e6), ("ptb-deq-trellisnet", 2, "deq", 1.2, 6e6),
            ("wt103-transformer-xl-small-4", 3, "untied", 4.8, 20e6),
            ("wt103-transformer-xl-small-tied-16", 3, "weight_tied", 6.8, math.nan),
            ("wt103-deq-transformer-small", 3, "deq", 1.1, 5e6)]
    return _csv(tmp_path / "memory.csv", [
        {"name": n, "paper_table": t, "driver": d, "scale": "smoke", "memory_bytes": b, "method": "cpu-allocator-peak",
         "paper_memory_gb": gb} for n, t, d, gb, b in rows])


def memory_depth(tmp_path):
    rows = [{"family": family, "row": "r", "depth": depth, "model": model,
             "activation_bytes": depth * 1e6 if model == "explicit" else 1e6, "fwd_buffer_bytes": 0,
             "bwd_buffer_bytes": 0, "total_bytes": (depth if model == "explicit" else 2) * 1e6}
            for family in ("transformer", "trellis") for depth in (2, 4, 8, 16)
            for model in ("explicit", "deq-anderson", "deq-broyden")]
    return _csv(tmp_path / "depth.csv", rows)


def size_sweep(tmp_path):
    rows = [{"family": "transformer", "size": f"width {w}", "driver": driver, "model": "m", "run": f"{driver}-{w}",
             "dataset": "ptb", "nonembedding_params": 1000 * w, "test_ppl": ppl, "train_step_peak_mb": mb,
             "ppl_ratio": None, "memory_reduction": 0.6 if driver == "deq" else None, "device": "cpu", "preset": "cpu"}
            for w, driver, ppl, mb in ((64, "deq", 300.0, 40.0), (64, "weight_tied", 305.0, 100.0),
                                      (128, "deq", 240.0, 70.0), (128, "weight_tied", 245.0, 180.0))]
    return _csv(tmp_path / "size_sweep.csv", rows)


def training_curves(tmp_path):
    runs = {}
    for label in ("Table 2: ptb-deq-trellisnet", "Table 2: ptb-trellisnet-60-aux", "Table 3: small"):
        folder = tmp_path / label.split(": ")[1]
        folder.mkdir()
        _jsonl(folder / "metrics.jsonl", [_metrics(1), _metrics(2, valid_ppl=300.0), _metrics(3, valid_loss=5.0)])
        (folder / "result.json").write_text(json.dumps({"valid_ppl": 200.0, "test_ppl": 210.0}))
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


def test_empty_panel_says_no_data(tmp_path, monkeypatch):
    # An empty figure must say why it is empty, rather than look like a plotting bug.
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, png, pdf: drawn.append(fig))
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


def test_memory_bars_draw_the_paper_width_csv_and_every_text_fits(tmp_path, monkeypatch):
    # The paper-width bars are the committed measurement's GB (not the study's MiB), and no label or
    # footnote may run off the figure (the footnote used to be cut at both edges).
    drawn = {}
    monkeypatch.setattr(figures, "_save", lambda fig, png, pdf: drawn.setdefault("fig", fig))
    widths = _csv(tmp_path / "memory_paper.csv", [
        {"name": "ptb-trellisnet-60-aux", "memory_bytes": 6.5e9, "method": "cpu-allocator-peak", "device": "cpu",
         "revision": "abc1234", "extrapolated": True},
        {"name": "ptb-deq-trellisnet", "memory_bytes": 1.6e9, "method": "cpu-allocator-peak", "device": "cpu",
         "revision": "abc1234", "extrapolated": True}])
    figures.plot_memory_bars(memory_bars(tmp_path), tmp_path / "m.png", tmp_path / "m.pdf", widths)
    fig = drawn["fig"]
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


def test_size_sweep_draws_every_run_at_its_parameter_count(tmp_path, monkeypatch):
    # What is drawn, not only that a file exists: each driver's line goes through its runs' (parameters,
    # perplexity) and (parameters, memory) points, the DEQ's saving is labelled, the paper's claim is stated.
    drawn = []
    monkeypatch.setattr(figures, "_save", lambda fig, png, pdf: drawn.append(fig))
    figures.plot_size_sweep(size_sweep(tmp_path), tmp_path / "a.png", tmp_path / "a.pdf")
    ppl_ax, memory_ax = drawn[0].axes
    lines = {(ax is ppl_ax, line.get_label()): (list(line.get_xdata()), list(line.get_ydata()))
             for ax in (ppl_ax, memory_ax) for line in ax.get_lines()}
    assert lines[True, "transformer cell: DEQ"] == ([64_000, 128_000], [300.0, 240.0])
    assert lines[True, "transformer cell: explicit (weight_tied)"] == ([64_000, 128_000], [305.0, 245.0])
    assert lines[False, "transformer cell: DEQ"] == ([64_000, 128_000], [40.0, 70.0])
    assert lines[False, "transformer cell: explicit (weight_tied)"] == ([64_000, 128_000], [100.0, 180.0])
    assert [t.get_text() for t in memory_ax.texts].count("-60%") == 2
    assert "paper" in drawn[0]._suptitle.get_text() and ppl_ax.get_xscale() == "log"
