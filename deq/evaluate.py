"""Evaluation: perplexity over a whole token stream with the memory carried, and copy-memory loss."""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn


@torch.no_grad()
def perplexity(model: nn.Module, tokens: np.ndarray, batch_size: int, tgt_len: int, mem_len: int | None = None,
               max_tokens: int | None = None, device: torch.device | str = "cpu") -> float:
    """exp of the token-weighted mean loss over ``tokens`` (or its first ``max_tokens``).

    The stream is cut into ``batch_size`` contiguous streams and read in segments of ``tgt_len``,
    the segment memory carried from one to the next (``mem_len`` overrides the model's own), in eval
    mode, so the model's evaluation solver settings apply.
    """
    from deq.data import batchify

    if max_tokens is not None:
        tokens = tokens[: max_tokens + 1]
    streams = batchify(tokens, batch_size).to(device)  # (B, N)
    driver = model.driver
    saved_mem_len, was_training = driver.mem_len, model.training
    if mem_len is not None:
        driver.mem_len = mem_len
    model.eval()
    total, count, memory = 0.0, 0, None
    try:
        for pos in range(0, streams.size(1) - 1, tgt_len):
            inputs = streams[:, pos:pos + tgt_len]
            targets = streams[:, pos + 1:pos + 1 + tgt_len]
            inputs = inputs[:, : targets.size(1)]
            out = model(inputs, targets, memory)
            total += out.nll.sum().item()
            count += targets.numel()
            memory = out.memory
    finally:
        driver.mem_len = saved_mem_len
        model.train(was_training)
    return math.exp(total / count)


@torch.no_grad()
def copy_memory_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int,
                     device: torch.device | str = "cpu") -> float:
    """Mean cross-entropy over every position of every test sequence (the paper's Table 1 metric)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for start in range(0, len(x), batch_size):
            logits = model(x[start:start + batch_size].to(device))
            target = y[start:start + batch_size].to(device)
            total += nn.functional.cross_entropy(logits.reshape(-1, logits.size(-1)), target.reshape(-1),
                                                 reduction="sum").item()
            count += target.numel()
    finally:
        model.train(was_training)
    return total / count
