"""Rule sweep: Figure 3, validation perplexity of a trained DEQ vs forward tolerance and vs cap."""

import pandas as pd
import torch

from deq.io import atomic_write_text, log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.data import prepare  # noqa: E402
from deq.engine.gpus import claim_gpus  # noqa: E402
from deq.evaluate import load_run, solver_sweep  # noqa: E402

p = snakemake.params  # noqa: F821
with claim_gpus(snakemake.resources.gpu):  # noqa: F821
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model, cfg, row, step = load_run(p.run)
    corpus = prepare(row.dataset, cfg.data_root, cfg.data_mirror)
    points = solver_sweep(model.to(device), corpus.valid, cfg.eval_batch_size, cfg.eval_tgt_len, p.tols, p.caps,
                          p.max_tokens, device)
frame = pd.DataFrame(points).assign(run=cfg.model, step=step)
print(frame.to_string())
atomic_write_text(snakemake.output[0], frame.to_csv(index=False))  # noqa: F821
