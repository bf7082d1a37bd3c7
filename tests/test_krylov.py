"""GMRES(m), the lean solver of the implicit backward: exact on affine maps, one independent system per
sample, the shared stop rules and cap, and buffers that do not grow with the cap."""

import pytest
import torch
from test_backward import TIGHT, Cell, grads_of, inputs, rel_err, unrolled_grads

import deq
from deq.engine.memory import AllocatorPeak

F64 = torch.float64


def linear_systems(radii=(0.3, 0.6, 0.9, 0.99), d=12, seed=0):
    """A (B, d, d) and c (B, d) of f_b(z) = A_b z + c_b, a different random (non-normal) A_b per sample with
    spectral norm radii[b], and z* (B, d) from torch.linalg.solve of (I - A_b) z = c_b."""
    g = torch.Generator().manual_seed(seed)
    A = torch.randn(len(radii), d, d, generator=g, dtype=F64)
    A = A / torch.linalg.matrix_norm(A, ord=2)[:, None, None] * torch.tensor(radii, dtype=F64)[:, None, None]
    c = torch.randn(len(radii), d, generator=g, dtype=F64)
    z_star = torch.linalg.solve(torch.eye(d, dtype=F64) - A, c)
    return A, c, z_star


def affine(A, c):
    """z (B, d) -> A_b z_b + c_b per sample, for A (B, d, d) and c (B, d)."""
    return lambda z: torch.einsum("bij,bj->bi", A, z) + c


# ---- exactness on affine maps ----------------------------------------------------------------------


def test_restarted_solve_matches_linalg_solve_per_sample():
    # Four different systems in one batch, from easy (contraction 0.3) to hard (0.99), restarted every
    # 4 evaluations: each sample's answer must be its own system's solution, to the tolerance's precision.
    A, c, z_star = linear_systems()
    f, z0 = affine(A, c), torch.zeros_like(c)
    z, stats = deq.solve(f, z0, solver="gmres", tol=1e-12, max_iter=500, stop_mode="abs", m=3)
    assert bool(stats.converged.all()), stats.summary()
    torch.testing.assert_close(z, z_star, rtol=0, atol=1e-10)


def test_a_full_krylov_space_solves_in_d_plus_two_evaluations():
    # GMRES's defining property: after d products the Krylov space is the whole space and the iterate is
    # exact. One evaluation at z0, d probes, then the exact point: d + 2 evaluations, even at contraction
    # 0.99, where Picard would need thousands. A wrong Hessenberg column breaks this at once.
    d = 8
    A, c, z_star = linear_systems(radii=(0.99, 0.99), d=d, seed=3)
    f, z0 = affine(A, c), torch.zeros_like(c)
    z, stats = deq.solve(f, z0, solver="gmres", tol=1e-10, max_iter=100, stop_mode="abs", m=d)
    assert bool(stats.converged.all()) and stats.nfe <= d + 2, stats.summary()
    torch.testing.assert_close(z, z_star, rtol=0, atol=1e-9)


def test_within_a_cycle_the_iterates_are_full_memory_andersons():
    # Documented equivalence (Walker & Ni, 2011): with the same secant data, type-II Anderson with mixing 1,
    # no ridge and its whole history evaluates the same points as GMRES followed by a Picard step, on any
    # map. On a nonlinear one this pins the claim that GMRES is restarted Anderson there.
    g = torch.Generator().manual_seed(0)
    W = torch.randn(16, 16, generator=g, dtype=F64)
    W = 0.8 * W / torch.linalg.matrix_norm(W, ord=2)
    x = torch.randn(3, 16, generator=g, dtype=F64)
    f = lambda z: torch.tanh(z @ W + x)  # noqa: E731
    run = dict(tol=1e-30, max_iter=7, stop_mode="abs")
    _, ours = deq.solve(f, torch.zeros_like(x), solver="gmres", m=6, **run)  # one cycle: 7 evaluations
    _, anderson = deq.solve(f, torch.zeros_like(x), solver="anderson", m=10, lam=0.0, beta=1.0, **run)
    torch.testing.assert_close(ours.abs_trace, anderson.abs_trace, rtol=1e-9, atol=0)


# ---- one independent system per sample -------------------------------------------------------------


def test_samples_do_not_share_inner_products():
    # Each sample is its own linear system: solved inside a batch it must take the path it takes alone. A
    # batch-wide inner product (or step length) would couple the hard sample (0.99) to the easy ones.
    A, c, _ = linear_systems()
    run = dict(solver="gmres", tol=1e-30, max_iter=40, stop_mode="abs", m=4)
    _, batch = deq.solve(affine(A, c), torch.zeros_like(c), **run)
    for b in range(len(c)):
        _, alone = deq.solve(affine(A[b:b + 1], c[b:b + 1]), torch.zeros_like(c[b:b + 1]), **run)
        n = alone.n_iter  # the easy sample, alone, can reach a residual of exactly 0 and stop early
        torch.testing.assert_close(batch.abs_trace[:n, b], alone.abs_trace[:, 0], rtol=1e-8, atol=1e-14)


def test_a_sample_at_its_fixed_point_stays_there_without_nans():
    # A sample that starts exactly at its fixed point gives GMRES nothing to learn (a zero residual, then
    # zero steps): its Hessenberg column would divide 0 by 0. It must stay put with finite iterates while
    # the other sample solves, and the whole batch must converge.
    A, c, z_star = linear_systems(radii=(0.5, 0.9))
    f, z0 = affine(A, c), torch.zeros_like(c)
    z0[0] = z_star[0]
    z, stats = deq.solve(f, z0, solver="gmres", tol=1e-12, max_iter=200, stop_mode="abs", m=3)
    assert torch.isfinite(stats.abs_trace).all()
    assert bool((stats.abs_trace[:, 0] <= 1e-14).all()) and bool(stats.converged.all())
    torch.testing.assert_close(z, z_star, rtol=0, atol=1e-10)


@pytest.mark.parametrize("scale", [0.0, 1e-30])
def test_a_float32_sample_with_a_vanishing_right_hand_side_neither_fails_nor_touches_the_others(scale):
    # A sample whose loss has (almost) no gradient: in float32 normalising its residual, or a new direction of
    # it, overflows (1 / 1e-30) or divides 0 by 0, and the NaN reached the small least-squares solve, which
    # raised (a trained DEQ-TrellisNet's lean backward did). It must stay finite, and the other samples
    # must take exactly the path they take without it.
    A, c, _ = linear_systems(radii=(0.5, 0.9, 0.7))
    A, c = A.float(), c.float()
    run = dict(solver="gmres", tol=1e-30, max_iter=30, stop_mode="rel", m=2)
    reference, _ = deq.solve(affine(A, c), torch.zeros_like(c), **run)
    c[1] *= scale
    z, stats = deq.solve(affine(A, c), torch.zeros_like(c), **run)
    assert torch.isfinite(z).all() and torch.isfinite(stats.abs_trace).all()
    assert torch.equal(z[[0, 2]], reference[[0, 2]])


# ---- the implicit backward ---------------------------------------------------------------------------


def test_implicit_gradient_with_a_gmres_backward_matches_autograd_through_a_long_unroll():
    # The backward's map y -> y J + dl/dz* is affine in y, GMRES's home ground: its IFT gradient must equal
    # backprop through 200 unrolled steps (at the fixed point to machine precision), for every parameter
    # and the input, with the backward reported converged.
    cell, (x, weight) = Cell(), inputs()
    implicit, info = grads_of(cell, x, weight, solver="anderson", backward_solver="gmres",
                              backward_options={"m": 3}, **TIGHT)
    for g_implicit, g_unrolled in zip(implicit, unrolled_grads(cell, x, weight)):
        assert rel_err(g_implicit, g_unrolled) < 1e-6
    assert info.backward.solver == "gmres" and bool(info.backward.converged.all())


# ---- memory ---------------------------------------------------------------------------------------------


def no_fixed_point(z):
    """f(z) = z + 1 + sin(z) / 2: its residual is at least 1/2 everywhere, so every solve runs to its cap (an
    affine map would not do: GMRES solves 0.999 z + 1 exactly in a few steps)."""
    return z + 1 + 0.5 * torch.sin(z)


def solve_peak(cap: int, m: int, B: int = 4, d: int = 20_000) -> float:
    """Allocator peak of a GMRES solve of :func:`no_fixed_point` from 0 (B, d), in state vectors (B, d)."""
    with AllocatorPeak("cpu") as peak:
        _, stats = deq.solve(no_fixed_point, torch.zeros(B, d), solver="gmres", tol=1e-6, max_iter=cap,
                             stop_mode="abs", m=m)
    assert stats.n_iter == cap  # the solve really ran to its cap
    return peak.bytes / (B * d * 4)


def test_memory_does_not_grow_with_the_cap():
    # The point of a Krylov backward: its buffers are the basis and a fixed working set, so ten times the
    # cap costs nothing (Broyden's full history would add 2 vectors per evaluation, 108 here). Both caps
    # restart at least once (after 1 + m evaluations), so both hold a restarted cycle's x0 and f(x0).
    # Tolerance: 1/20 of a vector, above the (B,) residual rows of the trace and far below one vector.
    at_6, at_60 = solve_peak(6, m=3), solve_peak(60, m=3)
    assert abs(at_60 - at_6) <= 0.05, (at_6, at_60)


def test_each_restart_slot_costs_one_state_vector():
    # The basis holds m + 1 state vectors: between m = 2 and m = 8 the peak grows by exactly 6 vectors
    # (Anderson's history grows by 2 per slot); a second copy of the basis would show as 12.
    small, large = solve_peak(30, m=2), solve_peak(30, m=8)
    assert abs(large - small - 6) <= 0.05, (small, large)


# ---- the shared bookkeeping: stop rules, cap, returned iterate ----------------------------------------


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_stops_at_the_first_evaluation_where_every_sample_meets_tol(stop_mode):
    # Per sample, in the stop mode's metric: the last row is the first one at which every sample's best
    # residual is below tol, so the row before it still has a sample above.
    A, c, _ = linear_systems()
    f, z0 = affine(A, c), torch.zeros_like(c)
    _, stats = deq.solve(f, z0, solver="gmres", tol=1e-7, max_iter=500, stop_mode=stop_mode, m=3)
    best = stats.trace.cummin(dim=0).values
    assert stats.n_iter < 500
    assert bool((best[-1] <= 1e-7).all()) and bool((best[-2] > 1e-7).any())


def test_batch_rms_stops_on_the_whole_batchs_residual():
    # batch_rms: one number for the batch, ||f(z) - z||_F / sqrt(numel), below tol at the last row and
    # only there; the record carries it per sample.
    A, c, _ = linear_systems()
    f, z0 = affine(A, c), torch.zeros_like(c)
    _, stats = deq.solve(f, z0, solver="gmres", tol=1e-7, max_iter=500, stop_mode="batch_rms", m=3)
    rms = stats.batch_trace[:, 0]
    assert rms[-1] < 1e-7 <= rms[:-1].min()
    torch.testing.assert_close(rms, (stats.abs_trace.square().mean(dim=1) / z0[0].numel()).sqrt())


def test_returns_the_lowest_residual_iterate_with_its_recorded_residuals():
    # Restarted GMRES's evaluated points are not monotone in residual; the solve must still return, per
    # sample, the best one, and the record must hold that point's true residuals.
    A, c, _ = linear_systems()
    f, z0 = affine(A, c), torch.zeros_like(c)
    z, stats = deq.solve(f, z0, solver="gmres", tol=1e-30, max_iter=23, stop_mode="rel", m=2)
    assert torch.equal(stats.rel_residual, stats.rel_trace.min(dim=0).values)
    g = f(z) - z  # recomputed at the returned point: the same numbers, to the last few bits
    torch.testing.assert_close(stats.abs_residual, g.norm(dim=1), rtol=1e-12, atol=0)
    torch.testing.assert_close(stats.rel_residual, g.norm(dim=1) / f(z).norm(dim=1), rtol=1e-12, atol=0)


@pytest.mark.parametrize("cap", [1, 2, 4, 5, 17])
def test_max_iter_is_the_number_of_calls_to_f(cap):
    # The cap counts evaluations of f (restarts included, m = 3: 4 per cycle), whatever its remainder by
    # the cycle length; every evaluation is one recorded iterate.
    calls = []

    def f(z):
        calls.append(1)
        return no_fixed_point(z)

    _, stats = deq.solve(f, torch.zeros(2, 5, dtype=F64), solver="gmres", tol=1e-12, max_iter=cap,
                         stop_mode="abs", m=3)
    assert len(calls) == stats.nfe == stats.n_iter == cap


# ---- options ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    ({"m": 0}, "m must be an integer >= 1 (Krylov vectors per restart), got m=0"),
    ({"m": 2.5}, "m must be an integer >= 1 (Krylov vectors per restart), got m=2.5"),
    ({"m": True}, "m must be an integer >= 1 (Krylov vectors per restart), got m=True"),
    ({"lam": 1e-4}, "unknown option(s) ['lam'] for solver 'gmres'; it takes ['m']"),
])
def test_bad_options_raise_naming_the_value_before_any_work(options, message):
    calls = []

    def f(z):
        calls.append(1)
        return z

    with pytest.raises(ValueError) as err:
        deq.solve(f, torch.zeros(2, 3), solver="gmres", **options)
    assert str(err.value) == message and not calls


def test_settings_accept_gmres_as_the_backward_solver():
    # The rows carry a SolverSettings: GMRES and its restart length must pass its checks and reach the
    # backward's arguments.
    settings = deq.SolverSettings(backward_solver="gmres", backward_options={"m": 4})
    assert settings.backward_args() == {"solver": "gmres", "tol": 1e-6, "max_iter": 35, "stop_mode": "rel", "m": 4}
