"""The copy-memory task of Table 1 (Bai, Kolter, Koltun 2018), exactly as PAPER.md defines it.

A sequence has length T+20. The input is 10 digits drawn uniformly from 1..8, then T-1 zeros, a 9
(the recall marker), then 10 zeros; the target is zero everywhere except the last 10 positions,
which repeat the first 10 digits::

    x: d1..d10  0 ... 0 (T-1)  9  0 ... 0 (10)
    y: 0 ... 0 (T+10)             d1..d10

The official generator (locuslab/TCN, ``TCN/copy_memory/utils.py``) instead ends the input with
eleven 9s (``marker = 9 * ones(mem_length + 1)``), so the model is reminded at every output
position; we follow PAPER.md's single marker.

Samples are drawn with a ``torch.Generator`` seeded by ``seed``, so a (n, T, seed) triple always
gives the same tensors.
"""

from __future__ import annotations

import torch

__all__ = ["MARKER", "N_CLASSES", "N_DIGITS", "copy_memory_splits", "make_copy_memory"]

N_DIGITS = 10  # digits to remember
MARKER = 9  # the recall marker; data digits are 1..8 and 0 is blank
N_CLASSES = 10  # tokens 0..9, in the inputs and the targets


def _generate(n: int, T: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    if n < 1 or T < 1:
        raise ValueError(f"need n >= 1 samples and delay T >= 1, got {n=}, {T=}")
    digits = torch.randint(1, MARKER, (n, N_DIGITS), generator=generator)  # (n, 10) in 1..8
    x = torch.zeros(n, T + 2 * N_DIGITS, dtype=torch.long)  # (n, T+20)
    x[:, :N_DIGITS] = digits
    x[:, N_DIGITS + T - 1] = MARKER  # after T-1 zeros; 10 zeros follow
    y = torch.zeros_like(x)  # (n, T+20)
    y[:, -N_DIGITS:] = digits
    return x, y


def make_copy_memory(n: int, T: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` samples with delay ``T``: (x, y), each (n, T+20) int64.

    >>> x, y = make_copy_memory(1, T=3, seed=0)
    >>> x[0, 10:].tolist(), y[0, :13].tolist(), bool((y[0, 13:] == x[0, :10]).all())
    ([0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], True)
    """
    return _generate(n, T, torch.Generator().manual_seed(seed))


def copy_memory_splits(T: int, seed: int, n_train: int = 20_000, n_test: int = 2_000
                       ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The paper's train and test sets (20K / 2K samples): {"train": (x, y), "test": (x, y)}.

    Both come from one generator, train first, so the test samples are new draws (and "train"
    equals ``make_copy_memory(n_train, T, seed)``).
    """
    generator = torch.Generator().manual_seed(seed)
    train = _generate(n_train, T, generator)
    return {"train": train, "test": _generate(n_test, T, generator)}
