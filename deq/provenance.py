"""Where a number came from: the checkout's revision, the machine's CPU, the installed versions.

Standard library only, so that torch-free code (the README generator, the workflow) can record
provenance the same way as the training runs (:func:`deq.engine.records.run_metadata`) and the
benchmarks do.
"""

from __future__ import annotations

import importlib.metadata
import platform
import subprocess
from pathlib import Path

__all__ = ["REPO", "cpu_name", "git", "revision", "version"]

REPO = Path(__file__).resolve().parents[1]  # this package's checkout


def git(*args: str, checkout: Path = REPO) -> str | None:
    """``git args`` run in ``checkout``: its output, or None outside a checkout or without git (a GPU machine)."""
    try:
        result = subprocess.run(["git", "-C", str(checkout), *args], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout if result.returncode == 0 else None


def revision(checkout: Path = REPO) -> str:
    """The short revision of ``checkout``, with '+dirty' where tracked files differ from it; 'unknown' without git.

    Files under ``results/`` do not count: they are what commands write (the committed reference CSVs and
    figures), not the code that writes them, so a command run after another has rewritten its CSV still
    names a clean revision.
    """
    head = git("rev-parse", "--short", "HEAD", checkout=checkout)
    if head is None:
        return "unknown"
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)results", checkout=checkout)
    return head.strip() + ("+dirty" if dirty and dirty.strip() else "")


def cpu_name() -> str:
    """The CPU model from /proc/cpuinfo on Linux, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def version(distribution: str) -> str | None:
    """The installed version of ``distribution`` (a pip name), or None where it is not installed."""
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None
