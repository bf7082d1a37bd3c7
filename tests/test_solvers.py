"""Fixed-point solvers: correctness on known fixed points, robustness, and argument checking."""

import importlib
import math

import pytest
import torch

import deq

SOLVER_NAMES = sorted(deq.SOLVERS)
DOTTIE = 0.7390851332151607  # the unique real solution of z = cos(z)


def linear_problem(radii=(0.2, 0.6, 0.9), shape=(2, 3), seed=0):
    """f_b(z) = A_b z + c_b per sample, A_b with spectral norm radii[b]; z* from torch.linalg.solve."""
    g = torch.Generator().manual_seed(seed)
    d = math.prod(shape)
    A = torch.randn(len(radii), d, d, generator=g, dtype=torch.float64)
    A = A / torch.linalg.matrix_norm(A, ord=2)[:, None, None] * torch.tensor(radii, dtype=torch.float64)[:, None, None]
    c = torch.randn(len(radii), d, generator=g, dtype=torch.float64)
    z_star = torch.linalg.solve(torch.eye(d, dtype=torch.float64) - A, c)

    def f(z):  # z: (B, *shape)
        return (torch.bmm(A, z.reshape(len(radii), d, 1)).squeeze(-1) + c).view(z.shape)

    return f, torch.zeros(len(radii), *shape, dtype=torch.float64), z_star.view(len(radii), *shape)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_linear_fixed_point_matches_linalg_solve(solver):
    # Samples of different difficulty (contraction 0.2 to 0.9) in one batch, with a trailing shape:
    # every sample must reach the tolerance and agree with the direct solve of (I - A) z = c.
    f, z0, z_star = linear_problem()
    z, stats = deq.solve(f, z0, solver=solver, tol=1e-11, max_iter=400, stop_mode="abs")
    assert z.shape == z0.shape
    assert bool(stats.converged.all()), stats.summary()
    assert torch.allclose(z, z_star, rtol=0, atol=1e-9)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_cosine_fixed_point_is_the_dottie_number(solver):
    # z = cos(z) has the single real root 0.739085...; starts spread over [-1, 2] must all land there.
    z0 = torch.linspace(-1, 2, 8, dtype=torch.float64).view(4, 2)
    z, stats = deq.solve(torch.cos, z0, solver=solver, tol=1e-12, max_iter=200, stop_mode="rel")
    assert bool(stats.converged.all())
    assert torch.allclose(z, torch.full_like(z, DOTTIE), rtol=0, atol=1e-10)


def test_all_solvers_agree_on_a_nonlinear_map():
    # Three different algorithms, one fixed point: they must return the same z* (to tolerance).
    torch.manual_seed(0)
    W = torch.randn(16, 16, dtype=torch.float64)
    W = 0.8 * W / torch.linalg.matrix_norm(W, ord=2)
    x = torch.randn(5, 16, dtype=torch.float64)
    results = [deq.solve(lambda z: torch.tanh(z @ W + x), torch.zeros_like(x), solver=s, tol=1e-12,
                         max_iter=300, stop_mode="abs")[0] for s in SOLVER_NAMES]
    for z in results[1:]:
        assert torch.allclose(z, results[0], rtol=0, atol=1e-9)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_stats_record_has_per_sample_traces(solver):
    # The record is what figures and logs are drawn from: traces (n_iter, B), finals (B,), counts.
    f, z0, _ = linear_problem()
    _, stats = deq.solve(f, z0, solver=solver, tol=1e-6, max_iter=50, stop_mode="rel")
    B = z0.shape[0]
    assert stats.abs_trace.shape == stats.rel_trace.shape == (stats.n_iter, B)
    assert stats.abs_residual.shape == stats.rel_residual.shape == stats.converged.shape == (B,)
    assert stats.converged.dtype == torch.bool
    assert 1 <= stats.n_iter <= 50 and stats.nfe >= stats.n_iter
    # The returned iterate is the lowest-residual one seen, per sample.
    assert torch.equal(stats.rel_residual, stats.rel_trace.min(dim=0).values)


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_stops_as_soon_as_every_sample_meets_tol(solver):
    # Early stop is per batch: the solve ends at the first iterate where all samples are below tol,
    # so the row before the last must still have a sample above tol.
    f, z0, _ = linear_problem()
    _, stats = deq.solve(f, z0, solver=solver, tol=1e-6, max_iter=400, stop_mode="abs")
    assert stats.n_iter < 400
    assert bool((stats.abs_trace.cummin(dim=0).values[-1] <= 1e-6).all())
    assert bool((stats.abs_trace.cummin(dim=0).values[-2] > 1e-6).any())


@pytest.mark.parametrize("solver", SOLVER_NAMES)
def test_residuals_follow_stop_mode_definitions(solver):
    # abs = ||f(z) - z|| and rel = abs / ||f(z)||, per sample, for the returned iterate.
    f, z0, _ = linear_problem()
    z, stats = deq.solve(f, z0, solver=solver, tol=1e-3, max_iter=5, stop_mode="abs")
    abs_res = (f(z) - z).flatten(1).norm(dim=1)
    assert torch.allclose(stats.abs_residual, abs_res)
    assert torch.allclose(stats.rel_residual, abs_res / f(z).flatten(1).norm(dim=1))


def test_broyden_line_search_reaches_tol_and_counts_trial_evaluations():
    f, z0, z_star = linear_problem()
    z, stats = deq.solve(f, z0, solver="broyden", tol=1e-11, max_iter=200, stop_mode="abs", line_search=True)
    assert bool(stats.converged.all())
    assert torch.allclose(z, z_star, rtol=0, atol=1e-9)
    assert stats.nfe >= stats.n_iter


def test_limited_memory_broyden_still_converges():
    # Keeping only m=4 low-rank pairs bounds memory; it must still solve a contractive problem.
    f, z0, z_star = linear_problem()
    z, stats = deq.solve(f, z0, solver="broyden", tol=1e-10, max_iter=300, stop_mode="abs", m=4)
    assert bool(stats.converged.all())
    assert torch.allclose(z, z_star, rtol=0, atol=1e-8)


def test_solve_builds_no_graph():
    # deq.solve is the graph-free forward: even with parameters requiring grad, z* carries no graph.
    W = torch.randn(4, 4, requires_grad=True)
    z, _ = deq.solve(lambda z: torch.tanh(0.1 * z @ W), torch.ones(2, 4), solver="broyden")
    assert not z.requires_grad and z.grad_fn is None


# ---- robustness -------------------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.0, 1e-4])
def test_anderson_survives_singular_systems(lam):
    # f(z) = z + b has no fixed point and makes every residual identical, so G G^T is rank one and,
    # without a ridge, the mixing system is exactly singular. v2's solver (lib/solvers.py, torch.solve)
    # raises here at lam = 0; ours must keep going, return finite values and report non-convergence.
    b = torch.ones(3, 10)
    z, stats = deq.solve(lambda z: z + b, torch.zeros(3, 10), solver="anderson", tol=1e-6,
                         max_iter=20, stop_mode="abs", lam=lam)
    assert torch.isfinite(z).all()
    assert not bool(stats.converged.any())
    assert stats.n_iter == 20


def test_anderson_survives_an_ill_conditioned_float32_problem():
    # Eigenvalues spanning 1e-8 .. 0.99 in float32 make the residual Gram matrix nearly singular.
    torch.manual_seed(0)
    Q, _ = torch.linalg.qr(torch.randn(32, 32))
    A = Q @ torch.diag(torch.logspace(-8, math.log10(0.99), 32)) @ Q.T
    c = torch.randn(2, 32)
    z, stats = deq.solve(lambda z: z @ A.T + c, torch.zeros(2, 32), solver="anderson", tol=1e-4,
                         max_iter=200, stop_mode="rel", m=8, lam=0.0)
    assert torch.isfinite(z).all()
    assert bool(stats.converged.all())


def test_already_converged_start_returns_immediately():
    # An exact fixed point as the start: residual 0 on the first evaluation, no solver step needed.
    for solver in SOLVER_NAMES:
        z, stats = deq.solve(lambda z: z, torch.ones(2, 3), solver=solver, tol=1e-6)
        assert stats.n_iter == 1 and torch.equal(z, torch.ones(2, 3))


# ---- argument checking ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"solver": "andersen"}, "unknown solver 'andersen'; choose from ['anderson', 'broyden', 'gmres', 'picard']"),
        ({"stop_mode": "max"}, "unknown stop_mode 'max'; choose from ['abs', 'rel', 'batch_rms']"),
        ({"tol": 0.0}, "tol must be > 0, got tol=0.0"),
        ({"tol": -1e-3}, "tol must be > 0, got tol=-0.001"),
        ({"max_iter": 0}, "max_iter must be an integer >= 1, got max_iter=0"),
        ({"max_iter": 2.5}, "max_iter must be an integer >= 1, got max_iter=2.5"),
        ({"solver": "picard", "m": 5}, "unknown option(s) ['m'] for solver 'picard'; it takes ['beta']"),
    ],
)
def test_bad_arguments_raise_naming_the_value(kwargs, message):
    # A bad setting must fail before any work, naming the bad value and what is allowed.
    calls = []

    def f(z):
        calls.append(1)
        return z

    with pytest.raises(ValueError) as err:
        deq.solve(f, torch.zeros(2, 3), **kwargs)
    assert str(err.value) == message
    assert not calls


# ---- the DEQ paper's code (locuslab/deq v1, DEQModel/modules/broyden.py and deq.py) --------------------

def test_official_threshold_is_max_iter_minus_one():
    # v1 evaluates g once before its loop and once per step, `threshold` steps at most: threshold + 1
    # evaluations. A row copying f_thres into max_iter would solve one step short of the paper's.
    calls = []

    def f(z):
        calls.append(1)
        return z + 1  # no fixed point: runs to the cap

    _, stats = deq.solve(f, torch.zeros(2, 5, dtype=torch.float64), solver="broyden", tol=1e-6,
                         max_iter=31, stop_mode="batch_rms")
    assert len(calls) == stats.nfe == stats.n_iter == 31  # official threshold 30


def test_broyden_keeps_every_pair_and_allocates_the_official_slots(monkeypatch):
    # The official U and V^T have `threshold` = max_iter - 1 slots and no pair is ever dropped; a bound
    # like 27 pairs (locuslab/mdeq's LBFGS_thres, not in locuslab/deq) would change every solve past 27.
    module = importlib.import_module("deq.solvers.broyden")

    shapes = []
    real_empty = torch.Tensor.new_empty

    def recording_empty(self, *size, **kwargs):
        shapes.append(tuple(size))
        return real_empty(self, *size, **kwargs)

    monkeypatch.setattr(torch.Tensor, "new_empty", recording_empty)
    # z -> A z + c with A Gaussian / (2 sqrt(d)) (spectral norm about 1, no LAPACK call): too large a
    # problem to solve in 40 steps, so every pair matters.
    g = torch.Generator().manual_seed(0)
    A = torch.randn(3, 300, 300, generator=g, dtype=torch.float64) / (2 * math.sqrt(300))
    c = torch.randn(3, 300, generator=g, dtype=torch.float64)
    f = lambda z: torch.einsum("bij,bj->bi", A, z) + c  # noqa: E731
    z_all, s_all = module.broyden(f, torch.zeros(3, 300, dtype=torch.float64), tol=1e-30, max_iter=41,
                                  stop_mode="abs")
    assert shapes == [(3, 40, 300), (3, 40, 300)]
    monkeypatch.undo()
    _, s_27 = module.broyden(f, torch.zeros(3, 300, dtype=torch.float64), tol=1e-30, max_iter=41, stop_mode="abs",
                             m=27)
    _, s_40 = module.broyden(f, torch.zeros(3, 300, dtype=torch.float64), tol=1e-30, max_iter=41, stop_mode="abs",
                             m=40)
    assert torch.equal(s_all.abs_trace, s_40.abs_trace)  # every pair kept by default
    assert torch.equal(s_all.abs_trace[:29], s_27.abs_trace[:29])  # the same until pair 28 would be dropped
    assert not torch.allclose(s_all.abs_trace[29:], s_27.abs_trace[29:], rtol=1e-9, atol=0)


def test_batch_rms_is_the_official_whole_batch_rule():
    # v1 stops when ||g||_F over the whole batch < eps = c sqrt(numel), and returns the batch's lowest
    # iterate: one sample far from converged keeps every sample iterating, and a sample that was
    # better earlier is not kept apart from the batch.
    scales = torch.tensor([[1e-9], [1.0]], dtype=torch.float64)
    f = lambda z: 0.5 * z + scales  # noqa: E731  fixed point 2 * scales, residual halves per step
    z, stats = deq.solve(f, torch.zeros(2, 4, dtype=torch.float64), solver="picard", tol=1e-6, max_iter=100,
                         stop_mode="batch_rms")
    g = f(z) - z
    rms = g.norm() / math.sqrt(g.numel())
    assert rms < 1e-6 and stats.converged.all()
    assert stats.n_iter == 21  # 2^-k * sqrt(mean(scales^2)) = 0.71 * 2^-k < 1e-6 first at k = 20
    # The solver's norm of the same residual: equal up to the last bits, which depend on how the CPU's
    # vector units order the sum (exactly equal on an Intel Xeon, one ulp apart on an AMD EPYC).
    torch.testing.assert_close(stats.residual, torch.full((2,), rms.item(), dtype=torch.float64), rtol=1e-13, atol=0)
    assert torch.allclose(stats.trace[:, 0], stats.trace[:, 1])
    # One number for the batch: a sample whose own residual is above tol stops with the batch.
    stuck = lambda z: z + torch.tensor([[0.0], [1.2e-6]], dtype=torch.float64)  # noqa: E731
    rules = {mode: deq.solve(stuck, torch.zeros(2, 4, dtype=torch.float64), solver="picard", tol=1e-6,
                             max_iter=50, stop_mode=mode)[1] for mode in ("batch_rms", "abs")}
    assert rules["batch_rms"].n_iter == 1 and rules["abs"].n_iter == 50


def test_batch_rms_stops_on_official_stagnation():
    # v1 breaks when, after more than 30 steps, the residual is below 3 eps and the last 30 residuals are
    # within a factor 1.3: a solve hovering just above the tolerance stops at step 31, not at the cap.
    f = lambda z: z + 2e-6  # noqa: E731  constant residual 2e-6, between tol and 3 tol
    _, stats = deq.solve(f, torch.zeros(1, 4, dtype=torch.float64), solver="picard", tol=1e-6, max_iter=100,
                         stop_mode="batch_rms")
    assert stats.n_iter == 32 and not stats.converged.any()
    g = lambda z: z + 4e-6  # noqa: E731  above 3 tol: no stagnation exit
    _, stats = deq.solve(g, torch.zeros(1, 4, dtype=torch.float64), solver="picard", tol=1e-6, max_iter=100,
                         stop_mode="batch_rms")
    assert stats.n_iter == 100


def test_a_diverging_solve_runs_to_the_cap_and_returns_its_lowest_iterate():
    # The official Broyden's protective break (stop once the residual exceeds 1e5 L times the first) is
    # not modelled; what makes that harmless is that the solve still returns its lowest iterate.
    f = lambda z: z + 1 + z * z  # noqa: E731  no fixed point; the residual 1 + z^2 is lowest at the start
    z0 = torch.zeros(2, 3, dtype=torch.float64)
    for solver in SOLVER_NAMES:
        z, stats = deq.solve(f, z0, solver=solver, tol=1e-6, max_iter=12, stop_mode="batch_rms")
        assert stats.n_iter == 12 and torch.equal(z, z0), solver


def test_batch_rms_keeps_its_best_iterate_after_a_non_finite_residual():
    # A NaN batch residual must not become the "best" one, or no later iterate could ever improve on it.
    calls = []

    def f(z):
        calls.append(1)
        return torch.full_like(z, math.nan) if len(calls) == 2 else 0.5 * z + 1

    z, stats = deq.solve(f, torch.zeros(2, 3, dtype=torch.float64), solver="picard", tol=1e-9, max_iter=6,
                         stop_mode="batch_rms")
    assert torch.isfinite(stats.residual).all() and stats.residual[0] == stats.trace[0, 0]  # the first iterate


def test_the_settings_know_each_solvers_options():
    # deq.settings checks solver options without importing the solvers (it is torch-free), from its own
    # table; the table must name exactly each solver's keyword options, or a valid option is refused
    # (or a bad one accepted) before the solver is ever reached.
    import inspect

    from deq.settings import SOLVER_OPTIONS

    common = {"f", "z0", "tol", "max_iter", "stop_mode"}
    signatures = {name: tuple(p for p in inspect.signature(fn).parameters if p not in common)
                  for name, fn in deq.SOLVERS.items()}
    assert {name: set(options) for name, options in SOLVER_OPTIONS.items()} == \
        {name: set(options) for name, options in signatures.items()}


def test_solve_equilibrium_and_solver_settings_share_one_set_of_defaults():
    # One definition: a DEQ built with SolverSettings() and a bare deq.equilibrium / deq.solve call solve
    # the same way.
    import inspect

    from deq.settings import DEFAULTS

    for fn in (deq.solve, deq.equilibrium):
        for name, parameter in inspect.signature(fn).parameters.items():
            if parameter.default is not inspect.Parameter.empty and hasattr(DEFAULTS, name):
                default = {} if parameter.default is None else parameter.default  # None: no options
                assert default == getattr(DEFAULTS, name), (fn.__name__, name)
