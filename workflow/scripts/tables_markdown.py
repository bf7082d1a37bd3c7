"""Rule tables_markdown: results/tables.md, the four tables rendered for reading."""

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.report.tables import write_markdown  # noqa: E402

write_markdown(list(snakemake.input), snakemake.output[0], snakemake.params.preset)  # noqa: F821
