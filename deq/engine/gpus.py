"""Give each concurrent job its own GPUs: Snakemake counts ``resources: gpu`` but picks no device.

Snakemake makes sure the jobs running at once ask for no more than ``--resources gpu=N`` in total; it
does not say *which* GPUs a job may use, and every process sees them all, so two jobs would share
device 0. :func:`claim_gpus` picks free devices with one lock file per device (``flock``, released
by the kernel when the process ends, even on a crash), sets ``CUDA_VISIBLE_DEVICES`` to them for the
job and its children (torchrun's workers), and frees them on exit. Jobs that find every device taken
wait and retry. Under SLURM each job already sees only its own allocation; the same code then simply
claims what it was given.

The devices a job may pick from are those listed in ``CUDA_VISIBLE_DEVICES`` when it is set, or
else every GPU NVML reports; the lock files live in the machine's temporary folder, keyed by that
name, so they are local to one machine, as GPUs are.
"""

from __future__ import annotations

import fcntl
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def visible_gpus() -> list[str]:
    """Names this process may pass in ``CUDA_VISIBLE_DEVICES`` (indices or UUIDs); [] without GPUs."""
    listed = os.environ.get("CUDA_VISIBLE_DEVICES")
    if listed is not None:
        return [d.strip() for d in listed.split(",") if d.strip() and not d.strip().startswith("-")]
    try:
        import pynvml

        pynvml.nvmlInit()
        try:
            return [str(i) for i in range(pynvml.nvmlDeviceGetCount())]
        finally:
            pynvml.nvmlShutdown()
    except Exception:  # no NVML library, no driver, or no device: a CPU machine
        return []


def lock_dir() -> Path:
    return Path(tempfile.gettempdir()) / f"deq-harness-gpu-locks-{os.getuid()}"


@contextmanager
def claim_gpus(n: int, devices: list[str] | None = None, poll_s: float = 5.0, log=print) -> Iterator[list[str]]:
    """Hold ``n`` free GPUs (of ``devices``, default :func:`visible_gpus`) and expose only them.

    Yields the claimed names ([] where there are no GPUs: the job runs on the CPU). Raises
    ``ValueError`` before waiting if ``n`` exceeds the devices there are.
    """
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise ValueError(f"the number of GPUs must be an int >= 0, got {n!r}")
    devices = visible_gpus() if devices is None else devices
    if n == 0 or not devices:
        yield []
        return
    if n > len(devices):
        raise ValueError(f"this job needs {n} GPUs but only {len(devices)} are visible ({devices})")
    folder = lock_dir()
    folder.mkdir(parents=True, exist_ok=True)
    held = _try_claim(folder, devices, n)
    while held is None:
        log(f"all of {devices} are busy; waiting for {n} free GPU(s)")
        time.sleep(poll_s)
        held = _try_claim(folder, devices, n)
    before = os.environ.get("CUDA_VISIBLE_DEVICES")
    os.environ["CUDA_VISIBLE_DEVICES"] = ",".join(name for name, _ in held)
    try:
        yield [name for name, _ in held]
    finally:
        for _, handle in held:
            handle.close()  # closing the file releases its lock
        if before is None:
            os.environ.pop("CUDA_VISIBLE_DEVICES", None)
        else:
            os.environ["CUDA_VISIBLE_DEVICES"] = before


def _try_claim(folder: Path, devices: list[str], n: int):
    """n (name, open locked file) pairs, or None (and nothing held) if fewer than n are free."""
    held = []
    for name in devices:
        handle = open(folder / f"gpu-{name.replace('/', '_')}.lock", "w")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            continue
        held.append((name, handle))
        if len(held) == n:
            return held
    for _, handle in held:
        handle.close()
    return None
