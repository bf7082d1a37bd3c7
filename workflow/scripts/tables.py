"""Rule tables: results/table1.csv ... table4.csv and results/tables.md."""

from pathlib import Path

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.report.tables import write_tables  # noqa: E402

write_tables({name: Path(folder) for name, folder in snakemake.params.runs.items()},  # noqa: F821
             snakemake.input.memory, snakemake.input.runtime,  # noqa: F821
             Path(snakemake.output.md).parent, snakemake.params.preset)  # noqa: F821
