"""One-shot GPU measurements within a time budget: ``python -m deq.bench.gpu --out DIR``.

On one GPU, in this order, each part skipped (and said so) when the time left cannot fit it:

(a) ``memory``: the memory column of Tables 2-3 at the paper's protocol (sequence 150, batch 15, word
    embeddings excluded, the paper's widths) for every row, with the line through batches 2 and 4 and its
    error at 15 beside each (:mod:`deq.bench.memory` at the paper preset: the method of the CPU reference
    ``results/reference/cpu/memory_paper.csv``, so the two compare row by row).
(b) ``runtime``: Table 4's DEQ / explicit ratios at paper scale (:mod:`deq.bench.runtime`).
(c) ``throughput``: tokens per second of (b)'s transformer pair (the adaptive DEQ-Transformer medium and the
    18-layer Transformer-XL), training and inference, at the official script's batch (56 segments of 150).

Files under DIR, each written atomically as soon as its part (or row) finishes, so a run cut short
keeps what finished: ``device.json`` (first), ``memory.csv`` + ``memory.md``,
``runtime.csv`` + ``runtime.md``, ``throughput.csv`` + ``throughput.md``, and ``status.csv`` (one row per part: done /
skipped / failed, seconds, why).

``--shrink`` runs every part at smoke scale on the CPU: the check that the script works, in seconds.
Only torch, numpy, pandas, matplotlib, nvidia-ml-py, tqdm and pyyaml are needed (no snakemake).
The exit status is 0 when every part finished or was skipped for time, 1 when a part failed,
2 without a GPU and without ``--shrink``.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from deq.bench.common import scales, write_rows
from deq.io import atomic_write_text

DEVICE_FIELDS = ("gpu", "gpu_count", "gpu_memory_bytes", "driver_version", "cuda_driver_version", "cuda_runtime",
                 "cudnn", "torch", "python", "tf32_matmul", "tf32_cudnn", "cpu", "hostname", "date",
                 "git_revision", "git_dirty", "shrink", "budget_s")


# ---- device.json ------------------------------------------------------------------------------------

def device_info(shrink: bool, budget_s: float) -> dict:
    """The GPU, its driver and CUDA versions, torch, date and git revision (keys: DEVICE_FIELDS)."""
    from deq.provenance import cpu_name
    from deq.engine.records import run_metadata

    meta = run_metadata({"shrink": shrink, "budget_s": budget_s}, seed=0)
    cuda = torch.cuda.is_available()
    driver = cuda_driver = None
    if cuda:
        try:
            import pynvml

            pynvml.nvmlInit()
            driver = pynvml.nvmlSystemGetDriverVersion()
            version = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040
            cuda_driver = f"{version // 1000}.{version % 1000 // 10}"
            pynvml.nvmlShutdown()
        except Exception as error:  # NVML missing or refused: keep the rest, say why
            driver = f"unknown ({type(error).__name__}: {error})"
    info = {
        "gpu": torch.cuda.get_device_name() if cuda else None,
        "gpu_count": torch.cuda.device_count() if cuda else 0,
        "gpu_memory_bytes": torch.cuda.get_device_properties(0).total_memory if cuda else None,
        "driver_version": driver, "cuda_driver_version": cuda_driver, "cuda_runtime": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if cuda else None, "torch": torch.__version__,
        "python": meta["versions"]["python"], "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "tf32_cudnn": torch.backends.cudnn.allow_tf32, "cpu": cpu_name(), "hostname": meta["hostname"],
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "git_revision": meta["git_revision"], "git_dirty": meta["git_dirty"], "shrink": shrink, "budget_s": budget_s,
    }
    assert tuple(info) == DEVICE_FIELDS, "DEVICE_FIELDS must list device_info's keys in order"
    return info


# ---- the parts --------------------------------------------------------------------------------------

def memory_part(preset: str, out: Path, deadline: float) -> list[Path]:
    """Tables 2-3 memory at the preset's scale (:mod:`deq.bench.memory`; paper: the protocol and its line)."""
    from deq.bench.memory import run_memory_benchmark

    run_memory_benchmark(preset, out / "memory.csv", out / "memory.md")
    return [out / "memory.csv", out / "memory.md"]


def runtime_part(preset: str, out: Path, deadline: float) -> list[Path]:
    from deq.bench.runtime import run_runtime_benchmark

    run_runtime_benchmark(preset, out / "runtime.csv", out / "runtime.md", device=scales(preset).gpu.device,
                          deadline=deadline)
    return [out / "runtime.csv", out / "runtime.md"]


def throughput_part(preset: str, out: Path, deadline: float) -> list[Path]:
    """Tokens per second of Table 4's transformer pair at the official script's batch (:mod:`deq.bench.runtime`)."""
    from deq.bench.runtime import run_runtime_benchmark

    scale = scales(preset).gpu
    run_runtime_benchmark(preset, out / "throughput.csv", out / "throughput.md", pairs=["transformer"],
                          rounds=scale.tp_rounds, device=scale.device, deadline=deadline, batch=scale.tp_batch)
    return [out / "throughput.csv", out / "throughput.md"]


# ---- the run ----------------------------------------------------------------------------------------

PARTS: dict[str, Callable[[str, Path, float], list[Path]]] = {  # (preset, folder, deadline) -> files
    "memory": memory_part, "runtime": runtime_part,
    "throughput": throughput_part}


@dataclass
class StatusRow:
    """One part of the run: a row of ``status.csv``."""

    part: str
    status: str  # 'done', 'skipped' or 'failed'
    seconds: float
    reason: str  # why skipped or failed
    files: str  # the files it wrote, space-separated


def run(out: Path, shrink: bool = False, budget_s: float = 480.0) -> int:
    """Run every part that fits in ``budget_s`` seconds; returns the exit status (see the module docstring)."""
    start = time.monotonic()
    end = start + budget_s
    preset = "smoke" if shrink else "paper"
    scale = scales(preset).gpu
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "device.json", json.dumps(device_info(shrink, budget_s), indent=2) + "\n")
    print(f"deq.bench.gpu: {preset} scale on {scale.device}, budget {budget_s:g} s, writing to {out}",
          flush=True)
    names = list(PARTS)
    status, failed = [], False
    for i, name in enumerate(names):
        left = end - time.monotonic()
        need = scale.needs_s[name]
        if left < need:
            reason = f"{left:.0f} s of the budget left, the part needs at least {need} s"
            print(f"{name}: SKIPPED ({reason})", flush=True)
            status.append(StatusRow(name, "skipped", 0.0, reason, ""))
        else:
            t0 = time.monotonic()
            # This part's share of the time left, in proportion to the needs of the parts still to run;
            # no new row or round starts after 85% of it, so the last one started can finish in time.
            share = left * need / sum(scale.needs_s[n] for n in names[i:])
            print(f"{name}: running ({left:.0f} s left)", flush=True)
            try:
                files = PARTS[name](preset, out, t0 + 0.85 * share)
                status.append(StatusRow(name, "done", round(time.monotonic() - t0, 1), "",
                                        " ".join(p.name for p in files if p.exists())))
            except Exception as error:  # one part failing must not cost the others
                traceback.print_exc()
                failed = True
                status.append(StatusRow(name, "failed", round(time.monotonic() - t0, 1),
                                        f"{type(error).__name__}: {error}".splitlines()[0], ""))
            torch.cuda.empty_cache()
            print(f"{name}: {status[-1].status} in {status[-1].seconds} s", flush=True)
        write_rows(status, out / "status.csv")
    print(f"deq.bench.gpu: finished in {time.monotonic() - start:.0f} s of {budget_s:g} s", flush=True)
    return 1 if failed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deq.bench.gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the CSVs and device.json")
    parser.add_argument("--shrink", action="store_true", help="every part at smoke scale on the CPU (a check)")
    parser.add_argument("--budget-s", type=float, default=480.0, help="time budget in seconds (default 480)")
    args = parser.parse_args(argv)
    if not args.budget_s > 0:
        parser.error(f"--budget-s must be > 0, got {args.budget_s}")
    if not args.shrink and not torch.cuda.is_available():
        print("deq.bench.gpu: no CUDA device; run on a GPU, or pass --shrink for the CPU check", file=sys.stderr)
        return 2
    return run(args.out, args.shrink, args.budget_s)


if __name__ == "__main__":
    sys.exit(main())
