"""Command line: ``python -m deq.bench {solvers,memory,depth,runtime} [--preset {smoke,cpu,paper}] [--out DIR]``.

Each benchmark prints its Markdown table; with ``--out`` it also writes ``DIR/<name>.csv`` and
``DIR/<name>.md``. The one-shot GPU measurement is ``python -m deq.bench.gpu --out DIR``.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

from deq.presets import PRESETS

# benchmark name -> (module, function); imported on use so that one benchmark's imports don't slow another
BENCHMARKS = {
    "solvers": ("deq.bench.solvers", "run_benchmark"),
    "memory": ("deq.bench.memory", "run_memory_benchmark"),
    "depth": ("deq.bench.depth", "run_depth_benchmark"),
    "runtime": ("deq.bench.runtime", "run_runtime_benchmark"),
}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.bench", description=__doc__.splitlines()[0])
    parser.add_argument("benchmark", choices=sorted(BENCHMARKS), help="which benchmark to run")
    parser.add_argument("--preset", choices=list(PRESETS), default="cpu", help="problem size (default: cpu)")
    parser.add_argument("--out", type=Path, default=None, help="folder for <benchmark>.csv and .md (default: print only)")
    args = parser.parse_args(argv)
    module, function = BENCHMARKS[args.benchmark]
    run = getattr(importlib.import_module(module), function)
    out, name = args.out, args.benchmark
    run(args.preset, out and out / f"{name}.csv", out and out / f"{name}.md")


if __name__ == "__main__":
    main()
