"""Small parts shared by the cells: variational dropout and weight normalisation.

Variational dropout (Gal & Ghahramani, 2016) draws one mask per training step and reuses it at
every time step, every solver iteration and in the backward, so that f is the same function during
the whole solve (a fresh mask per call would make z = f(z) a moving target).

Weight normalisation uses torch's own parametrisation; a driver wraps each forward call in
:func:`weights_computed_once` so w = g v / ||v|| is computed once per call, not once per solver
iteration, and keeps its graph to g and v.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn
from torch.nn.utils import parametrizations, parametrize


class VariationalDropout(nn.Module):
    """Dropout with one mask per :meth:`reset`, shared over the dims in ``shared`` (default: time, dim 1).

    Call ``reset(x)`` once per training step with a tensor shaped like the input; every later
    ``forward`` in that step multiplies by the same mask, whose size is 1 along each shared dim and
    ``x``'s elsewhere: (B, 1, C) for the default, (B, T, 1) with ``shared=(2,)`` (whole positions
    dropped, as the output dropout of v1 ``deq_transformer.py``), (1, 1, C) with ``shared=(0, 1)`` (one
    mask for the batch, as its positional-embedding dropout). In eval mode, or with ``p == 0``, it is
    the identity. Without a reset in training mode it raises, because silently running without a
    mask would change the model.
    """

    def __init__(self, p: float, shared: tuple[int, ...] = (1,)):
        super().__init__()
        if not 0 <= p < 1:
            raise ValueError(f"dropout must be in [0, 1), got {p=}")
        self.p, self.shared = p, tuple(shared)
        self.mask: torch.Tensor | None = None

    def reset(self, like: torch.Tensor) -> None:
        if not self.training or self.p == 0:
            self.mask = None
            return
        shape = [1 if dim in self.shared else n for dim, n in enumerate(like.shape)]
        keep = torch.empty(shape, dtype=like.dtype, device=like.device).bernoulli_(1 - self.p)
        self.mask = keep / (1 - self.p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0:
            return x
        if self.mask is None:
            raise RuntimeError("VariationalDropout used in training without reset(); call the cell's "
                               "reset_dropout() once per training step")
        return x * self.mask


def weight_normed(module: nn.Module) -> nn.Module:
    """``module`` with weight normalisation on its ``weight`` (norm over all but the output dim)."""
    return parametrizations.weight_norm(module, name="weight", dim=0)


@contextmanager
def weights_computed_once(module: nn.Module):
    """Within the block, every parametrised weight of ``module`` is computed once and reused.

    Like ``parametrize.cached()``, but the weights are computed on entry, in the caller's grad
    mode. Otherwise the first use would happen inside the solver's no-grad iterations, the cache
    would hold a weight without a graph, and the gradient to the weight-norm parameters would be
    silently lost.
    """
    with parametrize.cached():
        for m in module.modules():
            if parametrize.is_parametrized(m):
                for name in m.parametrizations:
                    getattr(m, name)
        yield
