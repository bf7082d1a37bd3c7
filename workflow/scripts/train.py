"""Rule train: one run of the study on its own GPU(s) (or the CPU), resuming from its checkpoint.

A run folder whose saved config differs from the rule's (the study's budgets were edited) is cleared
first: its checkpoint cannot be resumed under the new settings.
"""

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from deq.io import atomic_write_text, log_to

log_to(snakemake.log[0])  # noqa: F821 (snakemake is set by Snakemake)

from deq.engine.gpus import claim_gpus  # noqa: E402

folder, run = Path(snakemake.params.folder), snakemake.params.run  # noqa: F821
config_path = folder / "run.yaml"
if config_path.exists() and yaml.safe_load(config_path.read_text()) != run:
    print(f"{folder}: the run's config changed; starting it over")
    shutil.rmtree(folder)
atomic_write_text(config_path, yaml.safe_dump(run, sort_keys=False))

with claim_gpus(snakemake.resources.gpu) as gpus:  # noqa: F821
    print(f"GPUs: {gpus or 'none, running on the CPU'}")
    if len(gpus) > 1:  # data-parallel: one process per GPU
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={len(gpus)}",
                   "-m", "deq.train", "--config", str(config_path), "--out", str(folder)]
        subprocess.run(command, check=True, stdout=sys.stdout, stderr=sys.stderr)
    else:
        import torch

        from deq.engine.config import load_config
        from deq.train import train

        torch.set_num_threads(snakemake.threads)  # noqa: F821
        print(train(load_config(config_path), folder))
