"""Batched fixed-point solvers for z = f(z), picked by name.

Every solver in :data:`SOLVERS` has the signature

    solver(f, z0, *, tol, max_iter, stop_mode, **options) -> (z_star, SolverStats)

on flat iterates ``z0`` of shape (B, d), and returns the lowest-residual iterate it evaluated.
:func:`solve` is the public entry point: it checks the arguments, flattens any (B, ...) shape,
runs the solver without an autograd graph and restores the shape.

>>> import torch, deq
>>> z, stats = deq.solve(torch.cos, torch.zeros(2, 3), solver="anderson", tol=1e-8, stop_mode="abs")
>>> round(z[0, 0].item(), 6), bool(stats.converged.all())
(0.739085, True)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import torch

from deq.settings import DEFAULTS, check_solver_args

from .anderson import anderson
from .broyden import broyden
from .gmres import gmres
from .picard import picard
from .stats import STOP_MODES, Function, SolverStats

SOLVERS: dict[str, Callable[..., tuple[torch.Tensor, SolverStats]]] = {
    "anderson": anderson,
    "broyden": broyden,
    "gmres": gmres,  # restarted GMRES(m): meant for the implicit backward, whose map is affine
    "picard": picard,
}

__all__ = ["SOLVERS", "STOP_MODES", "SolverStats", "check_solver_args", "solve", "solver_buffer_bytes"]


def solve(
    f: Function,
    z0: torch.Tensor,
    solver: str = DEFAULTS.solver,
    tol: float = DEFAULTS.tol,
    max_iter: int = DEFAULTS.max_iter,
    stop_mode: str = DEFAULTS.stop_mode,
    **solver_options,
) -> tuple[torch.Tensor, SolverStats]:
    """Find z* = f(z*) for every sample of the batch ``z0`` (B, ...), without an autograd graph.

    Args:
        f: any callable mapping a tensor of ``z0``'s shape to one of the same shape.
        z0: starting point; dimension 0 is the batch, the rest is one sample.
        solver: a name in :data:`SOLVERS`.
        tol: every sample must reach residual <= tol (in ``stop_mode``) for the solve to stop early.
        max_iter: at most this many iterates are evaluated.
        stop_mode: ``'abs'`` for ||f(z) - z||, ``'rel'`` for ||f(z) - z|| / ||f(z)||, per sample.
        **solver_options: the chosen solver's own settings (e.g. ``m``, ``lam``, ``beta``).

    Returns:
        ``(z_star, stats)``: the lowest-residual iterate per sample, in ``z0``'s shape, and a
        :class:`SolverStats` record.
    """
    check_solver_args(solver, tol, max_iter, stop_mode, solver_options)
    shape = z0.shape

    def f_flat(z: torch.Tensor) -> torch.Tensor:
        return f(z.view(shape)).reshape(shape[0], -1)

    with torch.no_grad():
        z_star, stats = SOLVERS[solver](
            f_flat, z0.detach().reshape(shape[0], -1), tol=tol, max_iter=max_iter,
            stop_mode=stop_mode, **solver_options,
        )
    return z_star.view(shape), stats


# solver -> (B, d) vectors of its history with m slots
HISTORY = {"anderson": lambda m: 2 * m + 2, "broyden": lambda m: 2 * m, "gmres": lambda m: m + 1, "picard": lambda m: 0}


def solver_buffer_bytes(solver: str, max_iter: int, options: dict, batch: int, d: int, itemsize: int = 4) -> int:
    """Bytes a solve allocates for its history, computed from the solver's code.

    ``d`` is one sample's flattened state. Anderson: dG and dS (B, m, d) each, the probe (B, 2, d) and
    the float64 Gram matrix (B, m, m); Broyden: U and V (B, m, d) each, ``max_iter - 1`` slots (the
    official ``threshold``) unless ``m`` bounds them; GMRES: its basis (B, m + 1, d); Picard: nothing.
    Every solver's trace also keeps its best iterate (B, d). The working vectors (B, d) of the current
    step are not counted: measured with a cheap f (its output included), Anderson 6, Broyden 14, GMRES 4,
    Picard 5, whatever the cap (``tests/test_bench_memory.py`` checks all of it against the allocator).

    >>> solver_buffer_bytes("broyden", max_iter=30, options={"m": 8}, batch=2, d=100)  # U, V + best iterate
    13600
    """
    if solver not in HISTORY:
        raise ValueError(f"unknown solver {solver!r} (no buffer account); choose from {sorted(HISTORY)}")
    m = options.get("m", inspect.signature(SOLVERS[solver]).parameters.get("m", None))
    m = getattr(m, "default", m)
    if solver == "broyden":
        m = max(1, max_iter - 1 if m is None else min(m, max_iter - 1))
    vectors = HISTORY[solver](m) + 1
    gram = batch * m * m * 8 if solver == "anderson" else 0
    return vectors * batch * d * itemsize + gram
