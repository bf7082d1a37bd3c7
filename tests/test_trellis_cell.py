"""The DEQ-TrellisNet cell: causality, segment memory, gate arithmetic, dropout, weight norm, config."""

import math

import pytest
import torch
from torch.nn.utils import parametrize

import deq
from deq.models.cell_configs import TrellisCellConfig
from deq.models.trellis import TrellisCell

B, T, D_EMBED, D_HIDDEN, D_OUT = 2, 7, 3, 4, 2


def make_cell(seed=0, **overrides):
    torch.manual_seed(seed)
    cfg = dict(d_embed=D_EMBED, d_hidden=D_HIDDEN, d_out=D_OUT, dropout=0.0, init_std=0.5)
    cfg.update(overrides)
    return TrellisCell(TrellisCellConfig(**cfg)).double().eval()


def random_memory(seed=1):
    g = torch.Generator().manual_seed(seed)
    return tuple(torch.randn(B, 1, d, generator=g, dtype=torch.float64) for d in (D_EMBED, D_HIDDEN, D_HIDDEN))


def randn(*shape, seed=2):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("with_memory", [False, True])
def test_f_is_causal_in_x_and_z(with_memory):
    # A language model must not see the future: f(z)_{<t} may depend on x and z only at positions < t
    # (and on the memory), or the equilibrium would leak the next token into its own prediction.
    cell, memory = make_cell(), (random_memory() if with_memory else None)
    x, z = randn(B, T, D_EMBED, seed=3), randn(B, T, 2 * D_HIDDEN, seed=4)
    fz = cell(z, cell.inject(x, memory), memory)
    for t in range(T):
        x2, z2 = x.clone(), z.clone()
        x2[:, t:] += randn(B, T - t, D_EMBED, seed=5 + t)
        z2[:, t:] += randn(B, T - t, 2 * D_HIDDEN, seed=50 + t)
        fz2 = cell(z2, cell.inject(x2, memory), memory)
        assert torch.equal(fz2[:, :t], fz[:, :t])
        assert not torch.allclose(fz2[:, t:], fz[:, t:])  # and it does see position t itself


def weight_tied_states(cell, x, n_steps):
    """z^0 = 0, z^{k+1} = f(z^k) on the whole sequence x (first segment): [z^0, ..., z^n_steps]."""
    u = cell.inject(x, None)
    zs = [cell.init_state(u)]
    for _ in range(n_steps):
        zs.append(cell(zs[-1], u, None))
    return zs


@pytest.mark.parametrize("split", [1, 3, 6])
def test_two_segments_with_memory_equal_one_long_segment(split):
    # Evaluation and training run a stream segment by segment; with the memory carried, cutting the
    # stream must not change the injection nor f at any position (the same function, one long or in
    # pieces), for any state: the zero start and the iterates of a weight-tied stack.
    cell = make_cell()
    x = randn(B, T, D_EMBED, seed=3)
    u = cell.inject(x, None)
    u1 = cell.inject(x[:, :split], None)
    for k, z in enumerate(weight_tied_states(cell, x, n_steps=4)):
        mem = cell.next_memory(z[:, :split], u1, x[:, :split], None, mem_len=T)
        u2 = cell.inject(x[:, split:], mem)
        assert torch.allclose(torch.cat([u1, u2], dim=1), u, rtol=0, atol=1e-12)
        f1 = cell(z[:, :split], u1, None)
        f2 = cell(z[:, split:], u2, mem)
        assert torch.allclose(torch.cat([f1, f2], dim=1), cell(z, u, None), rtol=0, atol=1e-12), k


def test_segment_equilibria_equal_the_long_equilibrium():
    # Consequence of the above at the fixed point: solving segment 1, then segment 2 with memory from
    # z1*, gives the equilibrium of the whole sequence; this is why the DEQ's memory is z* itself.
    cell, split = make_cell(init_std=0.1), 3
    x = randn(B, T, D_EMBED, seed=3)
    kw = dict(solver="broyden", tol=1e-13, max_iter=200, stop_mode="abs")
    u = cell.inject(x, None)
    z_star, stats = deq.solve(lambda z: cell(z, u, None), cell.init_state(u), **kw)
    u1 = cell.inject(x[:, :split], None)
    z1, stats1 = deq.solve(lambda z: cell(z, u1, None), cell.init_state(u1), **kw)
    mem = cell.next_memory(z1, u1, x[:, :split], None, mem_len=T)
    u2 = cell.inject(x[:, split:], mem)
    z2, stats2 = deq.solve(lambda z: cell(z, u2, mem), cell.init_state(u2), **kw)
    assert all(bool(s.converged.all()) for s in (stats, stats1, stats2))
    assert torch.allclose(torch.cat([z1, z2], dim=1), z_star, rtol=0, atol=1e-10)


def test_next_memory_is_the_last_step_detached():
    # Memory crosses segment boundaries; if it kept a graph, backprop would run into (and keep alive)
    # every earlier segment, and memory would grow with the stream length.
    cell = TrellisCell(TrellisCellConfig(d_embed=D_EMBED, d_hidden=D_HIDDEN, d_out=D_OUT, dropout=0.0))
    x = torch.randn(B, T, D_EMBED, requires_grad=True)
    u = cell.inject(x, None)
    z = cell(cell.init_state(u), u, None)
    x_last, h_last, c_last = cell.next_memory(z, u, x, None, mem_len=0)
    for m in (x_last, h_last, c_last):
        assert m.grad_fn is None and not m.requires_grad
    assert torch.equal(x_last, x[:, -1:].detach())
    assert torch.equal(torch.cat([h_last, c_last], dim=-1), z[:, -1:].detach())


def test_one_step_matches_the_lstm_gate_formula_by_hand():
    # Pins the maths (tap order, gate order i, o, g, f, which c is "previous") against scalars worked
    # out by hand, independent of any tensor code: d_embed = d_hidden = 1, T = 2, with memory.
    cell = make_cell(d_embed=1, d_hidden=1, d_out=1, weight_norm=False)
    W = torch.tensor([[0.3, -0.2], [0.1, 0.4], [-0.5, 0.6], [0.2, 0.7]], dtype=torch.float64)  # gate, tap
    b = torch.tensor([0.05, -0.1, 0.2, 0.3], dtype=torch.float64)
    U = torch.tensor([[0.9, -0.3], [-0.4, 0.8], [0.25, 0.5], [-0.6, 0.1]], dtype=torch.float64)
    with torch.no_grad():
        cell.inject_conv.weight.copy_(W[:, None, :])
        cell.inject_conv.bias.copy_(b)
        cell.hidden_conv.weight.copy_(U[:, None, :])
        cell.hidden_conv.bias.zero_()  # the official recurrent bias adds to the injection's b
    xs, hs, cs = [0.7, -1.2, 0.4], [0.3, -0.5, 0.8], [-0.2, 0.6, 1.1]  # index 0 is the memory (t = -1)
    mem = tuple(torch.tensor([[[v[0]]]], dtype=torch.float64) for v in (xs, hs, cs))
    x = torch.tensor(xs[1:], dtype=torch.float64).view(1, 2, 1)
    z = torch.tensor([hs[1:], cs[1:]], dtype=torch.float64).T.reshape(1, 2, 2)  # [h; c] per step
    out = cell(z, cell.inject(x, mem), mem)

    sig = lambda v: 1 / (1 + math.exp(-v))
    for t in (1, 2):
        i, o, g, f = (W[k, 0] * xs[t - 1] + W[k, 1] * xs[t] + b[k] + U[k, 0] * hs[t - 1] + U[k, 1] * hs[t]
                      for k in range(4))
        c = sig(f) * cs[t - 1] + sig(i) * math.tanh(g)
        h = sig(o) * math.tanh(c)
        assert out[0, t - 1, 0].item() == pytest.approx(h, abs=1e-14)
        assert out[0, t - 1, 1].item() == pytest.approx(c, abs=1e-14)


def test_readout_is_the_last_d_out_channels_of_h():
    # The official code decodes Z[:, h_size-nout:h_size]; tied embeddings rely on that slice.
    cell = make_cell()
    z = torch.arange(2 * D_HIDDEN, dtype=torch.float64).expand(B, T, -1)
    assert cell.readout(z).shape == (B, T, D_OUT)
    assert torch.equal(cell.readout(z)[0, 0], torch.arange(D_HIDDEN - D_OUT, D_HIDDEN, dtype=torch.float64))


def test_variational_dropout_one_mask_per_reset():
    # The solver needs f to be one fixed function during a step (same mask on every call); a new step
    # draws a new mask; evaluation is deterministic; forgetting the reset must fail loudly.
    cell = make_cell(dropout=0.5, d_hidden=16).train()
    x, z = randn(B, T, D_EMBED, seed=3), randn(B, T, 32, seed=4)
    u = cell.inject(x, None)
    with pytest.raises(RuntimeError, match="reset"):
        cell(z, u, None)
    cell.reset_dropout(z)
    assert cell.drop.mask.shape == (B, 1, 16)
    first = cell(z, u, None)
    assert torch.equal(cell(z, u, None), first)
    cell.reset_dropout(z)
    assert not torch.equal(cell(z, u, None), first)

    no_dropout = make_cell(dropout=0.0, d_hidden=16)
    no_dropout.load_state_dict(cell.state_dict())
    cell.eval()
    cell.reset_dropout(z)
    assert torch.equal(cell(z, u, None), no_dropout(z, u, None))


@pytest.mark.parametrize("enabled", [True, False])
def test_weight_norm_parametrizes_both_convs(enabled):
    # The paper's cell is weight-normalised on its linear maps; the flag must really switch it.
    cell = make_cell(weight_norm=enabled)
    for conv in (cell.inject_conv, cell.hidden_conv):
        assert parametrize.is_parametrized(conv, "weight") is enabled


@pytest.mark.parametrize("field, value", [
    ("kernel_size", 3), ("d_hidden", 0), ("d_embed", 2.5), ("d_out", 5), ("dropout", 1.0),
    ("dropout", -0.1), ("init_std", 0.0),
])
def test_config_rejects_bad_values_by_name(field, value):
    # A typo in a sweep config must stop the run at construction, saying which field and value.
    cfg = dict(d_embed=D_EMBED, d_hidden=D_HIDDEN, d_out=D_OUT, dropout=0.0)
    cfg[field] = value
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        TrellisCellConfig(**cfg)


def test_deq_solve_converges_at_small_init():
    # The DEQ premise for this cell: at the code's init scale f is contractive enough that Broyden
    # finds z* = f(z*), with or without memory.
    cell = make_cell(init_std=0.01)
    x = randn(B, T, D_EMBED, seed=3)
    for memory in (None, random_memory()):
        u = cell.inject(x, memory)
        z_star, stats = deq.solve(lambda z: cell(z, u, memory), cell.init_state(u), solver="broyden",
                                  tol=1e-6, max_iter=100, stop_mode="rel")
        assert bool(stats.converged.all()), stats.summary()
        fz = cell(z_star, u, memory)
        assert ((fz - z_star).norm() / fz.norm()).item() < 1e-6


def test_initialisation_is_what_the_official_script_ends_up_with():
    # v1 deq_trellisnet.py: the recurrent WeightShareConv1d draws weight and bias from N(0, 0.01); the
    # injection conv keeps torch's default (uniform in +-1/sqrt(fan_in), bias too); weight norm starts
    # at w = v. Both convs have a bias (the recurrent one is counted in the official 174,168,738).
    torch.manual_seed(0)
    cell = TrellisCell(TrellisCellConfig(d_embed=500, d_hidden=400, d_out=100, dropout=0.0))
    hidden, inject = cell.hidden_conv, cell.inject_conv
    assert hidden.weight.detach().std().item() == pytest.approx(0.01, rel=0.05)
    assert hidden.bias.detach().std().item() == pytest.approx(0.01, rel=0.1)
    bound = 1 / math.sqrt(500 * 2)  # fan_in = channels x kernel
    assert inject.weight.detach().abs().max() <= bound and inject.bias.detach().abs().max() <= bound
    assert inject.weight.detach().std().item() == pytest.approx(bound / math.sqrt(3), rel=0.02)
