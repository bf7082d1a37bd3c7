"""Rule runtime_trained: Table 4's ratios on the trained DEQ / weight-tied pair, at matched perplexity."""

from deq.io import log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

import torch  # noqa: E402

from deq.engine.gpus import claim_gpus  # noqa: E402
from deq.evaluate import run_trained_runtime  # noqa: E402

p = snakemake.params  # noqa: F821
torch.set_num_threads(snakemake.threads)  # noqa: F821
with claim_gpus(snakemake.resources.gpu):  # noqa: F821
    rows = run_trained_runtime(p.deq, p.explicit, snakemake.output[0], pair_key="transformer",  # noqa: F821
                               max_tokens=p.max_tokens, rounds=p.rounds,
                               device="cuda" if torch.cuda.is_available() else "cpu")
for row in rows:
    print({key: row.get(key) for key in ("entry", "phase", "step_ms", "ratio", "deq_tol", "deq_valid_ppl")})
