"""What every benchmark shares: one timer, one measured training step, one writer of typed rows.

- :func:`interleaved` times jobs in rounds (A B ... then ... B A, after a warm-up round), CUDA
  synchronised around every call; :func:`quartiles` reads the walls as a median and its IQR.
- :func:`measure_step` runs one forward + backward under the allocator's peak
  (:class:`~deq.engine.memory.AllocatorPeak`) and a saved-tensor counter.
- :func:`write_rows` writes a benchmark's typed rows (dataclasses whose fields are the CSV's
  columns) and its Markdown, each file atomically.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Hashable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from deq import presets
from deq.engine.memory import AllocatorPeak, SavedActivations
from deq.io import atomic_write_text

T = TypeVar("T")
K = TypeVar("K", bound=Hashable)


def scales(preset: str) -> presets.Benchmarks:
    """The benchmarks' sizes at ``preset`` (:mod:`deq.presets`); a ValueError naming the presets otherwise."""
    return presets.preset(preset).bench


def describe_device(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else f"CPU ({torch.get_num_threads()} threads)"


# ---- the timer --------------------------------------------------------------------------------------

def clock(device: str) -> float:
    """``time.perf_counter()`` once the device has finished its queued work."""
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter()


def interleaved(jobs: dict[K, Callable[[], T]], rounds: int, device: str,
                deadline: float | None = None) -> dict[K, list[tuple[float, T]]]:
    """(seconds, result) of every job per kept round: each job runs once per round, in reversed order
    every other round (A B ... B A: no job always runs right after the same neighbour), for ``rounds``
    rounds after a warm-up round that is not kept. No round starts after ``deadline`` (a
    ``time.monotonic()`` value) once one was kept."""
    kept: dict = {key: [] for key in jobs}
    order = list(jobs.items())
    for round_ in range(rounds + 1):
        for key, job in order[::-1] if round_ % 2 else order:
            start = clock(device)
            result = job()
            if round_:
                kept[key].append((clock(device) - start, result))
        if round_ and deadline is not None and time.monotonic() > deadline:
            break
    return kept


def quartiles(values: Sequence[float]) -> tuple[float, float, float]:
    """(q1, median, q3), inclusive quartiles; one value is all three.

    >>> quartiles([1.0, 3.0, 3.0])
    (2.0, 3.0, 3.0)
    """
    if len(values) == 1:
        return values[0], values[0], values[0]
    q1, q2, q3 = statistics.quantiles(values, n=4, method="inclusive")
    return q1, q2, q3


# ---- the measured training step -----------------------------------------------------------------------

def measure_step(step: Callable[[], T], device: str, counter: SavedActivations) -> tuple[T, int, float]:
    """(result, peak bytes, seconds) of one forward + backward ``step``: the allocator's peak over it
    (tensors alive before it not counted), with ``counter`` counting what autograd saves. On a CPU the
    peak comes from the profiler, which slows the step: the seconds are a size, not a timing."""
    start = clock(device)
    with AllocatorPeak(device) as peak, counter:
        result = step()
    return result, peak.bytes, clock(device) - start


def zipf_tokens(n_token: int, shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """Random ids with P(id) proportional to 1 / (id + 1): a frequency-sorted vocabulary's shape."""
    weights = 1.0 / torch.arange(1, n_token + 1, dtype=torch.float64)
    return torch.multinomial(weights, math.prod(shape), replacement=True, generator=generator).view(shape)


# ---- typed rows ---------------------------------------------------------------------------------------

def columns(row: object) -> dict:
    """A row's CSV record: its fields in order, those of a field that is itself a dataclass spliced in."""
    record = {}
    for field in dataclasses.fields(row):
        value = getattr(row, field.name)
        record.update(columns(value) if dataclasses.is_dataclass(value) else {field.name: value})
    return record


def write_rows(rows: Sequence, csv_path: str | Path | None, md_path: str | Path | None = None,
               markdown: str = "") -> None:
    """``rows`` (typed rows, see :func:`columns`) as CSV, and ``markdown``, where the paths are given."""
    import pandas as pd

    if csv_path is not None:
        atomic_write_text(csv_path, pd.DataFrame([columns(r) for r in rows]).to_csv(index=False))
    if md_path is not None:
        atomic_write_text(md_path, markdown)
