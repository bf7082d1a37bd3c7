"""Damped fixed-point (Picard) iteration: z_{k+1} = (1 - beta) z_k + beta f(z_k)."""

from __future__ import annotations

import torch

from .stats import Function, SolverStats, Trace


def picard(
    f: Function,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    stop_mode: str,
    beta: float = 1.0,
) -> tuple[torch.Tensor, SolverStats]:
    """Iterate the damped map from ``z0`` (B, d); ``beta=1`` is plain iteration, ``beta<1`` damps.

    Converges for any contraction when ``beta=1``, and for maps whose Jacobian eigenvalues lie in
    the unit disc centred at ``1 - 1/beta`` otherwise. Returns the lowest-residual iterate.
    """
    trace = Trace("picard", f, z0, tol, stop_mode)
    z = z0
    for _ in range(max_iter):
        _, g = trace.evaluate(z)
        if trace.done():
            break
        z = z + beta * g  # (1 - beta) z + beta f(z)
    return trace.finish()
