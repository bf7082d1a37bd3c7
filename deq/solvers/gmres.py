"""Restarted GMRES(m) for z = f(z), batched per sample: the lean solver for the implicit backward.

The implicit backward's map y -> y J_f(z*) + dl/dz* is affine, so its fixed point solves the linear
system (I - A) y = b, and a Krylov method needs only A-vector products, which the map gives as
differences of its values. GMRES(m) keeps an orthonormal basis V of at most m + 1 state vectors per
sample and restarts when it is full, so its memory is a constant, not a history that grows with the cap
(Broyden keeps two state vectors per iteration; Anderson two per history slot).

Every evaluation is a recorded iterate (one row of the trace, one f call). A cycle starts at a point
x0 with f0 = f(x0) and residual r0 = f0 - x0, v_1 = r0 / ||r0||. Its j-th evaluation is at

    q_j = x_{j-1} + r_{j-1},    x_{j-1} = x0 + V y (the GMRES iterate), r_{j-1} its residual,

a Picard step from the GMRES iterate, so it is a real iterate whose residual ||A r_{j-1}|| is
below the GMRES residual when A is a contraction. With M = I - A, M (q_j - x0) = (q_j - x0) - (f(q_j) - f0),
and q_j - x0 = V c has a component c_j along v_j that is non-zero unless GMRES stagnates; removing
the products M v_i already known (M V_{j-1} = V_j H_{j-1}, Arnoldi's relation) leaves M v_j, which gives the
new column of the Hessenberg matrix H and the next basis vector. The small least-squares problem
min ||beta e1 - H y|| is solved in float64 every step. After m columns the point q_{m+1} is evaluated
and becomes the next cycle's x0: m + 1 evaluations per cycle, as a textbook GMRES(m) (m products and one
true residual per restart).

On an affine map this is exactly GMRES(m). On a nonlinear map the same recurrences use the secant data
of the evaluated iterates: the iterates are those of type-II Anderson acceleration (mixing 1, no ridge)
whose history is emptied every m + 1 evaluations (Walker & Ni, 2011: on a linear map Anderson with a full
history is GMRES followed by a Picard step). It is therefore a valid forward solver too, but it is not
tuned for one (no ridge, no damping); it is meant for the backward, where the map is affine in y.

Robustness. A step along which GMRES learns nothing (c_j = 0: the sample has converged exactly or
stagnates, its values are not finite, or its new direction is so small that normalising it overflows the
state's dtype: a float32 residual near 1e-30) would divide by zero; that sample's column becomes a unit
column on a zero basis vector instead, which leaves its iterate where it is until the cycle restarts,
and keeps H of full rank for every sample. Samples never share an inner product.

Memory, whatever ``max_iter``: the basis (B, m + 1, d) and six state vectors (B, d), the trace's best
iterate, x0, f0, the probe, f of it and its residual (whose buffer then holds the new direction): m + 7
in all, plus f's own temporaries (tests/test_krylov.py measures it). Broyden keeping every pair holds
2 (max_iter - 1) vectors of history alone, Anderson 2 m + 2.
"""

from __future__ import annotations

import torch

from .stats import Function, SolverStats, Trace

# A step whose coefficient along its new basis vector is below this fraction of the step carries no
# new direction for that sample (see the module docstring, "Robustness").
_BREAKDOWN = 1e-10


def gmres(
    f: Function,
    z0: torch.Tensor,
    *,
    tol: float,
    max_iter: int,
    stop_mode: str,
    m: int = 5,  # restart length: Krylov vectors per cycle (the basis holds m + 1 state vectors)
) -> tuple[torch.Tensor, SolverStats]:
    """Restarted GMRES(``m``) from ``z0`` (B, d), meant for an affine ``f`` (on a nonlinear one it is
    restarted Anderson: module docstring); ``max_iter`` caps the calls to f, restarts included.

    Returns the lowest-residual iterate evaluated.

    >>> import torch
    >>> A, b = torch.tensor([[0.5, 0.2], [-0.3, 0.4]], dtype=torch.float64), torch.ones(1, 2, dtype=torch.float64)
    >>> z, stats = gmres(lambda z: z @ A.T + b, torch.zeros(1, 2, dtype=torch.float64), tol=1e-12,
    ...                  max_iter=10, stop_mode="abs", m=2)
    >>> torch.allclose(z, torch.linalg.solve(torch.eye(2, dtype=torch.float64) - A, b[0])), stats.nfe
    (True, 4)
    """
    if isinstance(m, bool) or not isinstance(m, int) or m < 1:
        raise ValueError(f"m must be an integer >= 1 (Krylov vectors per restart), got {m=}")
    trace = Trace("gmres", f, z0, tol, stop_mode)
    B, d = z0.shape
    V = z0.new_empty(B, m + 1, d)  # orthonormal basis of the cycle's Krylov space, per sample
    H = z0.new_zeros(B, m + 1, m, dtype=torch.float64)  # (I - A) V[:, :n] = V[:, :n+1] H[:, :n+1, :n]

    x0 = z0
    f0, g = trace.evaluate(x0)
    n, c, beta = 0, *_start(g, V, H)  # n: columns of H so far; c (B, n+1): the next probe is x0 + V c
    del g  # each step's vectors are freed before the next evaluation: the working set stays small
    for _ in range(max_iter - 1):
        if trace.done():
            break
        q = torch.baddbmm(x0[:, None, :], c.to(z0.dtype)[:, None, :], V[:, :n + 1]).squeeze(1)  # (B, d)
        fq, g = trace.evaluate(q)
        if n == m:  # basis full: restart from this iterate
            x0, f0 = q, fq
            n, c, beta = 0, *_start(g, V, H)
        else:
            _arnoldi_column(V, H, n, c, torch.sub(fq, f0, out=g))  # g is the trace's new buffer: reused
            n += 1
            c = _next_probe(H[:, :n + 1, :n], beta)
        del q, fq, g
    return trace.finish()


def _start(r0: torch.Tensor, V: torch.Tensor, H: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Begin a cycle with residual ``r0`` (B, d): v_1 = r0 / ||r0||; returns (c, beta), c = [beta] (B, 1)."""
    beta = r0.norm(dim=1).double()  # (B,)
    inverse = 1 / beta  # a zero basis vector where it is not finite in r0's dtype (r0 = 0, or near its smallest)
    inverse = torch.where(inverse <= torch.finfo(r0.dtype).max, inverse, 0.0)
    torch.mul(r0, inverse.to(r0.dtype)[:, None], out=V[:, 0])
    H.zero_()
    return beta[:, None], beta


def _arnoldi_column(V: torch.Tensor, H: torch.Tensor, n: int, c: torch.Tensor, df: torch.Tensor) -> None:
    """Fill column ``n`` of H and basis vector ``n + 1`` from df = f(q) - f0 = A (q - x0), q - x0 = V c
    (``df`` (B, d) is overwritten).

    M (q - x0) = V c - df = sum_{i<=n} c_i M v_i; the terms i < n are V H c (Arnoldi), so
    c_n M v_n = V (c - a - H c_{<n}) - w with a = V^T df and w = df - V a (orthogonalised twice).
    """
    basis = V[:, :n + 1]  # (B, n+1, d)
    w = df[:, None, :]  # (B, 1, d), in df's buffer
    a = torch.zeros_like(c)  # (B, n+1) float64
    for _ in range(2):  # classical Gram-Schmidt, twice (CGS2): orthogonal to working precision
        proj = torch.bmm(w, basis.transpose(1, 2))  # (B, 1, n+1): the row-vector form, fast on CPU
        w = w.baddbmm_(proj, basis, alpha=-1)
        a += proj.squeeze(1).double()
    w = w.squeeze(1)  # (B, d)
    w_norm = w.norm(dim=1).double()  # (B,)
    c_n = c[:, n]
    h = (c - a - torch.bmm(H[:, :n + 1, :n], c[:, :n, None]).squeeze(-1)) / c_n[:, None]  # (B, n+1)
    h_next = w_norm / c_n.abs()  # with v_{n+1} = -sign(c_n) w / ||w||
    scale = -torch.sign(c_n) / w_norm  # (B,); beyond the state's dtype for a residual near its smallest numbers
    usable = ((c_n.abs() > _BREAKDOWN * c.norm(dim=1)) & (w_norm > 0) & (scale.abs() <= torch.finfo(V.dtype).max)
              & torch.isfinite(h).all(dim=1) & torch.isfinite(h_next))
    H[:, :n + 1, n] = torch.where(usable[:, None], h, 0.0)
    H[:, n + 1, n] = torch.where(usable, h_next, 1.0)  # breakdown: a unit column on a zero basis vector
    torch.mul(w, torch.where(usable, scale, 0.0).to(V.dtype)[:, None], out=V[:, n + 1])


def _next_probe(H: torch.Tensor, beta: torch.Tensor) -> torch.Tensor:
    """c (B, n+1) of the next probe x0 + V c = x + r: the GMRES iterate x = x0 + V y, with y minimising
    ||beta e1 - H y|| (H (B, n+1, n), full rank), plus its residual r = V (beta e1 - H y)."""
    rhs = torch.zeros(H.shape[:2], dtype=H.dtype, device=H.device)  # (B, n+1)
    rhs[:, 0] = beta
    y = torch.linalg.lstsq(H, rhs[:, :, None], driver="gels").solution  # (B, n, 1)
    residual = rhs - torch.bmm(H, y).squeeze(-1)  # (B, n+1)
    return torch.cat([y.squeeze(-1), torch.zeros_like(beta[:, None])], dim=1) + residual
