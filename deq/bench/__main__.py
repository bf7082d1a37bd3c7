"""Command line: ``python -m deq.bench solvers [--preset {smoke,cpu,paper}] [--out DIR]``."""

from __future__ import annotations

import argparse
from pathlib import Path

from deq.bench import solvers


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.bench", description=__doc__)
    parser.add_argument("benchmark", choices=["solvers"], help="which benchmark to run")
    parser.add_argument("--preset", choices=solvers.PRESETS, default="cpu", help="problem size (default: cpu)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder for solvers.csv and solvers.md (default: print only)")
    args = parser.parse_args(argv)
    out = args.out
    solvers.run_benchmark(args.preset, out and out / "solvers.csv", out and out / "solvers.md")


if __name__ == "__main__":
    main()
