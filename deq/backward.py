"""Gradients through an equilibrium z* = f(z*): the implicit function theorem and its cheap stand-ins.

Implicit (exact at the fixed point). Differentiating z* = f(z*; theta) gives

    dl/dtheta = y (df/dtheta)(z*),   where   y = y J_f(z*) + dl/dz*,

a fixed-point problem in the row vector y that is solved with the same solver library, using
vector-Jacobian products y -> y J_f(z*) (one ``torch.autograd.grad`` each). The forward pass keeps
one tracked evaluation f(z*) and nothing from the solver iterations, so training memory does not
depend on how many iterations the forward solve took.

:class:`ImplicitGrad` is an identity on that tracked f(z*) whose backward swaps the incoming
gradient dl/dz* for y; autograd then carries y through the graph of f(z*) to every parameter and
input of f. (A ``torch.autograd.Function`` rather than a tensor hook that removes itself, which has
crashed on several torch versions.)

Phantom gradients (Geng et al., 2021) instead unroll k damped steps z <- (1-lam) z + lam f(z) from z*
with ordinary autograd; ``jfb`` (Jacobian-free backprop, Fung et al., 2022) is one undamped step.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from .solvers import SolverStats, solve
from .solvers.stats import Function


class ImplicitGrad(torch.autograd.Function):
    """Identity on ``fz = f(z_star)`` in the forward; in the backward, solves y = y J_f(z*) + grad."""

    @staticmethod
    def forward(ctx, fz: torch.Tensor, z_star: torch.Tensor, solve_backward: Callable) -> torch.Tensor:
        ctx.save_for_backward(fz, z_star)
        ctx.solve_backward = solve_backward
        return fz.view_as(fz)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        fz, z_star = ctx.saved_tensors

        def vjp_plus_grad(y: torch.Tensor) -> torch.Tensor:  # y -> y J_f(z*) + dl/dz*
            (yJ,) = torch.autograd.grad(fz, z_star, y, retain_graph=True)
            return yJ + grad

        return ctx.solve_backward(vjp_plus_grad, grad), None, None


def implicit(
    f: Function,
    z_star: torch.Tensor,
    *,
    solver: str,
    tol: float,
    max_iter: int,
    stop_mode: str,
    on_stats: Callable[[SolverStats], None] | None = None,
    **solver_options,
) -> torch.Tensor:
    """f(z*) with a graph whose backward is the implicit-function-theorem gradient.

    The backward fixed point is solved with ``solver`` under its own ``tol``/``max_iter``, starting
    from y = 0; its :class:`SolverStats` go to ``on_stats`` once the backward has run.
    """
    z_star = z_star.detach().requires_grad_()
    fz = f(z_star)

    def solve_backward(h: Function, grad: torch.Tensor) -> torch.Tensor:
        y, stats = solve(h, torch.zeros_like(grad), solver=solver, tol=tol, max_iter=max_iter,
                         stop_mode=stop_mode, **solver_options)
        if on_stats is not None:
            on_stats(stats)
        return y

    return ImplicitGrad.apply(fz, z_star, solve_backward)


def phantom(f: Function, z_star: torch.Tensor, *, steps: int, damping: float) -> torch.Tensor:
    """``steps`` damped steps z <- (1 - damping) z + damping f(z) from z*, tracked by autograd."""
    z = z_star.detach()
    for _ in range(steps):
        z = torch.lerp(z, f(z), damping)
    return z


def jfb(f: Function, z_star: torch.Tensor) -> torch.Tensor:
    """One tracked step f(z*): the Jacobian-free approximation (y = dl/dz*, J_f ignored)."""
    return f(z_star.detach())
