"""The memory benchmark's line in the batch (the paper preset on a CPU): the fit, its check, extrapolation."""

import pandas as pd
import pytest

from deq.bench import memory
from deq.bench.common import columns
from deq.presets import MemoryScale
from deq.rows.build import build_cell

PAIR = ("ptb-deq-trellisnet", "ptb-trellisnet-60-aux")
SMOKE_FIT = MemoryScale("smoke", True, 16, 6, (2, 4))  # smoke widths, paper depths; 2 and 4 fitted, 6 the target


def test_fit_line_recovers_a_line_and_needs_two_batches():
    assert memory.fit_line({1: 5.0, 2: 7.0, 4: 11.0}) == pytest.approx((3.0, 2.0))
    with pytest.raises(ValueError, match=r"a line needs two or more batches, got \[1\]"):
        memory.fit_line({1: 5.0})


def _frame(rows) -> pd.DataFrame:
    return pd.DataFrame([columns(r) for r in rows])


@pytest.fixture(scope="module")
def smoke_rows():
    # Every row is also measured at 6 (the budget is never exceeded at smoke widths), so each fit is checked.
    return _frame(memory.run_memory_benchmark(names=(*PAIR, "ptb-deq-trellisnet@whole-segment"), scale=SMOKE_FIT))


def test_peak_is_linear_in_the_batch_within_the_tolerance(smoke_rows):
    # The extrapolation to batch 15 is only as good as this: where the target batch was measured, the
    # line through the smaller batches must land within 2% of it.
    assert not smoke_rows.extrapolated.any()
    assert (smoke_rows.fit_error.abs() <= memory.FIT_TOLERANCE).all(), smoke_rows[["name", "fit_error"]]


def test_rows_carry_reductions_against_their_deq_and_the_papers(smoke_rows):
    rows = smoke_rows.set_index("name")
    explicit = rows.loc["ptb-trellisnet-60-aux"]
    assert explicit.deq == "ptb-deq-trellisnet"
    deq_bytes = rows.at["ptb-deq-trellisnet", "memory_bytes"]
    assert explicit.reduction == pytest.approx(1 - deq_bytes / explicit.memory_bytes)
    assert explicit.paper_reduction == pytest.approx(1 - 1.2 / 8.5)
    deq = rows.loc["ptb-deq-trellisnet"]
    assert deq.solver_code == "v1" and deq.subseq_len == 4 and deq.fwd_iters == 4  # smoke cap 4, run to it
    assert rows.at["ptb-deq-trellisnet@whole-segment", "subseq_len"] == 0
    assert rows.at["ptb-deq-trellisnet@whole-segment", "variant_of"].startswith("v1 settings solved over the whole")
    assert (smoke_rows.fit_batches == "2 4").all() and (smoke_rows.batch == 6).all()


def test_a_row_over_the_budget_is_extrapolated_on_every_column(monkeypatch):
    measured = []
    real = memory.measure_row
    monkeypatch.setattr(memory, "measure_row", lambda cfg, scale, device: measured.append(scale.batch) or
                        real(cfg, scale, device))
    monkeypatch.setattr(memory, "DIRECT_BUDGET_S", 0.0)
    row = columns(memory.run_memory_benchmark(names=PAIR[:1], scale=SMOKE_FIT)[0])
    assert measured == [2, 4]  # batch 6 never ran
    assert row["extrapolated"] and row["fit_error"] is None
    assert row["memory_bytes"] == pytest.approx(row["fit_a_bytes"] + 6 * row["fit_b_bytes"], abs=1)
    # the solver buffers are exactly linear in the batch, so their line lands on the account at 6
    cfg = memory.config_at(PAIR[0], SMOKE_FIT)
    fwd, bwd = memory.deq_buffer_bytes(cfg.solver, 6, 16, build_cell(cfg).d_state)
    assert (row["fwd_buffer_bytes"], row["bwd_buffer_bytes"]) == (fwd, bwd)


def test_a_row_out_of_gpu_memory_at_the_target_batch_is_extrapolated(monkeypatch):
    def fake_measure_row(cfg, scale, device):
        if scale.batch == 6:
            raise memory.torch.cuda.OutOfMemoryError("CUDA out of memory")
        return memory.StepMemory(1, 4, 4, 0, 0, 10, 10, 0, scale.batch, scale.batch, "", 10, 10, None, False, "", None,
                                 None, "m", 100 + 10 * scale.batch, 1.0, 1.0)

    monkeypatch.setattr(memory, "measure_row", fake_measure_row)
    row = columns(memory.measure(PAIR[1], SMOKE_FIT, "cpu"))
    assert row["extrapolated"] and row["memory_bytes"] == 160
    with pytest.raises(memory.torch.cuda.OutOfMemoryError):  # without a line there is nothing to report
        memory.measure(PAIR[1], MemoryScale("smoke", True, 16, 6), "cpu")


def test_unknown_rows_are_rejected_naming_them():
    with pytest.raises(ValueError, match=r"unknown row\(s\) \['nope'\]"):
        memory.run_memory_benchmark(names=("nope",))


def test_tables_show_the_paper_width_row_beside_the_papers(smoke_rows):
    # Tables 2-3 read the committed CSV: the GB, how it was obtained, and the reduction (paper's beside).
    from deq.report.tables import _paper_width

    frame = smoke_rows.assign(revision="abc1234").set_index("name")
    shown = _paper_width(frame, "ptb-trellisnet-60-aux")
    assert shown["paper_width_memory_gb"] == pytest.approx(frame.at["ptb-trellisnet-60-aux", "memory_bytes"] / 1e9)
    assert shown["paper_width_memory_how"].startswith("measured at batch 6 on ")
    assert shown["paper_width_memory_reduction"] == pytest.approx(frame.at["ptb-trellisnet-60-aux", "reduction"])
    assert _paper_width(None, "ptb-trellisnet-60-aux")["paper_width_memory_gb"] is None
