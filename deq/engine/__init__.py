"""Instrumentation for training runs: peak memory, per-step metrics, solver traces, run metadata.

- :class:`MemoryMonitor`, :class:`AllocatorPeak`, :func:`saved_activation_bytes`: how much memory a run
  needed (``memory.py``).
- :class:`MetricsWriter`, :class:`TraceWriter`, :func:`run_metadata`: what a run writes (``records.py``).
"""

from .memory import (
    MEMORY_FIELDS,
    RECORD_KEYS,
    AllocatorPeak,
    MemoryMonitor,
    SavedActivations,
    cpu_name,
    device_name,
    rss_peak_bytes,
    saved_activation_bytes,
)
from .records import (
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

__all__ = [
    "MEMORY_FIELDS",
    "METADATA_KEYS",
    "RECORD_KEYS",
    "REQUIRED_METRIC_FIELDS",
    "TRACE_FIELDS",
    "AllocatorPeak",
    "MemoryMonitor",
    "MetricsWriter",
    "SavedActivations",
    "TraceWriter",
    "cpu_name",
    "device_name",
    "finish_metadata",
    "read_jsonl",
    "read_traces",
    "rss_peak_bytes",
    "run_metadata",
    "saved_activation_bytes",
    "solver_metrics",
    "write_metadata",
]
