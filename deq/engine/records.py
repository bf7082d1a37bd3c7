"""What a training run writes: per-step metrics, solver convergence traces, run metadata.

Both logs are JSON lines, one object per line, flushed as written: appendable (a resumed run opens
the same file and goes on), readable line by line after a crash (at worst the last line is torn,
and is dropped), and loadable without this package (``pandas.read_json(path, lines=True)``).
A binary container such as ``.npz`` is a zip that must be rewritten whole to add a record.
Non-finite values are written as ``NaN`` / ``Infinity``, which Python's and pandas' readers accept.

``metrics.jsonl`` (:class:`MetricsWriter`), one line per logged training step, with at least
:data:`REQUIRED_METRIC_FIELDS` (a value may be ``null`` where it does not apply, e.g. ``bwd_*``
without an implicit backward):

- ``step``: optimiser steps taken (int); ``loss``: training loss (nats per token); ``ppl``: exp(loss);
- ``lr``: learning rate used at this step; ``tokens_per_s``: throughput; ``step_time_s``: wall time;
- ``fwd_iters`` / ``bwd_iters``: iterates the forward / implicit-backward solve evaluated;
- ``fwd_rel_residual`` / ``bwd_rel_residual``: mean over the batch of the final relative residual;
- ``fwd_converged`` / ``bwd_converged``: fraction of the batch that met the tolerance;
- the memory fields :data:`deq.engine.memory.MEMORY_FIELDS` (see that module).

:func:`solver_metrics` turns an :class:`~deq.EquilibriumInfo` into the six ``fwd_*`` / ``bwd_*`` fields.

``traces.jsonl`` (:class:`TraceWriter`), one line per (step, phase) solve: ``step``, ``phase``
('forward', 'backward', 'eval', ...), ``solver``, ``stop_mode``, ``tol``, ``n_iter``, ``nfe``,
``fraction_converged``, and four lists of ``n_iter`` floats: ``abs_mean``, ``abs_max``,
``rel_mean``, ``rel_max``, the residual at each iterate reduced over the batch and rounded to 4
significant digits (residuals span many decades, so relative precision is what a convergence plot
needs; 4 digits are finer than any plot, and keep a 30-iterate record near 1 KB).
"""

from __future__ import annotations

import datetime as dt
import json
import platform
import socket
import sys
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch

from deq.io import atomic_write_text
from deq.layer import EquilibriumInfo
from deq.provenance import cpu_name, git, version
from deq.solvers import SolverStats

from .memory import MEMORY_FIELDS

REQUIRED_METRIC_FIELDS = (
    "step", "loss", "ppl", "lr", "tokens_per_s", "step_time_s",
    "fwd_iters", "fwd_rel_residual", "fwd_converged",
    "bwd_iters", "bwd_rel_residual", "bwd_converged",
    *MEMORY_FIELDS,
)
TRACE_FIELDS = ("step", "phase", "solver", "stop_mode", "tol", "n_iter", "nfe", "fraction_converged",
                "abs_mean", "abs_max", "rel_mean", "rel_max")
METADATA_KEYS = ("config", "seed", "git_revision", "git_dirty", "versions", "device", "hostname",
                 "platform", "start_time")


def _plain(value: Any) -> Any:
    """JSON fallback for one-element tensors and numpy scalars."""
    if isinstance(value, (torch.Tensor, np.generic, np.ndarray)) and np.size(value) == 1:
        return value.item()
    raise TypeError(f"cannot write {type(value).__name__} to a JSON log, got {value!r}")


def read_jsonl(path: str | Path) -> list[dict]:
    """Every record of a JSON-lines log; a torn last line (a crash mid-write) is dropped."""
    lines = Path(path).read_text().splitlines()
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            if number == len(lines):
                break
            raise ValueError(f"{path}: line {number} is not JSON, got {line[:80]!r}") from None
    return records


class JsonLinesWriter:
    """Appends one JSON object per line to ``path`` (created if missing), flushing each line."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() and self.path.stat().st_size and not self.path.read_bytes().endswith(b"\n"):
            self._rewrite(read_jsonl(self.path))  # drop a torn last line before appending after it
        self._file: IO[str] | None = open(self.path, "a")

    def _append(self, record: dict) -> None:
        if self._file is None:
            raise ValueError(f"{self.path} is closed")
        self._file.write(json.dumps(record, default=_plain) + "\n")
        self._file.flush()

    def _rewrite(self, records: list[dict]) -> None:
        atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in records))

    def truncate_after(self, step: int) -> None:
        """Drop every line with ``step`` greater than ``step`` (resuming from an older checkpoint).

        Atomic: the kept lines are written to a temporary file that is renamed over the log.
        """
        if self._file is not None:
            self._file.close()
        self._rewrite([r for r in read_jsonl(self.path) if r["step"] <= step])
        self._file = open(self.path, "a")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> JsonLinesWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# --- metrics ------------------------------------------------------------------------------------


def solver_metrics(info: EquilibriumInfo | None) -> dict[str, float | int | None]:
    """The ``fwd_*`` / ``bwd_*`` metric fields of one equilibrium call (``None`` where absent)."""
    fields: dict[str, float | int | None] = {}
    for prefix, stats in (("fwd", info and info.forward), ("bwd", info and info.backward)):
        fields[f"{prefix}_iters"] = stats.n_iter if stats else None
        fields[f"{prefix}_rel_residual"] = stats.rel_residual.mean().item() if stats else None
        fields[f"{prefix}_converged"] = stats.fraction_converged if stats else None
    return fields


class MetricsWriter(JsonLinesWriter):
    """``metrics.jsonl``: one line per logged step with at least :data:`REQUIRED_METRIC_FIELDS`.

    Opening an existing file appends to it; :meth:`truncate_after` drops steps a resumed run will redo.
    """

    def write(self, record: dict[str, Any]) -> None:
        missing = [name for name in REQUIRED_METRIC_FIELDS if name not in record]
        if missing:
            raise ValueError(f"metrics record lacks required fields {missing}; got {sorted(record)}")
        if not isinstance(record["step"], int) or isinstance(record["step"], bool):
            raise ValueError(f"metrics 'step' must be an int, got {record['step']!r}")
        self._append(record)


# --- traces -------------------------------------------------------------------------------------


def _round4(values: torch.Tensor) -> list[float]:
    return [float(f"{v:.4g}") for v in values.tolist()]


def _reduced(abs_trace: torch.Tensor, rel_trace: torch.Tensor) -> dict[str, list[float]]:
    """Mean and max over the batch of (n_iter, B) traces, per iterate."""
    if abs_trace.ndim != 2 or abs_trace.shape != rel_trace.shape:
        raise ValueError(f"traces must both be (n_iter, B), got {tuple(abs_trace.shape)} "
                         f"and {tuple(rel_trace.shape)}")
    abs_trace, rel_trace = abs_trace.detach().float().cpu(), rel_trace.detach().float().cpu()
    return {"abs_mean": _round4(abs_trace.mean(1)), "abs_max": _round4(abs_trace.amax(1)),
            "rel_mean": _round4(rel_trace.mean(1)), "rel_max": _round4(rel_trace.amax(1))}


class TraceWriter(JsonLinesWriter):
    """``traces.jsonl``: per-iterate residuals of logged solves, reduced over the batch.

    Log every k-th step, not every step: each line holds 4 * n_iter numbers.
    """

    def add(self, step: int, phase: str, stats: SolverStats) -> None:
        """Record one solve (e.g. ``info.forward`` as 'forward', ``info.backward`` as 'backward')."""
        self._append({
            "step": step, "phase": phase, "solver": stats.solver, "stop_mode": stats.stop_mode,
            "tol": stats.tol, "n_iter": stats.n_iter, "nfe": stats.nfe,
            "fraction_converged": stats.fraction_converged,
            **_reduced(stats.abs_trace, stats.rel_trace),
        })

    def add_unrolled(self, step: int, phase: str, abs_trace: torch.Tensor, rel_trace: torch.Tensor) -> None:
        """Record the (n_iter, B) residuals of an explicit weight-tied network run for n_iter layers.

        No solver, stopping rule or tolerance applies: those fields are ``null``, ``nfe`` is n_iter.
        """
        reduced = _reduced(abs_trace, rel_trace)
        n_iter = abs_trace.shape[0]
        self._append({"step": step, "phase": phase, "solver": "unrolled", "stop_mode": None, "tol": None,
                      "n_iter": n_iter, "nfe": n_iter, "fraction_converged": None, **reduced})


def read_traces(path: str | Path) -> list[dict]:
    """The records of a ``traces.jsonl``, in the order written (fields: :data:`TRACE_FIELDS`)."""
    return read_jsonl(path)


# --- run metadata -------------------------------------------------------------------------------


def run_metadata(config: dict[str, Any], seed: int) -> dict[str, Any]:
    """What a run directory records about how it was made (keys: :data:`METADATA_KEYS`).

    ``git_revision`` is the HEAD commit of the checkout this package is imported from (``None``
    outside a git checkout); ``git_dirty`` says whether tracked or untracked, non-ignored files
    differ from it (``None`` when unknown). Versions of optional packages are ``None`` when absent.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be the resolved config as a dict, got {type(config).__name__}")
    revision = git("rev-parse", "HEAD")
    status = git("status", "--porcelain") if revision else None
    cuda = torch.cuda.is_available()
    return {
        "config": json.loads(json.dumps(config, default=_plain)),  # a copy, and JSON-safe now, not at exit
        "seed": seed,
        "git_revision": revision.strip() if revision else None,
        "git_dirty": bool(status.strip()) if status is not None else None,
        "versions": {
            "python": platform.python_version(),
            "torch": torch.__version__,
            "cuda": torch.version.cuda,
            "numpy": np.__version__,
            "snakemake": version("snakemake"),
            "torchdeq": version("torchdeq"),
            "nvidia-ml-py": version("nvidia-ml-py"),
        },
        "device": {
            "cpu": cpu_name(),
            "cuda": torch.cuda.get_device_name() if cuda else None,
            "cuda_device_count": torch.cuda.device_count() if cuda else 0,
        },
        "hostname": socket.gethostname(),
        "platform": f"{platform.platform()} ({sys.implementation.name})",
        "start_time": dt.datetime.now(dt.timezone.utc).isoformat(),
    }


def finish_metadata(meta: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``meta`` with ``end_time`` (ISO 8601 UTC) and ``duration_s`` added."""
    end = dt.datetime.now(dt.timezone.utc)
    duration = (end - dt.datetime.fromisoformat(meta["start_time"])).total_seconds()
    return {**meta, "end_time": end.isoformat(), "duration_s": round(duration, 3)}


def write_metadata(path: str | Path, meta: dict[str, Any]) -> None:
    """Write ``meta`` as indented JSON, atomically."""
    atomic_write_text(path, json.dumps(meta, indent=2, default=_plain) + "\n")

