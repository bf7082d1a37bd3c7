"""Run instrumentation: memory measurement degrades cleanly without a GPU or NVML, saved-activation
counts are exact, and the metrics, trace and metadata files hold what they document."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace

import pynvml
import pytest
import torch

import deq
from deq.engine.memory import MEMORY_FIELDS, RECORD_KEYS, AllocatorPeak, MemoryMonitor, saved_activation_bytes
from deq.engine.records import (
    METADATA_KEYS,
    REQUIRED_METRIC_FIELDS,
    TRACE_FIELDS,
    MetricsWriter,
    TraceWriter,
    finish_metadata,
    read_jsonl,
    read_traces,
    run_metadata,
    solver_metrics,
    write_metadata,
)

REPO = Path(__file__).resolve().parents[1]
F32 = 4  # bytes per float32 element


def measure(monitor: MemoryMonitor) -> dict:
    """Run a small autograd computation inside ``monitor`` and return its record."""
    w = torch.randn(64, 64, requires_grad=True)
    with monitor:
        with monitor.saved_activations(exclude={w.data_ptr()}):
            loss = torch.tanh(torch.randn(32, 64) @ w).sum()
        loss.backward()
    return monitor.record()


def fake_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make this CPU build of torch look like a one-GPU machine with known allocator peaks."""
    for name, value in {"is_available": lambda: True, "current_device": lambda: 0,
                        "reset_peak_memory_stats": lambda device=None: None,
                        "max_memory_allocated": lambda device=None: 1000,
                        "max_memory_reserved": lambda device=None: 2000,
                        "get_device_name": lambda device=None: "Fake GPU",
                        "get_device_properties": lambda device=None: SimpleNamespace(uuid="1234")}.items():
        monkeypatch.setattr(torch.cuda, name, value)


def test_cpu_monitor_reports_no_nvml_and_positive_fallback_fields():
    # On a machine without CUDA the record must still have every documented key, say why NVML was
    # not used, and measure what a CPU can: the resident set and the bytes saved for backward.
    if torch.cuda.is_available():
        pytest.skip("checks the CPU-only path")
    record = measure(MemoryMonitor())
    assert tuple(record) == RECORD_KEYS
    assert record["nvml"] is False and record["nvml_reason"] == "CUDA not available"
    for key in ("rss_peak_bytes", "rss_sampled_peak_bytes", "saved_activation_bytes",
                "saved_activation_bytes_excl_embedding"):
        assert type(record[key]) is int and record[key] > 0, (key, record[key])
    for key in ("gpu_process_peak_bytes", "gpu_device_peak_bytes", "cuda_max_allocated_bytes"):
        assert record[key] is None, key


def test_nvml_init_failure_is_reported_not_raised(monkeypatch):
    # A GPU machine whose NVML refuses (no permission in a container) must still give torch's
    # allocator peaks; the NVML error becomes nvml=False with its reason, and never escapes.
    fake_cuda(monkeypatch)

    def refuse():
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)

    monkeypatch.setattr(pynvml, "nvmlInit", refuse)
    record = measure(MemoryMonitor())
    assert record["nvml"] is False and "Insufficient Permissions" in record["nvml_reason"]
    assert record["device"] == "Fake GPU"
    assert (record["cuda_max_allocated_bytes"], record["cuda_max_reserved_bytes"]) == (1000, 2000)
    assert record["gpu_process_peak_bytes"] is None and record["rss_peak_bytes"] > 0


def test_nvml_device_query_failure_is_reported_not_raised(monkeypatch):
    # NVML can initialise yet fail on the device (driver/library mismatch, GPU not visible): the
    # monitor must fall back the same way, and shut NVML down again.
    fake_cuda(monkeypatch)
    shutdowns = []
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: shutdowns.append(1))

    def not_found(_):
        raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_FOUND)

    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", not_found)
    record = measure(MemoryMonitor())
    assert record["nvml"] is False and "device query failed" in record["nvml_reason"]
    assert shutdowns == [1]


@pytest.mark.parametrize("processes, source, expected", [
    ("own", "process", 456),  # this PID listed: its own usage is the process peak
    ("denied", "device", 789),  # per-process query not permitted: whole-device usage instead
    ("other", "device", 789),  # PID not visible (container PID namespace): whole-device usage instead
])
def test_gpu_process_peak_falls_back_to_device_memory(monkeypatch, processes, source, expected):
    # The per-process NVML query differs across drivers and permissions; whichever way it fails, the
    # record must still carry a GPU peak and say which source it came from.
    fake_cuda(monkeypatch)
    monkeypatch.setattr(pynvml, "nvmlInit", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlShutdown", lambda: None)
    monkeypatch.setattr(pynvml, "nvmlDeviceGetHandleByUUID", lambda uuid: "handle")
    monkeypatch.setattr(pynvml, "nvmlDeviceGetMemoryInfo", lambda handle: SimpleNamespace(used=789))

    def query(handle):
        if processes == "denied":
            raise pynvml.NVMLError(pynvml.NVML_ERROR_NO_PERMISSION)
        pid = os.getpid() if processes == "own" else os.getpid() + 1
        return [SimpleNamespace(pid=pid, usedGpuMemory=456)]

    for name in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetComputeRunningProcesses_v2"):
        monkeypatch.setattr(pynvml, name, query)
    record = measure(MemoryMonitor())
    assert record["nvml"] is True and record["nvml_reason"] is None
    assert record["gpu_process_source"] == source
    assert (record["gpu_process_peak_bytes"], record["gpu_device_peak_bytes"]) == (expected, 789)


def test_saved_bytes_of_a_product_match_a_hand_count():
    # y = x * w with both factors requiring grad saves x (for dL/dw) and w (for dL/dx): 2 * 12 floats.
    # Excluding w (as the embedding is excluded in the paper's protocol) must remove exactly its bytes.
    x = torch.randn(3, 4, requires_grad=True)
    w = torch.randn(3, 4, requires_grad=True)
    with saved_activation_bytes(exclude={w.data_ptr()}) as saved:
        x * w
    assert saved.bytes == 2 * 12 * F32
    assert saved.bytes_excluding == 12 * F32


def test_saved_bytes_count_each_storage_once_at_full_size():
    # Activation memory is storage memory: x saved twice by x * x is held once, and a saved slice
    # keeps its whole (3, 4) buffer alive, so it costs 12 floats, not the 6 it shows.
    x = torch.randn(3, 4, requires_grad=True)
    with saved_activation_bytes() as twice:
        x * x
    with saved_activation_bytes() as sliced:
        half = (x * 2)[:, :2]  # a scalar multiply saves no tensor
        half.exp()  # exp saves its output, a fresh (3, 2) tensor
        half * half
    assert twice.bytes == 12 * F32
    assert sliced.bytes == 12 * F32 + 6 * F32


def test_allocator_peak_of_a_training_step_matches_a_hand_count():
    # y = tanh(x @ w), summed, backward: x (4 KB) and w's gradient (4 KB) are made inside, the product
    # (4 KB) lives until tanh has made y (4 KB), the backward's tanh gradient (4 KB) and w's gradient
    # coexist with x and y; the 12 KB buffer at the end on top of x, y, w.grad is the peak. The tensor
    # made before entry (and freed inside) counts neither way, however the allocator reports its free.
    n = 32  # (32, 32) float32: 4096 bytes
    w = torch.randn(n, n, requires_grad=True)
    before = torch.randn(n, n)
    with AllocatorPeak() as peak:
        x = torch.randn(n, n)
        y = (x @ w).tanh()
        y.sum().backward()
        del before
        extra = torch.empty(3 * n, n)
        del extra
    assert peak.bytes == (3 + 3) * n * n * F32, peak.bytes


def test_allocator_peak_sees_temporaries_that_saved_bytes_miss():
    # A DEQ-sized detail: a large temporary made and freed inside the block is in the peak although
    # nothing of it is saved for backward.
    with AllocatorPeak() as peak, saved_activation_bytes() as saved:
        big = torch.ones(256, 256)
        small = big.sum()
        del big
    assert saved.bytes == 0 and small.item() == 256 * 256
    assert peak.bytes >= 256 * 256 * F32


def metrics_line(step: int, info: deq.EquilibriumInfo) -> dict:
    return {"step": step, "loss": 2.0, "ppl": 7.389, "lr": 1e-3, "tokens_per_s": 1e4, "step_time_s": 0.1,
            **solver_metrics(info), **dict.fromkeys(MEMORY_FIELDS)}


def small_solve(backward: bool = True) -> deq.EquilibriumInfo:
    """An implicit-gradient equilibrium on a 4-sample contraction, with the backward run."""
    torch.manual_seed(0)
    W = 0.5 * torch.randn(8, 8, dtype=torch.float64) / 8**0.5
    x = torch.randn(4, 8, dtype=torch.float64, requires_grad=True)
    z, info = deq.equilibrium(lambda z: torch.tanh(z @ W + x), torch.zeros(4, 8, dtype=torch.float64),
                              tol=1e-8, max_iter=40, backward_tol=1e-8)
    if backward:
        z.sum().backward()
    return info


def test_metrics_lines_hold_the_documented_fields(tmp_path):
    # Every logged step must carry every documented field, or later tables and plots silently
    # miss a column; solver_metrics fills the six solver fields from a real solve.
    path = tmp_path / "metrics.jsonl"
    with MetricsWriter(path) as writer:
        writer.write(metrics_line(1, small_solve()))
    (line,) = read_jsonl(path)
    assert set(REQUIRED_METRIC_FIELDS) <= set(line)
    assert line["fwd_iters"] > 0 and line["bwd_iters"] > 0 and line["fwd_converged"] == 1.0


def test_metrics_missing_field_is_named(tmp_path):
    # A writer bug must fail at the first step with the missing field's name, not at plotting time.
    line = metrics_line(1, small_solve(backward=False))
    del line["tokens_per_s"]
    with MetricsWriter(tmp_path / "metrics.jsonl") as writer, pytest.raises(ValueError, match="tokens_per_s"):
        writer.write(line)


def test_truncate_after_keeps_steps_up_to_n_and_appends_after(tmp_path):
    # Resuming from a checkpoint at step 2 redoes steps 3 and 4: their old lines must go, and a
    # reopened writer must append, so each step appears once and in order.
    path = tmp_path / "metrics.jsonl"
    info = small_solve(backward=False)
    with MetricsWriter(path) as writer:
        for step in (1, 2, 3, 4):
            writer.write(metrics_line(step, info))
    with MetricsWriter(path) as writer:
        writer.truncate_after(2)
        writer.write(metrics_line(3, info))
    assert [line["step"] for line in read_jsonl(path)] == [1, 2, 3]


def test_traces_round_trip_from_a_real_solve(tmp_path):
    # The trace file is what Figure 2 is drawn from: each record must come back with every field and
    # one reduced residual per evaluated iterate, equal to the batch mean/max to 4 significant digits.
    info = small_solve()
    path = tmp_path / "traces.jsonl"
    with TraceWriter(path) as writer:
        writer.add(10, "forward", info.forward)
        writer.add(10, "backward", info.backward)
        writer.add_unrolled(10, "eval", torch.rand(25, 4), torch.rand(25, 4))
    forward, backward, unrolled = read_traces(path)
    for record, stats in ((forward, info.forward), (backward, info.backward)):
        assert tuple(record) == TRACE_FIELDS
        assert record["n_iter"] == stats.n_iter and record["solver"] == stats.solver
        for key in ("abs_mean", "abs_max", "rel_mean", "rel_max"):
            assert len(record[key]) == stats.n_iter
        expected = stats.rel_trace.float().mean(1)
        assert torch.allclose(torch.tensor(record["rel_mean"]), expected, rtol=1e-3, atol=0)
    assert (forward["phase"], backward["phase"], unrolled["phase"]) == ("forward", "backward", "eval")
    assert unrolled["n_iter"] == len(unrolled["abs_max"]) == 25 and unrolled["tol"] is None


def test_run_metadata_has_documented_keys_and_this_repos_revision(tmp_path):
    # A result must be traceable to the exact code: the revision must be this checkout's HEAD, and
    # the written file must hold the same metadata plus when the run ended.
    head = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
    meta = run_metadata({"model": {"d_model": 16}}, seed=3)
    assert tuple(meta) == METADATA_KEYS
    assert meta["git_revision"] == head and isinstance(meta["git_dirty"], bool)
    assert meta["versions"]["torch"] == torch.__version__ and meta["seed"] == 3
    done = finish_metadata(meta)
    assert done["duration_s"] >= 0 and done["end_time"] >= done["start_time"]
    write_metadata(tmp_path / "run.json", done)
    assert json.loads((tmp_path / "run.json").read_text()) == done
