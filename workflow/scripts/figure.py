"""Figure rules: the plotting function params.figure of deq.report.figures, PNG and PDF."""

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.report import figures  # noqa: E402

p = snakemake.params  # noqa: F821
# A figure reads either its one input file, or the files the rule lists by name in params.
source = p.get("metrics") or p.get("runs") or snakemake.input[0]  # noqa: F821
extra = {"paper_memory_csv": p.paper_memory} if "paper_memory" in p.keys() else {}  # memory_bars only
getattr(figures, p.figure)(source, snakemake.output.png, snakemake.output.pdf, **extra)  # noqa: F821
