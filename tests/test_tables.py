"""Tables from run folders: rows a preset does not train, the size sweep, and refusing a diverged metric."""

from __future__ import annotations

import json

import pandas as pd
import pytest
import yaml

from deq.report.tables import MODEL_COLUMNS, SIZE_SWEEP_COLUMNS, lm_table, copy_table, write_size_sweep
from deq.rows.configs import COPY_CONFIGS, CONFIGS
from deq.study import not_trained


def _run(folder, config, result):
    folder.mkdir(parents=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(config))
    (folder / "result.json").write_text(json.dumps(result))
    return folder


def _memory():
    from deq.bench.memory import PAIRS

    deq_of = {name: deq for deq, counterparts in PAIRS.items() for name in counterparts}
    return pd.DataFrame([{"name": name, "memory_bytes": 1e6, "method": "m", "scale": "s", "deq": deq_of.get(name),
                          "reduction": None, "paper_reduction": None} for name in CONFIGS]).set_index("name")


def test_a_row_the_preset_does_not_train_has_no_metric_but_its_parameters_and_reason(tmp_path):
    reasons = not_trained("cpu")
    trained = {"wt103-deq-transformer-small": 300.0, "wt103-transformer-xl-small-tied-16": 310.0}
    runs = {name: _run(tmp_path / name, {"model": name, "dataset": "ptb", "max_steps": 7},
                       {"test_ppl": ppl, "params": 10, "params_nonembedding": 4, "steps": 7, "device": "cpu"})
            for name, ppl in trained.items()}
    table = lm_table(3, runs, _memory(), "cpu", not_trained=reasons)
    assert tuple(table.columns) == MODEL_COLUMNS
    by = table.set_index("model")
    assert by.loc["wt103-deq-transformer-small", "value"] == 300.0 and by.loc["wt103-deq-transformer-small", "note"] == ""
    untrained = by.loc["wt103-deq-transformer-medium"]
    assert pd.isna(untrained["value"]) and untrained["steps"] == 0 and untrained["note"] == reasons[untrained.name]
    assert untrained["dataset"] == "ptb (standing in for wikitext-103)" and untrained["params"] > untrained[
        "nonembedding_params"] > 0
    # the explicit row's parameters relative to its DEQ counterpart, ours beside the paper's
    medium = by.loc["wt103-transformer-xl-medium-16"]
    assert medium["nonembedding_ratio"] == pytest.approx(medium["paper_nonembedding_ratio"], rel=0.1)

    copy = copy_table({}, "cpu", reasons)
    assert list(copy["model"]) == list(COPY_CONFIGS) and copy["value"].isna().all() and (copy["params"] > 0).all()


def test_a_diverged_evaluation_is_refused_not_tabled(tmp_path):
    name = "wt103-deq-transformer-small"
    runs = {name: _run(tmp_path / name, {"model": name}, {"test_ppl": float("inf"), "params": 1,
                                                           "params_nonembedding": 1, "steps": 1})}
    reasons = {n: "x" for n, row in CONFIGS.items() if row.paper_table == 3 and n != name}
    with pytest.raises(ValueError, match="non-finite metric"):
        lm_table(3, runs, _memory(), "cpu", not_trained=reasons)


def test_size_sweep_pairs_each_deq_with_its_explicit_run(tmp_path):
    runs = {}
    for width, ppl, peak in ((64, (330.0, 320.0), (40e6, 100e6)), (128, (270.0, 280.0), (60e6, 200e6))):
        for name, p, b in zip(("wt103-deq-transformer-small", "wt103-transformer-xl-small-tied-16"), ppl, peak):
            run = f"{name}-w{width}"
            runs[run] = _run(tmp_path / run, {"model": name, "dataset": "ptb"},
                             {"valid_ppl": p + 1, "test_ppl": p, "params": 9, "params_nonembedding": width,
                              "steps": 5, "train_step_peak_bytes": b, "device": "cpu"})
    points = [("transformer", f"width {w}", f"wt103-deq-transformer-small-w{w}",
               f"wt103-transformer-xl-small-tied-16-w{w}") for w in (64, 128)]
    frame = write_size_sweep(points, runs, tmp_path / "size_sweep.csv", "cpu")
    assert tuple(frame.columns) == SIZE_SWEEP_COLUMNS
    assert list(frame["driver"]) == ["deq", "weight_tied"] * 2
    deq = frame[frame["driver"] == "deq"]
    assert list(deq["ppl_ratio"]) == pytest.approx([330 / 320, 270 / 280])
    assert list(deq["memory_reduction"]) == pytest.approx([1 - 40 / 100, 1 - 60 / 200])
    assert list(deq["train_step_peak_mb"]) == [40.0, 60.0]
    assert pd.read_csv(tmp_path / "size_sweep.csv").shape == frame.shape


def test_tables_2_3_carry_the_lean_mode_beside_each_row(tmp_path):
    # The lean column: a DEQ row shows its <row>@lean peak (cpu scale and paper widths), an explicit row
    # the reduction of the lean DEQ against it, as the memory benchmark wrote them; a file without the
    # lean rows leaves the column empty instead of failing.
    from deq.report.tables import render_markdown

    memory = _memory()
    memory.loc["wt103-deq-transformer-small@lean", ["memory_bytes", "method", "scale"]] = (2.5e6, "m", "s")
    memory.loc["wt103-transformer-xl-small-4", "lean_reduction"] = 0.75
    paper = memory.assign(memory_bytes=memory.memory_bytes * 1000, extrapolated=False, batch=15, device="d",
                          revision="r", fit_batches="2 4")
    paper.loc["wt103-transformer-xl-small-4", "lean_reduction"] = 0.9
    reasons = {n: "x" for n, row in CONFIGS.items() if row.paper_table == 3}
    by = lm_table(3, {}, memory, "cpu", paper, not_trained=reasons).set_index("model")
    deq, explicit = by.loc["wt103-deq-transformer-small"], by.loc["wt103-transformer-xl-small-4"]
    assert (deq["lean_memory_mb"], deq["paper_width_lean_memory_gb"]) == (2.5, 2.5)
    assert (explicit["lean_memory_reduction"], explicit["paper_width_lean_reduction"]) == (0.75, 0.9)
    text = render_markdown({3: by.reset_index(), 1: copy_table({}, "cpu", not_trained("cpu")),
                            2: lm_table(2, {}, _memory(), "cpu", not_trained=not_trained("cpu")),
                            4: pd.DataFrame(columns=["weights"])}, "cpu")
    assert "| 2.5 MB (2.5 GB) |" in text and "| 75.0% (90.0%) |" in text
    without = lm_table(3, {}, _memory(), "cpu", not_trained=reasons)
    assert without[["lean_memory_mb", "lean_memory_reduction"]].isna().all().all()
