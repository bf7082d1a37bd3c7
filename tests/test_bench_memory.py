"""Memory benchmarks at smoke scale: the DEQ's activations do not grow with its iteration cap, the
explicit stack's grow linearly with depth, and the protocol table has one well-formed row per paper row."""

from __future__ import annotations

import math
import sys

import pytest

import deq
import torch

from deq.bench import depth, memory
from deq.models.configs import CONFIGS

PROTOCOL_COLUMNS = ("name", "driver", "scale", "scale_reason", "method", "activation_bytes", "driver_activation_bytes",
                    "fwd_buffer_bytes", "bwd_buffer_bytes", "param_state_bytes", "total_bytes", "memory_bytes",
                    "rss_peak_bytes", "nvml", "nvml_reason", "paper_memory_gb", "deq", "reduction", "accounted_reduction",
                    "driver_reduction", "paper_reduction")
BYTE_COLUMNS = ("activation_bytes", "driver_activation_bytes", "fwd_buffer_bytes", "bwd_buffer_bytes",
                "param_state_bytes", "total_bytes", "memory_bytes", "rss_peak_bytes")


@pytest.fixture(scope="module")
def one_thread():
    # Smoke-sized ops are all thread synchronisation: with another process busy on a 2-core machine,
    # two threads run them ten times slower than one. The measured bytes do not depend on threads.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def depth_rows(one_thread):
    return depth.run_depth_benchmark("smoke")


@pytest.fixture(scope="module")
def protocol_rows(one_thread, tmp_path_factory):
    out = tmp_path_factory.mktemp("memory")
    rows = memory.run_memory_benchmark("smoke", out / "memory.csv", out / "memory.md")
    return rows, out


def _by(rows, family, model):
    return {r["depth"]: r for r in rows if r["family"] == family and r["model"] == model}


@pytest.mark.parametrize("family", sorted(depth.DEPTH_ROWS))
@pytest.mark.parametrize("variant", sorted(depth.DEQ_VARIANTS))
def test_deq_activation_memory_is_flat_in_the_iteration_cap(depth_rows, family, variant):
    # The paper's claim: the forward solve runs without a graph and the implicit backward keeps one
    # f(z*), so the bytes saved for backward cannot depend on how many iterations the solve took.
    by = _by(depth_rows, family, f"deq-{variant}")
    saved = [by[cap]["activation_bytes"] for cap in depth.DEPTHS if cap >= 8]
    assert max(saved) <= 1.05 * min(saved), saved
    # ... and the caps were really used (the tolerance is unreachable), else flatness would be trivial.
    assert all(r["fwd_iters"] == r["depth"] for r in by.values())


@pytest.mark.parametrize("family", sorted(depth.DEPTH_ROWS))
def test_explicit_activation_memory_grows_linearly_with_depth(depth_rows, family):
    # Backprop through a weight-tied stack keeps every layer's activations: the same bytes per layer
    # at every depth (so the DEQ's flat line is a real difference, not a measuring artefact).
    by = _by(depth_rows, family, "explicit")
    per_layer = [(by[b]["activation_bytes"] - by[a]["activation_bytes"]) / (b - a)
                 for a, b in zip(depth.DEPTHS, depth.DEPTHS[1:])]
    assert min(per_layer) > 0 and max(per_layer) <= 1.05 * min(per_layer), per_layer


def test_full_history_broyden_buffers_grow_with_the_cap_and_bounded_ones_do_not(depth_rows):
    # Broyden keeps U, V (B, m, d) with m = max_iter - 1 by default: linear in the cap; m = 8 caps it
    # (from cap 9 on: below it there are fewer slots than 8).
    full, bounded = _by(depth_rows, "transformer", "deq-broyden"), _by(depth_rows, "transformer", "deq-broyden-m8")
    assert full[64]["fwd_buffer_bytes"] > 7 * full[8]["fwd_buffer_bytes"]
    assert bounded[64]["fwd_buffer_bytes"] == bounded[16]["fwd_buffer_bytes"] > bounded[8]["fwd_buffer_bytes"]


def test_protocol_table_has_one_row_per_paper_row_with_the_documented_columns(protocol_rows):
    # The table is the Tables 2-3 memory column: every registered row, in order, nothing else.
    rows, out = protocol_rows
    assert [r["name"] for r in rows] == list(CONFIGS)
    for row in rows:
        missing = [c for c in PROTOCOL_COLUMNS if c not in row]
        assert not missing, (row["name"], missing)
    assert (out / "memory.csv").read_text().splitlines()[0].split(",")[: 2] == ["name", "paper_table"]
    assert "| DEQ | vs explicit |" in (out / "memory.md").read_text()


def test_protocol_numbers_are_non_negative_and_the_method_is_named(protocol_rows):
    # Byte counts are sizes; a negative one would mean the embedding was subtracted twice.
    rows, _ = protocol_rows
    for row in rows:
        for column in BYTE_COLUMNS:
            assert row[column] is not None and row[column] >= 0, (row["name"], column, row[column])
        assert row["method"] in ("cpu-allocator-peak", "cuda-max-allocated")
        assert row["scale"] and row["scale_reason"]


def test_reductions_are_fractions_where_defined(protocol_rows):
    # 1 - DEQ / explicit for each explicit counterpart: the DEQ's driver uses less, and not nothing. The
    # measured reduction is only below 1: at smoke widths the shared softmax's temporaries can make the
    # two peaks equal.
    rows, _ = protocol_rows
    explicit = [r for r in rows if r["driver"] != "deq"]
    assert {r["deq"] for r in explicit} == set(memory.PAIRS)
    for row in explicit:
        for column in ("accounted_reduction", "driver_reduction", "paper_reduction"):
            assert 0 < row[column] < 1, (row["name"], column, row[column])
        assert -0.5 < row["reduction"] < 1, (row["name"], row["reduction"])
    for row in rows:
        if row["driver"] == "deq":
            assert row["reduction"] is None and row["counterparts"]
            assert row["fwd_iters"] >= 1 and row["bwd_iters"] >= 1


def test_no_nvml_error_escapes_on_cpu(protocol_rows, monkeypatch):
    # Without CUDA NVML is never needed: the rows say why it is missing instead of raising, even
    # when the NVML bindings themselves are broken.
    rows, _ = protocol_rows
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: NVML is in use")
    assert all(r["nvml"] is False and r["nvml_reason"] for r in rows)
    monkeypatch.setitem(sys.modules, "pynvml", None)  # importing it now raises ImportError
    row = memory.measure_row(memory.config_at("ptb-deq-trellisnet", memory.Scale("smoke", False, 8, 2)),
                             memory.Scale("smoke", False, 8, 2), steps=1, device="cpu")
    assert row["nvml"] is False and math.isfinite(row["memory_bytes"])


def test_solver_buffers_follow_the_solvers_allocations():
    # Anderson: dG, dS (m each), the 2-row probe and the best iterate, plus the float64 Gram matrix;
    # Broyden: U, V with m = max_iter - 1 slots (the official threshold) unless given, plus the best iterate.
    B, d = 3, 10
    assert memory.solver_buffer_bytes("anderson", 30, {}, B, d) == (2 * 6 + 2 + 1) * B * d * 4 + B * 36 * 8
    assert memory.solver_buffer_bytes("broyden", 30, {}, B, d) == (2 * 29 + 1) * B * d * 4  # threshold 29
    assert memory.solver_buffer_bytes("broyden", 30, {"m": 8}, B, d) == (2 * 8 + 1) * B * d * 4
    with pytest.raises(ValueError, match="unknown solver 'andersen'"):
        memory.solver_buffer_bytes("andersen", 30, {}, B, d)


# Working vectors (B, d) a solve holds beyond its history, f's output and temporaries included, measured
# with f(z) = 0.999 z + 1: not in the account, but the same at every cap.
WORKING_VECTORS = {"anderson": 6, "broyden": 14, "picard": 5}


@pytest.mark.parametrize("solver, options", [("anderson", {}), ("broyden", {}), ("broyden", {"m": 5}), ("picard", {})])
def test_solver_buffers_are_what_the_solver_really_allocates(solver, options):
    # The account must be the solver's real history: the allocator's peak over a solve that runs to its
    # cap is the account plus a fixed working set, whatever the cap (a wrong slot count would grow it).
    from deq.engine.memory import AllocatorPeak

    B, d = 4, 20_000
    z0, vector, excess = torch.zeros(B, d), B * d * 4, {}
    for cap in (6, 30):
        with AllocatorPeak("cpu") as peak:
            deq.solve(lambda z: 0.999 * z + 1, z0, solver=solver, tol=1e-30, max_iter=cap, stop_mode="abs",
                      **options)
        excess[cap] = (peak.bytes - memory.solver_buffer_bytes(solver, cap, options, B, d)) / vector
    assert excess[6] == pytest.approx(WORKING_VECTORS[solver], abs=0.1), excess
    assert excess[30] == pytest.approx(WORKING_VECTORS[solver], abs=0.1), excess


def test_best_possible_reduction_is_one_layer_against_depth_layers():
    # The bound the depth table prints: explicit totals on a line I + depth x L (I = 5: parameter state,
    # input/readout, temporaries; L = 10 per layer), so a DEQ holding one layer's worth gets (I + L).
    by = {("explicit", d): {"total_bytes": 5 + 10 * d} for d in depth.DEPTHS}
    assert depth.explicit_line(by) == pytest.approx((5, 10))
    assert depth.best_possible_reduction(by, 16) == pytest.approx(1 - (5 + 10) / (5 + 160))


@pytest.mark.parametrize("family", sorted(depth.DEPTH_ROWS))
def test_measured_totals_hold_what_was_saved_and_the_state(depth_rows, family):
    # The allocator's peak cannot be below the bytes autograd saved (they are all alive when the
    # forward ends); the total adds the weights and moments that were alive before the step.
    for r in depth_rows:
        if r["family"] == family:
            assert r["allocator_peak_bytes"] >= r["activation_bytes"], r
            assert r["total_bytes"] == r["allocator_peak_bytes"] + r["param_state_bytes"] // 4 * 3


@pytest.mark.parametrize("family", sorted(depth.DEPTH_ROWS))
@pytest.mark.parametrize("variant", ["anderson", "broyden-m8", "anderson-fixed-point"])
def test_measured_deq_total_is_flat_in_the_cap_with_bounded_histories(depth_rows, family, variant):
    # With a history that does not grow with the cap, nothing the DEQ allocates depends on it.
    by = _by(depth_rows, family, f"deq-{variant}")
    totals = [by[cap]["total_bytes"] for cap in depth.DEPTHS if cap >= 8]
    assert max(totals) <= 1.05 * min(totals), totals
