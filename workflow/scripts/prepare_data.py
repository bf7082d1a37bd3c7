"""Rule prepare_data: fetch one corpus (verified by sha256), prepare it, and record what was read."""

import json

from deq.io import atomic_write_text, log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.data import prepare  # noqa: E402

dataset = snakemake.wildcards.dataset  # noqa: F821
corpus = prepare(dataset, snakemake.params.root, snakemake.params.mirror)  # noqa: F821
summary = {"dataset": dataset, "vocabulary": len(corpus.vocab),
           **{f"{split}_tokens": len(getattr(corpus, split)) for split in ("train", "valid", "test")}}
print(json.dumps(summary))
atomic_write_text(snakemake.output[0], json.dumps(summary, indent=2))  # noqa: F821
