"""Rule size_sweep_table: results/size_sweep.csv from the size sweep's runs."""

from pathlib import Path

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.report.tables import write_size_sweep  # noqa: E402

p = snakemake.params  # noqa: F821
frame = write_size_sweep([tuple(point) for point in p.points], {name: Path(folder) for name, folder in p.runs.items()},
                         snakemake.output[0], p.preset)  # noqa: F821
print(frame.to_string())
