"""Rule bench_solvers: write the solver benchmark table as CSV and Markdown."""

import sys

# Everything, including a traceback, goes to the rule's log; the file stays open until exit.
sys.stdout = sys.stderr = open(snakemake.log[0], "w", buffering=1)  # noqa: F821 (set by snakemake)

from deq.bench.solvers import run_benchmark  # noqa: E402

run_benchmark(
    preset=snakemake.params.preset,  # noqa: F821
    csv_path=snakemake.output.csv,  # noqa: F821
    md_path=snakemake.output.md,  # noqa: F821
)
