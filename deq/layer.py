"""The equilibrium layer: forward solve, then attach the chosen gradient.

>>> import torch, deq
>>> W = torch.randn(4, 4, dtype=torch.float64) * 0.1
>>> x = torch.randn(3, 4, dtype=torch.float64, requires_grad=True)
>>> z, info = deq.equilibrium(lambda z: torch.tanh(z @ W + x), torch.zeros(3, 4, dtype=torch.float64),
...                           solver="anderson", tol=1e-10, max_iter=50)
>>> z.sum().backward()
>>> bool(info.forward.converged.all()), info.backward.n_iter > 0
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from . import backward as grads
from .settings import BACKWARDS, DEFAULTS, check_solver_args
from .solvers import SolverStats, solve
from .solvers.stats import Function, Trace


@dataclass
class EquilibriumInfo:
    """What :func:`equilibrium` did. ``backward`` is filled in when (and if) the backward runs."""

    forward: SolverStats  # the forward solve (for 'unrolled', the residuals of the unrolled steps)
    backward_mode: str  # one of BACKWARDS
    backward: SolverStats | None = field(default=None)  # the implicit backward solve, after .backward()


def equilibrium(
    f: Function,
    z0: torch.Tensor,
    solver: str = DEFAULTS.solver,
    tol: float = DEFAULTS.tol,
    max_iter: int = DEFAULTS.max_iter,
    stop_mode: str = DEFAULTS.stop_mode,
    backward: str = DEFAULTS.backward,
    backward_solver: str = DEFAULTS.backward_solver,
    backward_tol: float = DEFAULTS.backward_tol,
    backward_max_iter: int = DEFAULTS.backward_max_iter,
    backward_options: dict | None = None,
    phantom_steps: int = 5,
    phantom_damping: float = 0.5,
    **solver_options,
) -> tuple[torch.Tensor, EquilibriumInfo]:
    """Solve z* = f(z*) from ``z0`` and return it with gradients per ``backward``.

    ``f`` is a closure over parameters and inputs (``lambda z: cell(z, injection)``). The forward
    solve (``solver``, ``tol``, ``max_iter``, ``stop_mode``, ``solver_options``) runs without a
    graph. When grad mode is on, one tracked evaluation f(z*) is attached and gradients reach every
    parameter and input of f through the chosen ``backward``:

    - ``'implicit'``: the exact implicit-function gradient; its fixed point is solved with
      ``backward_solver`` / ``backward_tol`` / ``backward_max_iter`` / ``backward_options``
      (the relative residual, ``stop_mode``, is shared with the forward);
    - ``'phantom'``: ``phantom_steps`` damped (``phantom_damping``) unrolled steps from z*;
    - ``'jfb'``: one step f(z*);
    - ``'unrolled'``: no solver at all: f applied ``max_iter`` times from z0 with ordinary autograd
      (the weight-tied explicit network; its residual trace is still recorded).

    Under ``torch.no_grad()`` (evaluation) no graph is built and the solver's z* is returned.
    The returned value is f(z*) (one more step) where a graph is attached, else z* itself.
    """
    if backward not in BACKWARDS:
        raise ValueError(f"unknown backward {backward!r}; choose from {list(BACKWARDS)}")
    backward_options = backward_options or {}
    if backward == "phantom" and not (isinstance(phantom_steps, int) and phantom_steps >= 1):
        raise ValueError(f"phantom_steps must be an integer >= 1, got {phantom_steps=}")
    if backward == "phantom" and not 0 < phantom_damping <= 1:
        raise ValueError(f"phantom_damping must be in (0, 1], got {phantom_damping=}")
    if backward == "implicit":
        check_solver_args(backward_solver, backward_tol, backward_max_iter, stop_mode, backward_options)
    if backward == "unrolled":
        check_solver_args(solver, tol, max_iter, stop_mode, {})
        return _unrolled(f, z0, tol=tol, max_iter=max_iter, stop_mode=stop_mode)

    z_star, stats = solve(f, z0, solver=solver, tol=tol, max_iter=max_iter, stop_mode=stop_mode,
                          **solver_options)
    info = EquilibriumInfo(forward=stats, backward_mode=backward)
    if not torch.is_grad_enabled():
        return z_star, info
    if backward == "implicit":
        def keep(stats: SolverStats) -> None:
            info.backward = stats

        z = grads.implicit(f, z_star, solver=backward_solver, tol=backward_tol,
                           max_iter=backward_max_iter, stop_mode=stop_mode, on_stats=keep,
                           **backward_options)
    elif backward == "phantom":
        z = grads.phantom(f, z_star, steps=phantom_steps, damping=phantom_damping)
    else:
        z = grads.jfb(f, z_star)
    return z, info


def _unrolled(f: Function, z0: torch.Tensor, *, tol: float, max_iter: int,
              stop_mode: str) -> tuple[torch.Tensor, EquilibriumInfo]:
    """z_{k+1} = f(z_k), ``max_iter`` times, under the caller's grad mode; residuals logged detached."""
    trace = Trace("unrolled", f, z0.detach().flatten(1), tol, stop_mode)
    z = z0
    for _ in range(max_iter):
        fz = f(z)
        trace.observe(z, fz)
        z = fz
    _, stats = trace.finish()
    return z, EquilibriumInfo(forward=stats, backward_mode="unrolled")
