"""deq/bench/paper_memory.py: memory at the paper's widths, batch extrapolation and its check."""

import pandas as pd
import pytest

from deq.bench import paper_memory as pm

PAIR = ("ptb-deq-trellisnet", "ptb-trellisnet-60-aux")


def test_fit_line_recovers_a_line_and_needs_two_batches():
    assert pm.fit_line({1: 5.0, 2: 7.0, 4: 11.0}) == pytest.approx((3.0, 2.0))
    with pytest.raises(ValueError, match=r"a line needs two or more batches, got \[1\]"):
        pm.fit_line({1: 5.0})


@pytest.fixture(scope="module")
def smoke_rows():
    # Smoke widths at the paper's depths on 16 tokens: batches 2 and 4 fitted, 6 as the target, every row
    # also measured at 6 (a budget no estimate exceeds), so each fit is checked.
    return pm.run_paper_memory(None, preset="smoke", seq_len=16, target_batch=6, fit_batches=(2, 4),
                               direct_budget_s=1e9, names=PAIR, variants=("ptb-deq-trellisnet@whole-segment",))


def test_peak_is_linear_in_the_batch_within_the_tolerance(smoke_rows):
    # The extrapolation to batch 15 is only as good as this: where the target batch was measured, the
    # line through the smaller batches must land within 2% of it.
    assert not smoke_rows.extrapolated.any()
    assert (smoke_rows.fit_error.abs() <= pm.FIT_TOLERANCE).all(), smoke_rows[["name", "fit_error"]]


def test_rows_carry_reductions_against_their_deq_and_the_papers(smoke_rows):
    rows = smoke_rows.set_index("name")
    explicit = rows.loc["ptb-trellisnet-60-aux"]
    assert explicit.deq == "ptb-deq-trellisnet"
    assert explicit.reduction == pytest.approx(1 - rows.at["ptb-deq-trellisnet", "memory_bytes"] / explicit.memory_bytes)
    assert explicit.paper_reduction == pytest.approx(1 - 1.2 / 8.5)
    deq = rows.loc["ptb-deq-trellisnet"]
    assert deq.solver_code == "v1" and deq.subseq_len == 4 and deq.fwd_iters == 4  # smoke cap 4, run to it
    assert rows.at["ptb-deq-trellisnet@whole-segment", "subseq_len"] == 0
    for column in ("date", "revision", "torch", "method", "device", "command"):
        assert smoke_rows[column].notna().all(), column


def test_a_row_over_the_budget_is_extrapolated_and_says_so():
    rows = pm.run_paper_memory(None, preset="smoke", seq_len=16, target_batch=6, fit_batches=(2, 4),
                               direct_budget_s=0.0, names=PAIR[:1], variants=())
    row = rows.iloc[0]
    assert bool(row.extrapolated) and pd.isna(row.fit_error)
    assert row.memory_bytes == pytest.approx(row.fit_a_bytes + 6 * row.fit_b_bytes)


def test_unknown_rows_are_rejected_naming_them():
    with pytest.raises(ValueError, match=r"unknown row\(s\) \['nope'\]"):
        pm.run_paper_memory(None, names=("nope",), variants=())


def test_tables_show_the_paper_width_row_beside_the_papers(smoke_rows):
    # Tables 2-3 read the committed CSV: the GB, how it was obtained, and the reduction (paper's beside).
    from deq.report.tables import _paper_width

    frame = smoke_rows.set_index("name")
    shown = _paper_width(frame, "ptb-trellisnet-60-aux")
    assert shown["paper_width_memory_gb"] == pytest.approx(frame.at["ptb-trellisnet-60-aux", "memory_bytes"] / 1e9)
    assert shown["paper_width_memory_how"].startswith("measured at batch 6 on ")
    assert shown["paper_width_memory_reduction"] == pytest.approx(frame.at["ptb-trellisnet-60-aux", "reduction"])
    assert _paper_width(None, "ptb-trellisnet-60-aux")["paper_width_memory_gb"] is None
