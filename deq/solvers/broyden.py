"""Limited-memory ("good") Broyden's method on g(z) = f(z) - z, as in the DEQ paper.

Per sample, the inverse-Jacobian estimate is B = -I + sum_j u_j v_j^T (it starts at -I, the inverse
Jacobian of g when f is constant). A step moves to z_new = z - alpha B g(z), and the
Sherman-Morrison form of Broyden's update with dz = z_new - z, dg = g_new - g is

    v = B^T dz,   u = (dz - B dg) / (v . dg),   B <- B + u v^T.

Cost per iteration: the naive form needs three low-rank products (B^T dz, B dg, and B g_new for
the next step). Writing B dg = B g_new - B g and B_new g_new = B g_new + u (v . g_new) leaves two,
B g_new and B^T dz, plus O(d) work, which is what keeps Broyden's overhead near Anderson's.

With ``m`` < ``max_iter`` only the newest ``m`` pairs (u_j, v_j) are kept (a ring buffer; the
oldest term is dropped), which bounds the solver's memory at 2 m d numbers per sample. By default
every pair is kept, as in the DEQ paper's code (locuslab/deq v1 ``DEQModel/modules/broyden.py``, and v2
``lib/solvers.py``), which preallocates ``threshold`` slots for U and V^T and evaluates g
``threshold + 1`` times: the official ``threshold = t`` is ``max_iter = t + 1`` here, with the same
``t`` slots allocated.
"""

from __future__ import annotations

import torch

from .stats import Function, SolverStats, Trace


def broyden(
    f: Function,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    stop_mode: str,
    m: int | None = None,
    line_search: bool = False,
    ls_max_steps: int = 4,
) -> tuple[torch.Tensor, SolverStats]:
    """Broyden's method from ``z0`` (B, d) keeping the newest ``m`` low-rank pairs per sample (default:
    all; never more than ``max_iter - 1`` slots, the official solver's ``threshold``).

    ``line_search=True`` backtracks (halving, at most ``ls_max_steps`` times) until
    ||g||^2 decreases by the Armijo factor (1 - 1e-4 alpha); its trial evaluations count in nfe.
    Returns the lowest-residual iterate seen.
    """
    trace = Trace("broyden", f, z0, tol, stop_mode)
    B, d = z0.shape
    m = max(1, max_iter - 1 if m is None else min(m, max_iter - 1))
    U = z0.new_empty(B, m, d)  # u_j: the low-rank terms of B = -I + U^T V (slots filled as used)
    V = z0.new_empty(B, m, d)  # v_j

    z = z0
    _, g = trace.evaluate(z)
    Bg = -g  # B g with B = -I
    for k in range(max_iter - 1):
        if trace.done():
            break
        n = min(k, m)  # pairs stored so far
        step = -Bg
        if line_search:
            z_new, fz_new = _backtrack(trace, z, g, step, ls_max_steps)
            g_new = trace.record(z_new, fz_new)
        else:
            z_new = z + step
            _, g_new = trace.evaluate(z_new)
        if k == max_iter - 2:
            break  # the last evaluation is spent; no need for another update

        dz = step if not line_search else z_new - z
        dg = g_new - g
        Bg_new = _matvec(U[:, :n], V[:, :n], g_new)  # B g_new
        Bdg = Bg_new - Bg
        v = _rmatvec(U[:, :n], V[:, :n], dz)  # B^T dz
        denom = (v * dg).sum(dim=1, keepdim=True)  # (B, 1)
        u = (dz - Bdg) / denom
        usable = torch.isfinite(u).all(dim=1, keepdim=True) & (denom.abs() > 0)
        u, v = torch.where(usable, u, 0.0), torch.where(usable, v, 0.0)

        slot = k % m
        if k >= m:  # drop the oldest pair: remove its part of B g_new
            Bg_new = Bg_new - U[:, slot] * (V[:, slot] * g_new).sum(dim=1, keepdim=True)
        U[:, slot], V[:, slot] = u, v
        Bg = Bg_new + u * (v * g_new).sum(dim=1, keepdim=True)
        z, g = z_new, g_new
    return trace.finish()


def _matvec(U: torch.Tensor, V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(-I + U^T V) x for U, V (B, n, d) and x (B, d).

    Written with row vectors, (1, d) @ (d, n) and (1, n) @ (n, d): on CPU these batched GEMV shapes
    run several times faster than the column forms (n, d) @ (d, 1) and (d, n) @ (n, 1).
    """
    if U.shape[1] == 0:
        return -x
    coeff = torch.bmm(x[:, None, :], V.transpose(1, 2))  # (B, 1, n): v_j . x
    return torch.baddbmm(-x[:, None, :], coeff, U).squeeze(1)  # -x + sum_j coeff_j u_j


def _rmatvec(U: torch.Tensor, V: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(-I + U^T V)^T x = (-I + V^T U) x."""
    return _matvec(V, U, x)


def _backtrack(
    trace: Trace, z: torch.Tensor, g: torch.Tensor, step: torch.Tensor, max_steps: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample backtracking: halve alpha until ||g(z + alpha step)||^2 <= (1 - 1e-4 alpha) ||g(z)||^2.

    A sample that never meets the test takes its last (smallest) trial. Returns (z_new, f(z_new)).
    """
    g_norm2 = (g * g).sum(dim=1)
    alpha = torch.ones_like(g_norm2)
    accepted = torch.zeros_like(g_norm2, dtype=torch.bool)
    z_new, fz_new = z, z
    for trial in range(max_steps + 1):
        z_try = z + alpha[:, None] * step
        fz_try = trace.call(z_try)
        decrease = ((fz_try - z_try) ** 2).sum(dim=1) <= (1 - 1e-4 * alpha) * g_norm2
        take = ~accepted & (decrease | (trial == max_steps))
        z_new = torch.where(take[:, None], z_try, z_new)
        fz_new = torch.where(take[:, None], fz_try, fz_new)
        accepted |= take
        if bool(accepted.all()):
            break
        alpha = torch.where(accepted, alpha, alpha / 2)
    return z_new, fz_new
