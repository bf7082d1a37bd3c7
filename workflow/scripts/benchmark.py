"""Rule benchmark: one of deq.bench's benchmarks, CSV and Markdown, using the rule's threads."""

import importlib

import torch

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.bench.__main__ import BENCHMARKS  # noqa: E402
from deq.engine.gpus import claim_gpus  # noqa: E402

torch.set_num_threads(snakemake.threads)  # noqa: F821
module, function = BENCHMARKS[snakemake.wildcards.name]  # noqa: F821
with claim_gpus(snakemake.resources.gpu):  # noqa: F821
    getattr(importlib.import_module(module), function)(
        snakemake.params.preset, snakemake.output.csv, snakemake.output.md)  # noqa: F821
