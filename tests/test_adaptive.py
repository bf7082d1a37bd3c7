"""Tied adaptive embedding and softmax."""

import pytest
import torch

from deq.models.adaptive import AdaptiveEmbedding, TiedAdaptiveLogSoftmax


def build(cutoffs=(5, 12), div_val=2, n_token=20, d_embed=8, d_proj=6):
    torch.manual_seed(0)
    emb = AdaptiveEmbedding(n_token, d_embed, d_proj, cutoffs, div_val, init_std=0.3).double()
    return emb, TiedAdaptiveLogSoftmax(emb).double()


@pytest.mark.parametrize("cutoffs, div_val", [((), 1), ((5, 12), 1), ((5, 12), 2)])
def test_log_probabilities_form_a_distribution(cutoffs, div_val):
    # Head and tail clusters must combine into one normalised distribution over the vocabulary.
    _, softmax = build(cutoffs, div_val)
    with torch.no_grad():
        softmax.cluster_bias.normal_()
        for b in softmax.biases:
            b.normal_()
    logp = softmax.log_prob(torch.randn(7, 6, dtype=torch.float64))
    assert logp.shape == (7, 20)
    assert torch.allclose(logp.exp().sum(dim=1), torch.ones(7, dtype=torch.float64))


@pytest.mark.parametrize("cutoffs, div_val", [((), 1), ((5, 12), 2)])
def test_nll_is_minus_the_log_probability_of_the_target(cutoffs, div_val):
    # The fast per-cluster NLL must equal the full distribution's value at every target id.
    _, softmax = build(cutoffs, div_val)
    h = torch.randn(40, 6, dtype=torch.float64)
    target = torch.arange(40) % 20
    expected = -softmax.log_prob(h).gather(1, target[:, None]).squeeze(1)
    assert torch.allclose(softmax(h, target), expected)


def test_output_weights_are_the_input_embeddings():
    # Tying: the softmax adds only biases, cluster logits and (div_val > 1) its own head projection;
    # embedding weights appear once.
    emb, softmax = build()
    model = torch.nn.ModuleDict({"emb": emb, "softmax": softmax})
    own = sum(p.numel() for p in emb.parameters())
    extra = softmax.cluster_weight.numel() + softmax.cluster_bias.numel() + sum(b.numel() for b in softmax.biases)
    extra += softmax.head_proj.numel() if softmax.head_proj is not None else 0
    assert sum(p.numel() for p in model.parameters()) == own + extra


def test_cluster_widths_shrink_by_div_val():
    emb, _ = build(cutoffs=(5, 12), div_val=2, d_embed=8)
    assert [layer.embedding_dim for layer in emb.layers] == [8, 4, 2]


def test_bad_cutoffs_raise():
    with pytest.raises(ValueError, match=r"cutoffs must be increasing and inside \(0, 20\), got cutoffs=\(12, 5\)"):
        AdaptiveEmbedding(20, 8, 8, (12, 5))
    with pytest.raises(ValueError, match="got cutoffs=\\(5, 20\\)"):
        AdaptiveEmbedding(20, 8, 8, (5, 20))


def test_head_cluster_has_its_own_projections_with_div_val_above_one():
    # v1 adaptive_embedding.py gives every cluster a projection when div_val > 1, the head's too even at
    # d_embed == d_proj, and the softmax's head projection is untied (tie_projs[0] is False): 2 d^2
    # parameters the official medium adaptive DEQ-Transformer has (2 x 490,000 at d 700).
    emb = AdaptiveEmbedding(20, 8, 8, (10,), div_val=2)
    softmax = TiedAdaptiveLogSoftmax(emb)
    assert set(emb.projs) == {"0", "1"} and emb.projs["0"].shape == (8, 8)
    assert softmax.head_proj is not None and softmax.head_proj is not emb.projs["0"]
    h = torch.randn(5, 8)
    head = softmax._logits(h, 0)
    assert torch.allclose(head, h @ softmax.head_proj @ emb.layers[0].weight.t() + softmax.biases[0])
    tail = softmax._logits(h, 1)  # tails share the embedding's projection
    assert torch.allclose(tail, h @ emb.projs["1"] @ emb.layers[1].weight.t() + softmax.biases[1])
    plain = AdaptiveEmbedding(20, 8, 8, (10,), div_val=1)
    assert len(plain.projs) == 0 and TiedAdaptiveLogSoftmax(plain).head_proj is None
