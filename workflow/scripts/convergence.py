"""Rule convergence: Figure 2's residual-vs-evaluations curves, early and late, DEQ and weight-tied."""

import pandas as pd
import torch

from deq.io import atomic_write_text, log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.data import batchify, prepare  # noqa: E402
from deq.engine.gpus import claim_gpus  # noqa: E402
from deq.evaluate import convergence_curve, load_run  # noqa: E402

rows = []
with claim_gpus(snakemake.resources.gpu):  # noqa: F821
    device = "cuda" if torch.cuda.is_available() else "cpu"
    for name, folder in snakemake.params.runs.items():  # noqa: F821
        early = snakemake.params.early[name]  # noqa: F821
        for label, checkpoint in (("early", f"checkpoint-step{early}.pt"), ("late", "checkpoint.pt")):
            model, cfg, row, step = load_run(folder, checkpoint)
            model.to(device)
            corpus = prepare(row.dataset, cfg.data_root, cfg.data_mirror)
            streams = batchify(corpus.valid, cfg.eval_batch_size).to(device)
            inputs, targets = streams[:, :cfg.eval_tgt_len], streams[:, 1:cfg.eval_tgt_len + 1]
            curve = convergence_curve(model, inputs, targets, snakemake.params.n_evals)  # noqa: F821
            kind = "deq" if row.driver == "deq" else "weight_tied"
            print(f"{name} {label} (step {step}): final rel. residual {curve['rel_residual'][-1]:.3g}")
            rows += [{"run": name, "kind": kind, "checkpoint": label, "step": step, "nfe": i + 1,
                      "rel_residual": rel, "abs_residual": ab}
                     for i, (rel, ab) in enumerate(zip(curve["rel_residual"], curve["abs_residual"]))]
atomic_write_text(snakemake.output[0], pd.DataFrame(rows).to_csv(index=False))  # noqa: F821
