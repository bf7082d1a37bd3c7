"""The equilibrium layer: implicit gradients, their approximations, and training memory."""

import pytest
import torch

import deq

F64 = torch.float64


class Cell(torch.nn.Module):
    """A contractive cell f(z; x) = tanh(z W^T + x U^T + b), spectral norm of W = 0.5."""

    def __init__(self, d=6, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        W = torch.randn(d, d, generator=g, dtype=F64)
        self.W = torch.nn.Parameter(0.5 * W / torch.linalg.matrix_norm(W, ord=2))
        self.U = torch.nn.Parameter(torch.randn(d, d, generator=g, dtype=F64) / d**0.5)
        self.b = torch.nn.Parameter(0.1 * torch.randn(d, generator=g, dtype=F64))

    def forward(self, z, x):
        return torch.tanh(z @ self.W.T + x @ self.U.T + self.b)


def inputs(B=4, d=6, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, d, generator=g, dtype=F64, requires_grad=True)
    weight = torch.randn(B, d, generator=g, dtype=F64)  # loss = sum(weight * z*)
    return x, weight


TIGHT = dict(tol=1e-13, max_iter=200, backward_tol=1e-13, backward_max_iter=200, stop_mode="abs")


def grads_of(cell, x, weight, **kwargs):
    z, info = deq.equilibrium(lambda z: cell(z, x), torch.zeros_like(x), **kwargs)
    return torch.autograd.grad((weight * z).sum(), [*cell.parameters(), x]), info


def unrolled_grads(cell, x, weight, depth=200):
    return grads_of(cell, x, weight, backward="unrolled", max_iter=depth)[0]


def rel_err(a, b):
    return ((a - b).norm() / b.norm()).item()


@pytest.mark.parametrize("solver, backward_solver", [("broyden", "broyden"), ("anderson", "anderson"),
                                                     ("picard", "broyden")])
def test_implicit_gradient_matches_autograd_through_a_long_unroll(solver, backward_solver):
    # With contraction 0.5, 200 unrolled steps are at the fixed point to machine precision, so
    # backprop through them is the exact gradient at z*; the IFT gradient must equal it, for every
    # parameter and for the input.
    cell, (x, weight) = Cell(), inputs()
    implicit, info = grads_of(cell, x, weight, solver=solver, backward_solver=backward_solver, **TIGHT)
    for g_implicit, g_unrolled in zip(implicit, unrolled_grads(cell, x, weight)):
        assert rel_err(g_implicit, g_unrolled) < 1e-6
    assert bool(info.forward.converged.all()) and bool(info.backward.converged.all())


def test_implicit_gradient_passes_gradcheck():
    # Finite differences of the (tightly solved) forward agree with the analytic implicit backward.
    cell, (x, weight) = Cell(d=4), inputs(B=2, d=4)

    def layer(W, x):
        f = lambda z: torch.tanh(z @ W.T + x @ cell.U.T + cell.b)
        return deq.equilibrium(f, torch.zeros_like(x), solver="broyden", backward_solver="broyden", **TIGHT)[0]

    assert torch.autograd.gradcheck(layer, (cell.W.detach().clone().requires_grad_(), x), atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("backward", ["phantom", "jfb"])
def test_cheap_gradients_are_close_but_not_exact(backward):
    # Phantom/JFB drop or truncate the Neumann series of (I - J)^-1: the direction is right
    # (cosine > 0.9) but the values differ from the exact gradient by far more than solver error.
    cell, (x, weight) = Cell(), inputs()
    exact, _ = grads_of(cell, x, weight, backward="implicit", **TIGHT)
    approx, _ = grads_of(cell, x, weight, backward=backward, tol=1e-13, max_iter=200, stop_mode="abs")
    g_exact, g_approx = torch.cat([g.flatten() for g in exact]), torch.cat([g.flatten() for g in approx])
    assert torch.nn.functional.cosine_similarity(g_exact, g_approx, dim=0) > 0.9
    assert rel_err(g_approx, g_exact) > 1e-3


def test_phantom_converges_to_implicit_with_many_steps():
    # k damped steps from z* sum k terms of the Neumann series; with k large it becomes exact.
    cell, (x, weight) = Cell(), inputs()
    exact, _ = grads_of(cell, x, weight, backward="implicit", **TIGHT)
    approx, _ = grads_of(cell, x, weight, backward="phantom", phantom_steps=300, phantom_damping=0.5,
                         tol=1e-13, max_iter=200, stop_mode="abs")
    for a, e in zip(approx, exact):
        assert rel_err(a, e) < 1e-6


def test_backward_stats_are_reported_after_backward():
    # The backward solve's record reaches the caller through the returned info, without globals.
    cell, (x, weight) = Cell(), inputs()
    z, info = deq.equilibrium(lambda z: cell(z, x), torch.zeros_like(x), solver="anderson",
                              backward_solver="broyden", backward_tol=1e-10, backward_max_iter=50)
    assert info.backward is None
    (weight * z).sum().backward()
    assert info.backward is not None and info.backward.solver == "broyden"
    assert bool(info.backward.converged.all()) and info.backward.tol == 1e-10


def test_no_graph_under_no_grad():
    # Evaluation must not build or keep any graph: nothing is saved for backward.
    cell, (x, _) = Cell(), inputs()
    saved = []
    with torch.no_grad(), torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        for backward in deq.BACKWARDS:
            z, _ = deq.equilibrium(lambda z: cell(z, x), torch.zeros_like(x), backward=backward, max_iter=10)
            assert not z.requires_grad
    assert saved == []


def test_bad_backward_names_raise():
    with pytest.raises(ValueError, match=r"unknown backward 'ift'; choose from \['implicit', 'phantom', 'jfb', 'unrolled'\]"):
        deq.equilibrium(torch.cos, torch.zeros(2, 2), backward="ift")
    with pytest.raises(ValueError, match=r"unknown solver 'newton'"):
        deq.equilibrium(torch.cos, torch.zeros(2, 2), backward_solver="newton")
    with pytest.raises(ValueError, match=r"phantom_damping must be in \(0, 1\], got phantom_damping=1.5"):
        deq.equilibrium(torch.cos, torch.zeros(2, 2), backward="phantom", phantom_damping=1.5)
    with pytest.raises(ValueError, match=r"phantom_steps must be an integer >= 1, got phantom_steps=0"):
        deq.equilibrium(torch.cos, torch.zeros(2, 2), backward="phantom", phantom_steps=0)


# ---- activation memory ------------------------------------------------------------------------


def saved_bytes(backward, max_iter, d=64):
    """Bytes autograd saves for backward during one forward of the layer (an MLP-ish cell)."""
    torch.manual_seed(0)
    lin = torch.nn.Linear(d, d)
    with torch.no_grad():
        lin.weight.mul_(0.95 / torch.linalg.matrix_norm(lin.weight, ord=2))  # slow contraction
    x = torch.randn(8, d)
    total = 0

    def pack(t):
        nonlocal total
        total += t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        z, info = deq.equilibrium(lambda z: torch.tanh(lin(z) + x), torch.zeros_like(x), solver="picard",
                                  tol=1e-30, max_iter=max_iter, backward=backward)
    assert info.forward.n_iter == max_iter  # the forward really ran to the cap
    return total


def test_implicit_memory_does_not_grow_with_max_iter():
    # The forward solve runs without a graph; only one f evaluation is kept, at any depth.
    small, large = saved_bytes("implicit", 10), saved_bytes("implicit", 100)
    assert small > 0
    assert abs(large - small) / small <= 0.05


def test_unrolled_memory_grows_linearly_with_depth():
    # The explicit weight-tied network keeps every layer's activations: each extra layer adds the
    # same number of bytes, and those dominate (4x depth is over 3.5x memory).
    at10, at20, at40 = saved_bytes("unrolled", 10), saved_bytes("unrolled", 20), saved_bytes("unrolled", 40)
    assert (at20 - at10) / 10 == (at40 - at20) / 20 > 0
    assert at40 / at10 > 3.5
