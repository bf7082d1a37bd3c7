"""One-shot GPU measurements within a time budget: ``python -m deq.bench.gpu --out DIR``.

On one GPU, in this order, each part skipped (and said so) when the time left cannot fit it:
(a) ``memory``: Tables 2-3's memory at the paper preset (:mod:`deq.bench.memory`: the protocol, with the
line through batches 2 and 4 and its error at 15, the method of ``results/reference/cpu/memory_paper.csv``);
(b) ``runtime``: Table 4's ratios at paper scale (:mod:`deq.bench.runtime`); (c) ``throughput``: tokens per
second of the DEQ-Transformer medium rows (non-adaptive and adaptive) and the Transformer-XLs they are compared
with, at the official script's batch (56 segments of 150).

Each file under DIR is written atomically as its part finishes, so a run cut short keeps what finished:
``device.json`` (first), ``memory``, ``runtime`` and ``throughput`` (``.csv`` + ``.md``), and
``status.csv`` (per part: done / skipped / failed, seconds, why). ``--shrink`` runs every part at smoke
scale on the CPU, the check that the script works. It needs torch, numpy, pandas, matplotlib,
nvidia-ml-py, tqdm and pyyaml only. Exit status: 0 when every part finished or was skipped for time,
1 when one failed, 2 without a GPU and without ``--shrink``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import torch

from deq.bench.common import scales, write_rows
from deq.io import atomic_write_text

# ---- device.json ------------------------------------------------------------------------------------

def device_info(shrink: bool, budget_s: float) -> dict:
    """A run's metadata (:func:`deq.engine.records.run_metadata`: versions, CPU, GPU, git revision, start
    time; ``config`` holds ``shrink`` and ``budget_s``), with the GPU's memory, driver, cuDNN and TF32 flags."""
    from deq.engine.records import run_metadata

    info = run_metadata({"shrink": shrink, "budget_s": budget_s}, seed=0)
    if torch.cuda.is_available():
        info["device"] |= {"memory_bytes": torch.cuda.get_device_properties(0).total_memory,
                           "cudnn": torch.backends.cudnn.version(), "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
                           "tf32_cudnn": torch.backends.cudnn.allow_tf32}
        try:
            import pynvml

            pynvml.nvmlInit()
            cuda = pynvml.nvmlSystemGetCudaDriverVersion()  # e.g. 12040
            info["device"] |= {"driver": pynvml.nvmlSystemGetDriverVersion(),
                               "cuda_driver": f"{cuda // 1000}.{cuda % 1000 // 10}"}
            pynvml.nvmlShutdown()
        except Exception as error:  # NVML missing or refused: keep the rest, say why
            info["device"]["driver"] = f"unknown ({type(error).__name__}: {error})"
    return info


# ---- the run ----------------------------------------------------------------------------------------

PARTS = ("memory", "runtime", "throughput")


def run_part(name: str, preset: str, out: Path, deadline: float) -> list[Path]:
    """Part ``name`` of :data:`PARTS` at ``preset``; returns the files it wrote (``out/name.csv`` and ``.md``)."""
    from deq.bench.memory import run_memory_benchmark
    from deq.bench.runtime import run_runtime_benchmark

    scale, files = scales(preset).gpu, (out / f"{name}.csv", out / f"{name}.md")
    if name == "memory":
        run_memory_benchmark(preset, *files)
    else:  # throughput: the DEQ-Transformer medium rows and their explicit pairs at the official script's batch
        extra = (dict(pairs=["transformer-medium", "transformer"], rounds=scale.tp_rounds, batch=scale.tp_batch)
                 if name == "throughput" else {})
        run_runtime_benchmark(preset, *files, device=scale.device, deadline=deadline, **extra)
    return [path for path in files if path.exists()]


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
    preset = "smoke" if shrink else "paper"
    scale = scales(preset).gpu
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "device.json", json.dumps(device_info(shrink, budget_s), indent=2) + "\n")
    print(f"deq.bench.gpu: {preset} scale on {scale.device}, budget {budget_s:g} s, writing to {out}",
          flush=True)
    status, failed = [], False
    for i, name in enumerate(PARTS):
        left = start + budget_s - time.monotonic()
        need = scale.needs_s[name]
        if left < need:
            reason = f"{left:.0f} s of the budget left, the part needs at least {need} s"
            print(f"{name}: SKIPPED ({reason})", flush=True)
            status.append(StatusRow(name, "skipped", 0.0, reason, ""))
        else:
            t0 = time.monotonic()
            # This part's share of the time left, in proportion to the needs of the parts still to run;
            # no new row or round starts after 85% of it, so the last one started can finish in time.
            share = left * need / sum(scale.needs_s[n] for n in PARTS[i:])
            print(f"{name}: running ({left:.0f} s left)", flush=True)
            try:
                files = run_part(name, preset, out, t0 + 0.85 * share)
                status.append(StatusRow(name, "done", round(time.monotonic() - t0, 1), "",
                                        " ".join(p.name for p in files)))
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
