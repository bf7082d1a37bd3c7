"""What the workflow asks the SLURM cluster before it submits (standard library and SLURM commands only).

- :func:`has_gpus`: whether any node has a ``gpu`` GRES (``sinfo``), for the config's ``use_gpus: auto``.

- :func:`status_command`: how Snakemake's SLURM executor should ask for job states. Its default,
  ``sacct``, needs the accounting database; on a cluster without one, sacct answers "Slurm accounting
  storage is disabled", the executor never learns that a job finished, and Snakemake waits forever.
  There ``squeue`` is the only source, and it lists a finished job for ``MinJobAge`` seconds
  (300 by default), long enough for the executor's polls.
- :func:`cancel_orphans`: jobs a killed Snakemake left in the queue. A SIGKILLed Snakemake cannot cancel
  its jobs; they keep running, and the rerun submits the unfinished ones again, so two training jobs
  would share a run folder (the second stops at the folder's lock). The rerun holds `make run`'s lock,
  so every job still queued from this folder is such an orphan: it is cancelled, and its training is
  resubmitted and resumes from its last checkpoint.

    python -m deq.engine.slurm status-command      prints sacct or squeue
    python -m deq.engine.slurm cancel-orphans DIR  cancels this user's jobs whose working folder is DIR
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time


def _run(*command: str) -> str:
    """A SLURM command's output; RuntimeError with its own message where it cannot be run or fails."""
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=60, check=True).stdout
    except FileNotFoundError:
        raise RuntimeError(f"{command[0]} not found: this must run on a SLURM submit host (sinfo, squeue, "
                           f"scontrol, scancel)") from None
    except subprocess.SubprocessError as error:
        detail = (getattr(error, "stderr", None) or str(error)).strip()
        raise RuntimeError(f"{' '.join(command)} failed: {detail}") from None


def has_gpus() -> bool:
    """Whether any node of the cluster has a ``gpu`` GRES. Raises ``RuntimeError`` where sinfo cannot be
    asked, since guessing would submit jobs that wait forever for GPUs or leave them idle."""
    try:
        listed = _run("sinfo", "--noheader", "--format=%G")
    except RuntimeError as error:
        raise RuntimeError(f"use_gpus=auto under SLURM asks sinfo whether the cluster has GPUs: {error}; set "
                           f"use_gpus=always or use_gpus=never") from None
    return any(gres.startswith("gpu") for line in listed.split() for gres in line.split(","))


def status_command() -> str:
    """``sacct`` where the cluster keeps accounting, else ``squeue`` (``scontrol show config``)."""
    for line in _run("scontrol", "show", "config").splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "AccountingStorageType":
            value = value.strip()
            return "squeue" if value in ("", "(null)", "accounting_storage/none") else "sacct"
    return "squeue"


def queued_jobs(folder: str) -> list[str]:
    """Ids of this user's jobs that are pending or running with ``folder`` as their working folder."""
    folder = os.path.realpath(folder)
    listed = _run("squeue", "--me", "--noheader", "--states=PENDING,RUNNING,CONFIGURING,COMPLETING,SUSPENDED",
                  "--format=%i|%Z")
    return [job for job, _, where in (line.partition("|") for line in listed.splitlines())
            if where and os.path.realpath(where.strip()) == folder]


def cancel_orphans(folder: str, timeout: float = 300) -> list[str]:
    """Cancel the jobs :func:`queued_jobs` lists and wait until they have left the queue (their processes,
    and the run-folder locks they hold, are gone). Returns the cancelled ids."""
    jobs = queued_jobs(folder)
    if not jobs:
        return []
    print(f"cancelling {len(jobs)} job(s) a killed run left in the queue for {folder}: {' '.join(jobs)}")
    _run("scancel", *jobs)
    deadline = time.monotonic() + timeout
    while (left := set(queued_jobs(folder)) & set(jobs)) and time.monotonic() < deadline:
        time.sleep(1)
    if left:
        raise RuntimeError(f"jobs {' '.join(sorted(left))} still in the queue {timeout:.0f} s after scancel; "
                           f"check them with squeue and rerun")
    return jobs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m deq.engine.slurm", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser("status-command", help="print sacct, or squeue on a cluster without accounting")
    orphans = commands.add_parser("cancel-orphans", help="cancel this user's queued jobs working in DIR")
    orphans.add_argument("folder", metavar="DIR")
    args = parser.parse_args(argv)
    try:
        if args.command == "status-command":
            print(status_command())
        else:
            cancel_orphans(args.folder)
    except RuntimeError as error:
        sys.exit(str(error))


if __name__ == "__main__":
    main()
