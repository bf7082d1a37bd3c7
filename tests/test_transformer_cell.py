"""Properties of the DEQ-Transformer cell (deq/models/transformer.py). Tiny sizes, float64."""

from __future__ import annotations

import math

import pytest
import torch
from torch.nn.utils import parametrize

import deq
from deq.models.transformer import (
    TransformerCell,
    TransformerCellConfig,
    rel_shift,
    relative_position_embedding,
)

B, T, M = 2, 6, 3
D, H, DH, D_INNER = 8, 2, 4, 16


def make_cell(seed: int = 0, **overrides) -> TransformerCell:
    torch.manual_seed(seed)
    kwargs = dict(d_model=D, n_head=H, d_head=DH, d_inner=D_INNER, dropout=0.0, init_std=0.1)
    cell = TransformerCell(TransformerCellConfig(**{**kwargs, **overrides}))
    return cell.double().eval()


def random_memory(cell: TransformerCell, m: int = M) -> tuple[torch.Tensor, torch.Tensor]:
    x_mem = torch.randn(B, m, cell.cfg.embed_width, dtype=torch.float64)
    return torch.randn(B, m, D, dtype=torch.float64), cell.inject(x_mem, None).detach()


def segment(cell: TransformerCell) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randn(B, T, cell.cfg.embed_width, dtype=torch.float64)
    return torch.randn(B, T, D, dtype=torch.float64), x


@pytest.mark.parametrize("with_memory", [False, True])
@pytest.mark.parametrize("pre_lnorm", [False, True])
def test_causal_in_z_and_x(with_memory: bool, pre_lnorm: bool) -> None:
    # A language model's state at t may only see the past: the causal mask (offset by M) must
    # give exactly zero weight to keys after t, so changing z and x there changes nothing before t.
    cell = make_cell(pre_lnorm=pre_lnorm)
    memory = random_memory(cell) if with_memory else None
    z, x = segment(cell)
    out = cell(z, cell.inject(x, memory), memory)
    for t in range(T):
        z2, x2 = z.clone(), x.clone()
        z2[:, t:] += torch.randn_like(z2[:, t:])
        x2[:, t:] += torch.randn_like(x2[:, t:])
        out2 = cell(z2, cell.inject(x2, memory), memory)
        torch.testing.assert_close(out2[:, :t], out[:, :t], rtol=0, atol=1e-12)
        assert not torch.allclose(out2[:, t:], out[:, t:])  # the perturbation does reach t


def test_output_depends_on_memory_states() -> None:
    # Every query attends to the whole memory, so the previous segment's states must matter.
    cell = make_cell()
    z_mem, u_mem = random_memory(cell)
    z, x = segment(cell)
    u = cell.inject(x, None)
    out = cell(z, u, (z_mem, u_mem))
    out2 = cell(z, u, (z_mem + torch.randn_like(z_mem), u_mem))
    assert (out2 - out).abs().amax(dim=-1).gt(1e-6).all()  # at every position


@pytest.mark.parametrize("m, mem_len, expected", [(0, 4, 4), (0, 10, T), (M, 8, 8), (M, 20, M + T), (M, 0, 0)])
def test_next_memory_is_detached_and_has_mem_len_rows(m: int, mem_len: int, expected: int) -> None:
    # The memory is carried across segments without backprop (Transformer-XL), so it must hold
    # no graph; it keeps the last mem_len rows, fewer while the stream is still shorter than that.
    cell = make_cell()
    memory = random_memory(cell, m) if m else None
    z, x = segment(cell)
    z.requires_grad_(True)
    u = cell.inject(x, memory)
    z_mem, u_mem = cell.next_memory(z, u, x, memory, mem_len)
    assert z_mem.grad_fn is None and u_mem.grad_fn is None
    assert z_mem.shape == (B, expected, D) and u_mem.shape == (B, expected, 3 * H * DH)
    if expected:
        z_all = z if memory is None else torch.cat([memory[0], z], dim=1)
        torch.testing.assert_close(z_mem, z_all[:, -expected:].detach(), rtol=0, atol=0)
        torch.testing.assert_close(u_mem[:, -1], u[:, -1].detach(), rtol=0, atol=0)


def test_rel_shift_puts_distance_i_plus_m_minus_j_in_column_j() -> None:
    # Transformer-XL's zero-pad trick must line up, for query i (absolute position i + M) and
    # key j, the position row of distance i + M - j; a one-off error silently breaks the model.
    torch.manual_seed(0)
    t, m, h, dh = 4, 3, 2, 5
    k = t + m
    q = torch.randn(1, h, t, dh, dtype=torch.float64)
    r = torch.randn(h, k, dh, dtype=torch.float64)  # row p holds distance k-1-p
    r_r_bias = torch.randn(h, dh, dtype=torch.float64)
    bd = rel_shift((q + r_r_bias[:, None]) @ r.transpose(-1, -2))  # (1, h, t, k)
    for i in range(t):
        for j in range(i + m + 1):  # the unmasked keys
            p = (k - 1) - (i + m - j)
            direct = ((q[0, :, i] + r_r_bias) * r[:, p]).sum(-1)  # (h,)
            torch.testing.assert_close(bd[0, :, i, j], direct, rtol=0, atol=1e-12)


def test_attention_matches_a_direct_per_query_computation_with_memory() -> None:
    # The batched attention (rel_shift, mask offset by M, queries from the last T rows) must equal
    # the textbook formula written one query at a time: query i sits at absolute position i + M
    # and sees keys j <= i + M with score (q_i + r_w).k_j + (q_i + r_r).r_{i+M-j}, over sqrt(Dh).
    cell = make_cell()
    attn = cell.attn
    z_mem, u_mem = random_memory(cell)
    z, x = segment(cell)
    h, u = torch.cat([z_mem, z], dim=1), torch.cat([u_mem, cell.inject(x, None)], dim=1)
    out = attn(h, u, T)  # (B, T, D)

    q, k, v = (t.view(B, M + T, H, DH) for t in (attn.qkv_net(h) + u).chunk(3, dim=-1))
    freqs = 1 / 10000 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    for i in range(T):
        keys = range(i + M + 1)
        dist = torch.tensor([i + M - j for j in keys], dtype=torch.float64)[:, None] * freqs
        r = attn.r_net(torch.cat([dist.sin(), dist.cos()], dim=-1)).view(len(keys), H, DH)
        qi = q[:, M + i]  # (B, H, DH)
        score = ((qi + attn.r_w_bias)[:, None] * k[:, :len(keys)]).sum(-1)  # (B, keys, H)
        score = score + ((qi + attn.r_r_bias)[:, None] * r).sum(-1)
        weights = (score / math.sqrt(DH)).softmax(dim=1)  # (B, keys, H)
        y = (weights[..., None] * v[:, :len(keys)]).sum(1).reshape(B, H * DH)
        torch.testing.assert_close(out[:, i], attn.o_net(y), rtol=0, atol=1e-12)


def test_position_embedding_row_p_is_distance_klen_minus_1_minus_p() -> None:
    # rel_shift relies on this order (pos_seq = klen-1, ..., 0, as Transformer-XL).
    emb = relative_position_embedding(5, 6, torch.float64, torch.device("cpu"))
    freqs = 1 / 10000 ** (torch.arange(0, 6, 2, dtype=torch.float64) / 6)
    for p in range(5):
        dist = 4 - p
        torch.testing.assert_close(emb[p], torch.cat([(dist * freqs).sin(), (dist * freqs).cos()]))


def test_variational_dropout_is_one_mask_per_reset() -> None:
    # The solver needs f to be one fixed function during a step: the same mask on every call,
    # a new mask only after reset_dropout; eval mode has no dropout at all.
    cell = make_cell(dropout=0.5).train()
    z, x = segment(cell)
    u = cell.inject(x, None)
    with pytest.raises(RuntimeError, match="reset"):
        cell(z, u, None)
    cell.reset_dropout(z)
    first = cell(z, u, None)
    torch.testing.assert_close(cell(z, u, None), first, rtol=0, atol=0)
    cell.reset_dropout(z)
    assert not torch.allclose(cell(z, u, None), first)

    cell.eval()
    cell.reset_dropout(z)
    out = cell(z, u, None)
    torch.testing.assert_close(cell(z, u, None), out, rtol=0, atol=0)
    torch.testing.assert_close(out, make_cell(dropout=0.0)(z, u, None), rtol=0, atol=0)  # same seed


def test_weight_norm_parametrizes_the_linears_inside_f() -> None:
    # The paper puts weight normalisation on the cell's linear maps (g and v, here original0/1);
    # the injection linear, outside f, stays plain.
    names = {n for n, _ in make_cell(weight_norm=True).named_parameters()}
    for layer in ("attn.qkv_net", "attn.r_net", "attn.o_net", "ff.fc", "ff.proj"):
        assert f"{layer}.parametrizations.weight.original0" in names  # g
        assert f"{layer}.parametrizations.weight.original1" in names  # v
    assert "inject_net.weight" in names
    plain = {n for n, _ in make_cell(weight_norm=False).named_parameters()}
    assert not any("parametrizations" in n for n in plain)


def test_cached_weight_norm_gives_identical_outputs() -> None:
    # Drivers compute w = g v / ||v|| once per call under parametrize.cached(); that is an
    # optimisation and must not change f.
    cell = make_cell(weight_norm=True)
    z, x = segment(cell)
    memory = random_memory(cell)
    u = cell.inject(x, memory)
    with parametrize.cached():
        cached = cell(z, u, memory)
    torch.testing.assert_close(cached, cell(z, u, memory), rtol=0, atol=0)


def test_post_ln_output_is_normalised_per_position() -> None:
    # The paper's cell ends in LayerNorm without affine, so every position has mean 0, variance 1.
    cell = make_cell()
    z, x = segment(cell)
    memory = random_memory(cell)
    out = cell(z, cell.inject(x, memory), memory)
    torch.testing.assert_close(out.mean(-1), torch.zeros(B, T, dtype=torch.float64), rtol=0, atol=1e-12)
    torch.testing.assert_close(out.var(-1, unbiased=False), torch.ones(B, T, dtype=torch.float64),
                               rtol=0, atol=1e-3)  # LayerNorm's eps = 1e-5 shrinks it slightly


def test_shapes_with_a_separate_embedding_width() -> None:
    # d_embed != d_model: inject maps (B, T, d_embed) to the QKV width; z0 is zeros like the injection.
    cell = make_cell(d_embed=5)
    x = torch.randn(B, T, 5, dtype=torch.float64)
    u = cell.inject(x, None)
    assert u.shape == (B, T, 3 * H * DH)
    z0 = cell.init_state(u)
    assert z0.shape == (B, T, D) and z0.dtype == u.dtype and not z0.any()
    assert cell(z0, u, None).shape == (B, T, D) and cell.readout(z0) is z0
    assert cell.d_state == cell.d_out == D


@pytest.mark.parametrize("field, value", [("d_model", 0), ("n_head", -1), ("d_head", 2.5),
                                          ("d_inner", 0), ("dropout", 1.0), ("dropout", -0.1),
                                          ("d_embed", 0), ("init_std", 0.0)])
def test_config_rejects_bad_values_by_name(field: str, value) -> None:
    # A bad config must fail at construction with a message naming the field and the value.
    kwargs = dict(d_model=D, n_head=H, d_head=DH, d_inner=D_INNER, dropout=0.1)
    with pytest.raises(ValueError, match=f"{field}={value!r}"):
        TransformerCellConfig(**{**kwargs, field: value})


@pytest.mark.parametrize("with_memory", [False, True])
def test_broyden_finds_the_fixed_point_at_official_init_pre_ln(with_memory: bool) -> None:
    # DEQ smoke check at the official init (inject and attention biases N(0, 0.01), the weight-normed maps
    # torch's default): Broyden reaches ||f(z)-z||/||f(z)|| < 1e-6.
    # Pre-LN is used here because at that init the post-LN cell is not solvable to 1e-6 in 100
    # steps (see the next test); pre-LN converges in <= 30 Broyden steps over seeds 0..9.
    cell = make_cell(init_std=0.01, pre_lnorm=True)
    memory = random_memory(cell) if with_memory else None
    _, x = segment(cell)
    u = cell.inject(x, memory)
    z_star, stats = deq.solve(lambda z: cell(z, u, memory), cell.init_state(u), solver="broyden",
                              tol=1e-6, max_iter=100, stop_mode="rel")
    assert stats.converged.all(), stats.rel_residual
    residual = (cell(z_star, u, memory) - z_star).norm() / z_star.norm()
    assert residual < 1e-5


def test_post_ln_at_small_init_is_near_the_projection_onto_the_sphere() -> None:
    # With N(0, 0.01) weights (no weight norm: with it the maps keep torch's larger default init, as in
    # the official code) the attention and FF outputs are tiny, so post-LN f(z) ~ LN(z): every
    # normalised z is almost a fixed point and J_f ~ I on that sphere. f is then no contraction,
    # which is why the fixed-point smoke check above uses pre-LN.
    cell = make_cell(init_std=0.01, weight_norm=False)
    z, x = segment(cell)
    z = torch.nn.functional.layer_norm(z, (D,))
    fz = cell(z, cell.inject(x, None), None)
    assert (fz - z).norm() / fz.norm() < 0.05


# ---- the paper-time official cell (locuslab/deq v1, DEQModel/models/transformers/deq_transformer.py) ----

def test_dropout_sites_and_mask_shapes_are_the_official_ones():
    # v1 drops after the attention's o_net and after ff2 (one mask per sample and channel), after the
    # ReLU (drop1: per sample and d_inner channel), and on the sinusoids before r_net (one mask per
    # channel for the whole batch). A missing site or a per-position mask changes the regulariser.
    cell = make_cell(dropout=0.5).train()
    z = torch.randn(B, T, D, dtype=torch.float64)
    cell.reset_dropout(z)
    assert cell.drop_attn.mask.shape == cell.drop_ff.mask.shape == (B, 1, D)
    assert cell.ff.drop_inner.mask.shape == (B, 1, D_INNER)
    assert cell.attn.drop_pos.mask.shape == (1, 1, D)
    seen = {}
    for name in ("drop_inner", "drop_pos"):
        module = getattr(cell.ff if name == "drop_inner" else cell.attn, name)
        module.register_forward_hook(lambda m, args, out, name=name: seen.__setitem__(name, args[0].shape))
    u = cell.inject(torch.randn(B, T, D, dtype=torch.float64), None)
    cell(z, u, None)
    assert seen == {"drop_inner": (B, T, D_INNER), "drop_pos": (1, T, D)}  # after the ReLU; the sinusoids
    x = torch.randn(B, T, D_INNER, dtype=torch.float64)
    assert torch.equal(cell.ff.drop_inner(x) == 0, (cell.ff.drop_inner.mask == 0).expand_as(x))


def test_initialisation_is_what_the_official_script_ends_up_with():
    # v1's weights_init writes N(0, 0.01) into each Conv1d's weight, but for the weight-normed maps of f
    # that is the computed weight, recomputed from the untouched v and g before the first forward: they
    # keep torch's default, U(+-1/sqrt(fan_in)) (std 0.0218 at fan_in 700). Biases are zero, inject and
    # the attention biases N(0, 0.01), and o_net has a bias.
    torch.manual_seed(0)
    cell = TransformerCell(TransformerCellConfig(d_model=700, n_head=10, d_head=70, d_inner=2000, dropout=0.0))
    for lin, fan_in in ((cell.attn.qkv_net, 700), (cell.attn.o_net, 700), (cell.ff.fc, 700), (cell.ff.proj, 2000)):
        w = lin.weight.detach()
        assert w.abs().max() <= 1 / math.sqrt(fan_in)
        assert w.std().item() == pytest.approx(1 / math.sqrt(3 * fan_in), rel=0.02)
    assert cell.attn.o_net.bias is not None and not cell.attn.o_net.bias.any()
    assert not cell.ff.fc.bias.any() and not cell.ff.proj.bias.any()
    for w in (cell.inject_net.weight, cell.attn.r_w_bias, cell.attn.r_r_bias):
        assert w.detach().std().item() == pytest.approx(0.01, rel=0.1)
    plain = TransformerCell(TransformerCellConfig(d_model=64, n_head=2, d_head=32, d_inner=64, dropout=0.0,
                                                  weight_norm=False))
    assert plain.ff.fc.weight.detach().std().item() == pytest.approx(0.01, rel=0.1)  # no weight norm: N(0, std)
