"""Checkpoints that resume a run exactly: written atomically, loaded with ``weights_only=True``.

A checkpoint holds the model, optimiser and scheduler states, every random generator (torch CPU
and CUDA, numpy, Python), the data position (step, epoch, token offset, and the segment memory
carried into the next step) and the resolved config. Restoring all of it makes a killed run
continue the uninterrupted run's loss trajectory bit for bit on CPU.

Only plain containers, numbers, strings and tensors are stored, so ``torch.load(weights_only=True)``
(which refuses arbitrary pickled objects) can read it.

Faults (README, "Faults"): a checkpoint is a zip archive whose every record carries a CRC-32; they are
checked on load (``torch.load`` does not), so a flipped bit, a truncated or an empty file raises
:class:`CheckpointError` naming the path and the damaged record instead of resuming from wrong
weights. A state holding a NaN or an infinity is never written, and a failed write (a full disk)
names the path, the bytes needed and free, and leaves the previous checkpoint in place.
"""

from __future__ import annotations

import errno
import math
import os
import random
import shutil
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import torch

from deq.io import default_file_mode

LATEST = "checkpoint.pt"


class CheckpointError(ValueError):
    """A checkpoint that is damaged or cannot be read; the message names its path and what is wrong."""


def rng_state() -> dict:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": pos,
                  "has_gauss": has_gauss, "cached_gaussian": cached},
        "python": _to_lists(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    random.setstate(_to_tuples(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _to_lists(value):
    return [_to_lists(v) for v in value] if isinstance(value, tuple) else value


def _to_tuples(value):
    return tuple(_to_tuples(v) for v in value) if isinstance(value, list) else value


def save_checkpoint(path: str | Path, state: dict) -> None:
    """``torch.save`` to a temporary file beside ``path``, then rename: never a half-written file.

    Refuses (``ValueError``) a state with a non-finite floating-point value, naming the entries. A
    failed write raises ``OSError`` naming ``path``, the bytes of tensors to write and the bytes free;
    the previous checkpoint at ``path`` is untouched either way.
    """
    path = Path(path)
    bad = nonfinite_entries(state)
    if bad:
        raise ValueError(f"refusing to write checkpoint {path}: non-finite values in {_listing(bad)}")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.chmod(tmp, default_file_mode())
        os.replace(tmp, path)
    except BaseException as error:
        os.unlink(tmp)
        if not isinstance(error, (OSError, RuntimeError)):
            raise
        need, free = _tensor_bytes(state), shutil.disk_usage(path.parent).free
        full = free < need or getattr(error, "errno", None) == errno.ENOSPC
        cause = "the disk is full" if full else f"{type(error).__name__}: {error}"
        raise OSError(errno.ENOSPC if full else getattr(error, "errno", None) or errno.EIO,
                      f"could not write checkpoint {path}: {cause} (about {need:,} bytes to write, {free:,} bytes "
                      f"free on its file system); the previous checkpoint there is kept") from error


def load_checkpoint(path: str | Path) -> dict:
    """Verify ``path`` (:func:`verify_checkpoint`), then load it onto the CPU."""
    verify_checkpoint(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {type(error).__name__}: {error}") from error


def verify_checkpoint(path: str | Path) -> None:
    """Raise :class:`CheckpointError` naming ``path`` unless it is a complete archive whose every record
    matches its CRC-32."""
    path = Path(path)
    try:
        if path.stat().st_size == 0:
            raise CheckpointError(f"checkpoint {path} is empty (0 bytes)")
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()  # reads every record and compares its CRC-32
    except CheckpointError:
        raise
    except (OSError, zipfile.BadZipFile, EOFError, ValueError) as error:  # truncated or overwritten
        raise CheckpointError(f"checkpoint {path} is not a complete archive: {error}") from error
    if damaged is not None:
        raise CheckpointError(f"checkpoint {path} is damaged: record {damaged!r} does not match its CRC-32")


def nonfinite_entries(tree, prefix: str = "") -> list[str]:
    """The dotted keys of every floating-point tensor (or float) in ``tree`` holding a NaN or infinity."""
    if isinstance(tree, dict):
        return [bad for key, value in tree.items() for bad in nonfinite_entries(value, f"{prefix}{key}.")]
    if isinstance(tree, (list, tuple)):
        return [bad for i, value in enumerate(tree) for bad in nonfinite_entries(value, f"{prefix}{i}.")]
    if isinstance(tree, torch.Tensor) and (tree.is_floating_point() or tree.is_complex()):
        return [] if bool(torch.isfinite(tree).all()) else [prefix.rstrip(".")]
    if isinstance(tree, float) and not math.isfinite(tree):
        return [prefix.rstrip(".")]
    return []


def _tensor_bytes(tree) -> int:
    if isinstance(tree, dict):
        return sum(_tensor_bytes(v) for v in tree.values())
    if isinstance(tree, (list, tuple)):
        return sum(_tensor_bytes(v) for v in tree)
    return tree.numel() * tree.element_size() if isinstance(tree, torch.Tensor) else 0


def _listing(names: list[str], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
