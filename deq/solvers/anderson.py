"""Type-II Anderson acceleration (Walker & Ni, 2011) for z = f(z), batched per sample.

The difference form. With residuals g_i = f(x_i) - x_i and the last n <= m differences
dX_i = x_{i+1} - x_i and dG_i = g_{i+1} - g_i, each step solves, per sample, the ridge problem

    gamma = argmin || g_k - dG gamma ||^2 + lam_eff ||gamma||^2,

and moves to x_{k+1} = x_k + beta g_k - (dX + beta dG)^T gamma. This is algebraically the same as the
bordered-system form (minimise ||sum alpha_i g_i|| with sum alpha_i = 1), but its normal matrix
dG dG^T is far better conditioned: when convergence is slow the raw residuals g_i are nearly
parallel and their Gram matrix is close to rank one, which in float32 stalls the iteration.

Robustness (v2's ``lib/solvers.py`` solves the bordered system with an absolute ridge by ``torch.solve``,
which raises on a singular system, possible with lam = 0; v1 has no Anderson):
- the ridge is relative, lam_eff = lam * mean(diag(dG dG^T)), so it means the same at every residual
  scale instead of swamping the problem once residuals are small;
- the small n x n system is solved in float64 with ``torch.linalg.solve_ex``, which reports
  singular systems instead of raising;
- a sample whose system is singular or whose coefficients are not finite takes a damped Picard
  step instead (gamma = 0), so the solve always continues.

Cost per step beyond f: one pass over dG for the new row of dG dG^T and the right-hand side dG g_k,
and one pass over dS = dX + beta dG (stored instead of dX, since beta is fixed) for the new iterate.
"""

from __future__ import annotations

import torch

from .stats import Function, SolverStats, Trace


def anderson(
    f: Function,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    stop_mode: str,
    m: int = 6,  # history size of the DEQ v2 code
    lam: float = 1e-4,
    beta: float = 1.0,
) -> tuple[torch.Tensor, SolverStats]:
    """Anderson acceleration from ``z0`` (B, d) with history ``m``, relative ridge ``lam``, mixing ``beta``.

    Returns the lowest-residual iterate seen.
    """
    trace = Trace("anderson", f, z0, tol, stop_mode)
    B, d = z0.shape
    dG = z0.new_empty(B, m, d)  # ring buffer of residual differences g_{i+1} - g_i
    dS = z0.new_empty(B, m, d)  # ring buffer of step differences dX_i + beta dG_i
    probe = z0.new_empty(B, 2, d)  # [newest dG; g_k], reused every step
    gram = torch.zeros(B, m, m, dtype=torch.float64, device=z0.device)  # dG dG^T

    x, x_prev, g_prev = z0, None, None
    for k in range(max_iter):
        _, g = trace.evaluate(x)
        if trace.done() or k == max_iter - 1:
            break
        if g_prev is None:  # no history yet: a plain damped step
            x, x_prev, g_prev = torch.add(x, g, alpha=beta), x, g
            continue
        slot, n = (k - 1) % m, min(k, m)
        torch.sub(g, g_prev, out=probe[:, 0])
        dG[:, slot] = probe[:, 0]
        torch.sub(x, x_prev, out=dS[:, slot]).add_(probe[:, 0], alpha=beta)
        probe[:, 1] = g
        # One pass over dG gives the new row of dG dG^T and the right-hand side dG g_k. The
        # row-vector shape (2, d) @ (d, n) is the fast one for batched GEMV on CPU.
        row, rhs = torch.bmm(probe, dG[:, :n].transpose(1, 2)).double().unbind(dim=1)  # (B, n) each
        gram[:, slot, :n], gram[:, :n, slot] = row, row
        gamma = _ridge_solve(gram[:, :n, :n], rhs, lam).to(z0.dtype)[:, None, :]  # (B, 1, n)
        # x_{k+1} = x_k + beta g_k - gamma (dX + beta dG), one new buffer, one pass over dS
        x_new = torch.add(x, g, alpha=beta)[:, None, :].baddbmm_(gamma, dS[:, :n], alpha=-1)
        x, x_prev, g_prev = x_new.squeeze(1), x, g
    return trace.finish()


def _ridge_solve(gram: torch.Tensor, rhs: torch.Tensor, lam: float) -> torch.Tensor:
    """gamma (B, n) solving (gram + lam_eff I) gamma = rhs in float64; 0 where that fails."""
    system = gram.clone()
    diagonal = system.diagonal(dim1=1, dim2=2)
    diagonal.add_(lam * diagonal.mean(dim=1, keepdim=True))  # relative ridge
    gamma, info = torch.linalg.solve_ex(system, rhs)
    failed = (info != 0) | ~torch.isfinite(gamma).all(dim=1)
    return gamma.masked_fill_(failed[:, None], 0.0)
