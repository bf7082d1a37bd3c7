"""Drivers of the cells: the DEQ, the weight-tied stack and the untied stack, and the language model."""

from dataclasses import replace

import pytest
import torch

import deq
from baselines.drivers import UntiedStackDriver, WeightTiedDriver
from deq.models.cell_configs import TransformerCellConfig, TrellisCellConfig
from deq.models.drivers import DEQDriver
from deq.models.lm import LanguageModel
from deq.models.transformer import TransformerCell
from deq.models.trellis import TrellisCell
from deq.settings import SolverSettings

F64 = torch.float64
D = 8  # embedding width = model width in these tiny tests
TIGHT = SolverSettings(solver="broyden", tol=1e-12, max_iter=200, stop_mode="abs", backward_solver="broyden",
                       backward_tol=1e-12, backward_max_iter=200, eval_solver="broyden", eval_tol=1e-12,
                       eval_max_iter=200)


# At these sizes a random post-LN transformer cell is a contraction only when the injection
# dominates the identity path through LayerNorm, hence its larger init and inputs of scale 10
# (weight norm off, so that init_std reaches every map: with it, the maps keep torch's default init).
def transformer(seed=0, init_std=0.3, dropout=0.0):
    torch.manual_seed(seed)
    return TransformerCell(TransformerCellConfig(d_model=D, n_head=2, d_head=4, d_inner=16, dropout=dropout,
                                                 init_std=init_std, weight_norm=False)).double()


def trellis(seed=0, init_std=0.05, dropout=0.0):
    torch.manual_seed(seed)
    return TrellisCell(TrellisCellConfig(d_embed=D, d_hidden=12, d_out=D, dropout=dropout,
                                         init_std=init_std)).double()


CELLS = {"transformer": transformer, "trellis": trellis}


def drivers(make_cell):
    """Every driver over fresh cells of one family, all with memory length 3."""
    return {
        "deq": DEQDriver(make_cell(), TIGHT, mem_len=3),
        "weight_tied": WeightTiedDriver(make_cell(), n_layer=4, mem_len=3),
        "untied": UntiedStackDriver([make_cell(seed=s) for s in range(3)], mem_len=3),
    }


def embeddings(B=2, T=6, seed=1):
    return 10 * torch.randn(B, T, D, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("family", CELLS)
@pytest.mark.parametrize("with_memory", [False, True])
def test_every_driver_is_causal(family, with_memory):
    # A language model must not see the future: perturbing inputs at positions >= t may not change
    # any output before t. For the DEQ the solver mixes positions within a sample (Anderson/Broyden
    # weights), so earlier outputs move by at most the solver tolerance: hence 1e-12 and atol 1e-9.
    t = 3
    for name, driver in drivers(CELLS[family]).items():
        driver.eval()
        memory = driver(embeddings(seed=5)).memory if with_memory else None
        x = embeddings()
        x_changed = x.clone()
        x_changed[:, t:] += torch.randn_like(x_changed[:, t:])
        with torch.no_grad():
            h, h_changed = driver(x, memory).h, driver(x_changed, memory).h
        assert torch.allclose(h[:, :t], h_changed[:, :t], rtol=0, atol=1e-9), name
        assert not torch.allclose(h[:, t:], h_changed[:, t:]), name


@pytest.mark.parametrize("family", CELLS)
def test_weight_tied_with_one_layer_is_one_cell_application(family):
    cell = CELLS[family]()
    x = embeddings()
    injection = cell.inject(x, None)
    expected = cell.readout(cell(cell.init_state(injection), injection, None))
    assert torch.equal(WeightTiedDriver(cell, n_layer=1).eval()(x).h, expected)


@pytest.mark.parametrize("family", CELLS)
def test_deq_output_is_a_fixed_point_of_its_cell(family):
    # z* = f(z*) to the solver's tolerance: one more application of the cell barely moves it.
    driver = DEQDriver(CELLS[family](), TIGHT).eval()
    x = embeddings()
    with torch.no_grad():
        out = driver(x)
        injection = driver.cell.inject(x, None)
        residual = (driver.cell(out.z, injection, None) - out.z).flatten(1).norm(dim=1)
    assert bool(out.info.forward.converged.all())
    assert residual.max() <= 1e-12
    assert torch.equal(out.h, driver.cell.readout(out.z))


@pytest.mark.parametrize("family", CELLS)
def test_untied_stack_has_n_layer_times_the_cell_parameters(family):
    count = sum(p.numel() for p in CELLS[family]().parameters())
    stack = UntiedStackDriver([CELLS[family](seed=s) for s in range(5)])
    assert sum(p.numel() for p in stack.parameters()) == 5 * count


@pytest.mark.parametrize("family", CELLS)
def test_memory_carries_the_previous_segment_without_a_graph(family):
    # The second segment must see the first through the memory (that is what the memory is for),
    # and the memory must hold no graph, or backprop would reach into earlier segments.
    for name, driver in drivers(CELLS[family]).items():
        first = driver(embeddings(seed=2))  # training mode: graphs are built
        other_first = driver(embeddings(seed=3))
        tensors = first.memory if name != "untied" else [t for layer in first.memory for t in layer]
        assert all(t.grad_fn is None and not t.requires_grad for t in tensors), name
        with torch.no_grad():
            h = driver.eval()(embeddings(seed=4), first.memory).h
            h_other = driver(embeddings(seed=4), other_first.memory).h
        driver.train()
        assert not torch.allclose(h, h_other), name


# ---- the language model ---------------------------------------------------------------------------


def language_model(family, driver_for_cell, n_token=11):
    # Large embeddings (init 3, times sqrt(D)) make the cell contractive enough that plain
    # weight-tied iteration also converges (with init 1 Broyden does, the unroll oscillates).
    cell = CELLS[family]()
    return LanguageModel(n_token, D, D, driver_for_cell(cell), cutoffs=(4,), div_val=2, init_std=3.0).double()


@pytest.mark.parametrize("family", CELLS)
def test_deq_language_model_gradient_matches_a_long_weight_tied_unroll(family):
    # At a contractive initialisation 300 weight-tied layers sit on the fixed point (checked), so autograd
    # through them is the exact gradient of the equilibrium; the DEQ's implicit gradient (one f
    # evaluation kept) must equal it, for every parameter.
    torch.manual_seed(0)
    model = language_model(family, lambda cell: DEQDriver(cell, TIGHT))
    tokens = torch.randint(0, 11, (2, 5))
    targets = torch.randint(0, 11, (2, 5))
    implicit = torch.autograd.grad(model(tokens, targets).loss, list(model.parameters()), allow_unused=True)
    model.set_pretraining(300)  # the same parameters as a weight-tied stack of 300 layers
    out = model(tokens, targets)
    assert out.info.forward.abs_trace[-1].max() < 1e-12
    unrolled = torch.autograd.grad(out.loss, list(model.parameters()), allow_unused=True)
    for (name, _), a, b in zip(model.named_parameters(), implicit, unrolled):
        if b is None:
            continue
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-10), name


@pytest.mark.parametrize("family", CELLS)
def test_pretraining_switch_runs_the_same_parameters_explicitly(family):
    model = language_model(family, lambda cell: DEQDriver(cell, TIGHT))
    tokens = torch.randint(0, 11, (2, 5))
    model.set_pretraining(2)
    out = model(tokens, tokens)
    assert out.info.backward_mode == "unrolled" and out.info.forward.n_iter == 2
    model.set_pretraining(None)
    assert model(tokens, tokens).info.backward_mode == "implicit"


@pytest.mark.parametrize("family", CELLS)
def test_gradient_checkpointing_changes_memory_not_gradients(family):
    # torch.utils.checkpoint recomputes each layer in the backward; with the dropout masks fixed per
    # step the recomputation is exact, so the gradients must be identical to plain backprop.
    x = embeddings()
    grads = []
    for use_checkpoint in (False, True):
        driver = WeightTiedDriver(CELLS[family](dropout=0.2), n_layer=3, checkpoint=use_checkpoint)
        torch.manual_seed(7)  # the same dropout masks in both runs
        loss = driver(x).h.square().sum()
        grads.append(torch.autograd.grad(loss, list(driver.parameters())))
    for a, b in zip(*grads):
        assert torch.allclose(a, b, rtol=1e-12, atol=1e-14)


def test_auxiliary_readouts_every_k_layers():
    # TrellisNet's auxiliary loss reads out intermediate levels: with 7 layers and aux_every=3 those
    # are levels 3 and 6 (the last level is the main output, not an auxiliary one).
    driver = WeightTiedDriver(trellis(), n_layer=7, aux_every=3)
    out = driver(embeddings())
    assert len(out.aux) == 2 and all(a.shape == out.h.shape for a in out.aux)


# ---- subsequences and output dropout as the paper-time official code (locuslab/deq v1) ------------------

def test_subsequences_attend_to_the_previous_subsequence_only():
    # v1 (models/transformers/deq_transformer_forward_backward.py) solves a segment in subsequences: the
    # first against the segment memory, each later one against the previous subsequence's equilibrium
    # and injection alone. Rebuilt here by hand from the cell and the solver.
    cell = transformer()
    driver = DEQDriver(cell, replace(TIGHT, subseq_len=3), mem_len=3).eval()
    memory = driver(embeddings(seed=5)).memory
    x = embeddings(T=8)
    with torch.no_grad():
        out = driver(x, memory)
        u = cell.inject(x, memory)
        solve = lambda f, z0: deq.solve(f, z0, solver="broyden", tol=1e-12, max_iter=200, stop_mode="abs")[0]  # noqa
        zs, mem = [], memory
        for part in (slice(0, 3), slice(3, 6), slice(6, 8)):
            z = solve(lambda z: cell(z, u[:, part], mem), cell.init_state(u[:, part]))
            zs.append(z)
            mem = (z, u[:, part])
    assert torch.allclose(out.z, torch.cat(zs, dim=1), rtol=0, atol=1e-10)
    assert out.info.forward.abs_trace.shape[1] == 3 * x.size(0)  # three solves side by side
    whole = DEQDriver(cell, TIGHT, mem_len=3).eval()
    with torch.no_grad():
        assert not torch.allclose(whole(x, memory).z[:, 3:], out.z[:, 3:], atol=1e-3)  # it does differ


@pytest.mark.parametrize("family", CELLS)
def test_gradients_cross_subsequences(family):
    # In v1 the backward re-evaluates each subsequence against the previous one's tracked f(z*), so a
    # loss on the last subsequence reaches the embeddings of the first. Checked against central
    # differences of the driver's own output (float64, tight solves both ways).
    driver = DEQDriver(CELLS[family](), replace(TIGHT, subseq_len=3), mem_len=3).train()
    x = embeddings(B=1, T=6).requires_grad_()
    weights = torch.randn(1, 3, driver.cell.d_out, dtype=F64, generator=torch.Generator().manual_seed(3))

    def loss(inputs):
        return (driver(inputs).h[:, 3:] * weights).sum()

    (grad,) = torch.autograd.grad(loss(x), x)
    assert grad[:, :3].abs().max() > 1e-6  # the first subsequence is reached
    eps, probe = 1e-6, torch.zeros_like(x)
    for t, c in [(0, 0), (2, 5), (4, 1)]:
        probe.zero_()
        probe[0, t, c] = eps
        with torch.no_grad():
            numeric = (loss(x + probe) - loss(x - probe)) / (2 * eps)
        assert grad[0, t, c].item() == pytest.approx(numeric.item(), rel=1e-5, abs=1e-8)


def test_output_dropout_drops_positions_for_transformers_and_channels_for_trellisnets():
    # v1's VariationalDropout draws its mask from x[:, :1]: on the DEQ-Transformer's (B, d, L) output it
    # drops whole positions, on the DEQ-TrellisNet's (B, L, d) output (and on every embedding) channels.
    from deq.rows.build import build_model
    from deq.rows.configs import get_config

    tokens = torch.randint(0, 100, (2, 8))
    for name, out_mask in (("wt103-deq-transformer-small", (2, 8, 1)), ("ptb-deq-trellisnet", (2, 1, 16))):
        model = build_model(get_config(name, "smoke")).train()
        model.set_pretraining(2)
        model(tokens, tokens)
        assert model.drop_out.mask.shape == out_mask, name
        assert model.drop_embed.mask.shape == (2, 1, model.embedding.d_proj), name
