"""Rule table: results/table<n>.csv from its runs and its benchmark."""

from pathlib import Path

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.report.tables import write_table  # noqa: E402

benchmark = snakemake.input.benchmark or None  # noqa: F821
trained_runtime = (snakemake.input.trained_runtime or [None])[0]  # noqa: F821 (Table 4: the trained pair's timing)
paper_runtime = (snakemake.input.paper_runtime or [None])[0]  # noqa: F821 (Table 4 at paper widths, committed)
paper_memory = (snakemake.input.paper_memory or [None])[0]  # noqa: F821 (the committed paper-width CSV, if any)
frame = write_table(int(snakemake.wildcards.n),  # noqa: F821
                    {name: Path(folder) for name, folder in snakemake.params.runs.items()},  # noqa: F821
                    benchmark, benchmark, snakemake.output[0], snakemake.params.preset,  # noqa: F821
                    paper_memory_csv=paper_memory, not_trained=dict(snakemake.params.not_trained),  # noqa: F821
                    trained_runtime_csv=trained_runtime, paper_runtime_csv=paper_runtime)
print(frame.to_string())
