"""Parallel decoding (Medusa with tree attention, Jacobi) and fewer parameters per token (early exit, contextual
sparsity, mixture of experts): the property that makes each one right."""

from __future__ import annotations

import pytest
import torch
from test_decoding import tiny_decoder

from unveiled.decoding import plain_generate
from unveiled.decoding.early_exit import early_exit_generate, layer_agreement, softmax_response
from unveiled.decoding.jacobi import jacobi_fixed_point, jacobi_generate
from unveiled.decoding.medusa import (
    MEDUSA_CHOICES,
    MedusaTree,
    medusa_generate,
    train_medusa_heads,
    tree_forward,
)
from unveiled.decoding.moe import MoELayer, load_balancing_loss, measure_moe_decode
from unveiled.decoding.sparsity import (
    SparseMLP,
    mlp_contributions,
    oracle_mask,
    sparse_model,
    train_sparsity_predictors,
    union_sparsity,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the cached experiments ran (conftest)



PROMPT = [1, 2, 3, 4, 5, 1, 2, 3, 7, 9]


@pytest.fixture(scope="module")
def model():
    return tiny_decoder(0)


@pytest.fixture(scope="module")
def text():
    return torch.randint(0, 24, (3000,), generator=torch.Generator().manual_seed(5))


@pytest.fixture(scope="module")
def plain(model):
    return plain_generate(model, PROMPT, 40).new_tokens


# ---- Medusa ------------------------------------------------------------------------------------------------


def test_tree_mask_and_depths():
    tree = MedusaTree.from_choices([(0,), (1,), (0, 0), (0, 1), (0, 0, 0)])
    assert tree.parents == (-1, 0, 0, 1, 1, 3) and tree.depth == (0, 1, 1, 2, 2, 3)
    mask = tree.mask
    for i in range(tree.size):  # row i: exactly the root-to-i path
        path, j = set(), i
        while j >= 0:
            path.add(j)
            j = tree.parents[j]
        assert set(torch.nonzero(mask[i]).flatten().tolist()) == path
    with pytest.raises(ValueError, match="no parent"):
        MedusaTree.from_choices([(0, 0)])


def test_tree_attention_equals_causal_forward_per_path(model):
    tree = MedusaTree.from_choices(MEDUSA_CHOICES)
    tokens = torch.randint(0, 24, (tree.size,), generator=torch.Generator().manual_seed(1))
    cache = model.new_cache()
    model(torch.tensor([PROMPT]), cache)
    logits, _kv, _ = tree_forward(model, tokens, tree, cache)
    assert len(cache) == len(PROMPT)  # the tree pass leaves the cache as it was
    for i in range(tree.size):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = tree.parents[j]
        ref = model(torch.tensor([PROMPT + tokens[path[::-1]].tolist()]))[0, -1]
        assert torch.allclose(logits[i], ref, atol=1e-4), i


def test_medusa_greedy_equals_plain_greedy(model, text, plain):
    heads, log = train_medusa_heads(model, text, num_heads=3, steps=30, batch_size=4, seq_len=32, progress=False)
    assert log.loss.iloc[-5:].mean() < log.loss.iloc[:5].mean()  # the heads learn
    res = medusa_generate(model, heads, PROMPT, 40)
    assert res.new_tokens == plain
    assert res.target_passes <= 40


def test_medusa_heads_start_as_the_model_head(model):
    from unveiled.decoding.medusa import MedusaHeads

    heads = MedusaHeads(model, 2)
    hidden = model.norm(model.hidden_states(torch.tensor([PROMPT]))[-1])
    assert torch.allclose(heads(hidden)[0], model.lm_head(hidden), atol=1e-5)


# ---- Jacobi ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("guess", [[0] * 8, list(range(8)), [23, 5, 5, 5, 1, 2, 3, 4]])
def test_jacobi_reaches_the_greedy_fixed_point_within_n_iterations(model, plain, guess):
    fixed, trajectory = jacobi_fixed_point(model, PROMPT, guess)
    assert fixed == plain[:8]
    assert len(trajectory) - 1 <= len(guess) + 1  # n iterations to converge, one more to see it
    for it, y in enumerate(trajectory[1:], start=1):  # after iteration t, at least t leading tokens are right
        assert y[: min(it, 8)] == plain[: min(it, 8)]


@pytest.mark.parametrize("pool", [False, True])
def test_jacobi_decoding_equals_plain_greedy(model, plain, pool):
    res = jacobi_generate(model, PROMPT, 40, block_size=5, pool=pool)
    assert res.new_tokens == plain
    assert res.target_passes <= 40


# ---- early exit --------------------------------------------------------------------------------------------


def test_early_exit_never_exiting_is_the_full_model(model, plain):
    res = early_exit_generate(model, PROMPT, 40, threshold=1.01)
    assert res.new_tokens == plain and res.extra["mean_layers"] == model.config.num_layers


def test_early_exit_always_exiting_uses_min_layers(model, plain):
    res = early_exit_generate(model, PROMPT, 20, threshold=0.0, min_layers=1)
    assert set(res.extra["exit_layers"]) == {1}
    assert res.new_tokens[0] == plain[0]  # the first token comes from the full prefill pass
    # the second token is the shared head on block 1's output, with the prompt's full cache
    cache = model.new_cache()
    model(torch.tensor([PROMPT]), cache)
    x = model.layers[0](model.embed_tokens(torch.tensor([[plain[0]]])), model.rope, torch.tensor([len(PROMPT)]), cache)
    assert res.new_tokens[1] == int(model.head(x)[0, -1].argmax())
    res2 = early_exit_generate(model, PROMPT, 8, threshold=0.0, min_layers=2)
    assert set(res2.extra["exit_layers"]) == {2}


def test_early_exit_layers_do_not_increase_as_threshold_drops(model):
    means = [early_exit_generate(model, PROMPT, 25, threshold=t).extra["mean_layers"] for t in (1.01, 0.9, 0.5, 0.0)]
    assert means == sorted(means, reverse=True)


def test_early_exit_keeps_the_cache_full_shape(model):
    res = early_exit_generate(model, PROMPT, 12, threshold=0.0)
    # continue the text with a plain forward using a cache built the same way: shapes must agree
    assert len(res.new_tokens) == 12
    agreement = layer_agreement(model, torch.randint(0, 24, (256,), generator=torch.Generator().manual_seed(0)),
                                window=64)
    assert agreement.agreement.iloc[-1] == 1.0 and len(agreement) == model.config.num_layers
    assert ((softmax_response(torch.randn(10, 7)) >= 0) & (softmax_response(torch.randn(10, 7)) <= 1)).all()


# ---- contextual sparsity -----------------------------------------------------------------------------------


def test_keeping_every_neuron_is_exact(model):
    x = torch.tensor([PROMPT])
    assert torch.allclose(sparse_model(model, 1.0)(x), model(x), atol=1e-5)


def test_sparse_kernel_equals_masked_dense(model):
    mlp = model.layers[0].mlp
    sp = SparseMLP(mlp, 0.4)
    x = torch.randn(1, 1, model.config.hidden_size)
    a = mlp_contributions(mlp, x)
    ref = mlp.down_proj(a * oracle_mask(a, 0.4))
    assert torch.allclose(sp(x), ref, atol=1e-5)  # gathered rows (decode path)
    xb = torch.randn(2, 3, model.config.hidden_size)
    ab = mlp_contributions(mlp, xb)
    assert torch.allclose(sp(xb), mlp.down_proj(ab * oracle_mask(ab, 0.4)), atol=1e-5)  # masked path
    assert int(sp.last_mask.sum(-1).unique()) == sp.m


def test_oracle_error_shrinks_as_more_neurons_are_kept(model):
    x = torch.tensor([PROMPT * 3])
    with torch.no_grad():
        ref = model(x)
        errs = [float((sparse_model(model, k)(x) - ref).abs().mean()) for k in (0.1, 0.3, 0.6, 0.9)]
    assert errs == sorted(errs, reverse=True)


def test_predictor_learns_and_union_grows_with_batch(model, text):
    _preds, log = train_sparsity_predictors(model, text, keep=0.5, rank=8, steps=25, batch_size=4, seq_len=32,
                                           progress=False)
    assert log.recall.iloc[-5:].mean() > 0.5  # better than a random guess of half the neurons
    u = union_sparsity(model, text, keep=0.3, batches=(1, 4, 32), trials=5)
    assert u.union_fraction.iloc[0] == pytest.approx(0.3, abs=0.02)
    assert u.union_fraction.is_monotonic_increasing


# ---- mixture of experts ------------------------------------------------------------------------------------


def test_moe_routes_each_token_to_exactly_k_experts_with_normalised_weights():
    layer = MoELayer(16, 32, num_experts=8, top_k=2, seed=0)
    x = torch.randn(50, 16, generator=torch.Generator().manual_seed(0))
    experts, weights, _ = layer.route(x)
    assert experts.shape == (50, 2) and weights.shape == (50, 2)
    assert all(len(set(row)) == 2 for row in experts.tolist())
    assert (weights >= 0).all() and torch.allclose(weights.sum(-1), torch.ones(50))
    assert torch.allclose(layer(x), layer.dense_reference(x), atol=1e-5)
    assert layer.experts_touched(x[:1]) == 2


def test_load_balancing_loss_is_one_at_uniform_routing():
    n, e = 64, 4
    experts = torch.arange(n * 2).reshape(n, 2) % e
    assert float(load_balancing_loss(torch.zeros(n, e), experts, e)) == pytest.approx(1.0)
    skew = torch.zeros(n, 2, dtype=torch.long)
    logits = torch.zeros(n, e)
    logits[:, 0] = 5.0
    assert float(load_balancing_loss(logits, skew, e)) > 1.0


def test_moe_measurement_counts_touched_experts():
    layer = MoELayer(32, 64, num_experts=8, top_k=2, seed=1)
    df = measure_moe_decode(layer, batches=(1, 64), repeats=2)
    assert df.experts_touched.iloc[0] == 2 and df.experts_touched.iloc[1] == 8
    assert df.expert_bytes_read.iloc[1] == 4 * df.expert_bytes_read.iloc[0]


def test_bad_method_inputs(model):
    with pytest.raises(ValueError, match="keep"):
        sparse_model(model, 0.0)
    with pytest.raises(ValueError, match="top_k must be <= 4"):
        MoELayer(8, 8, num_experts=4, top_k=5)
    with pytest.raises(ValueError, match="deep"):
        heads, _ = train_medusa_heads(model, torch.arange(200) % 24, num_heads=1, steps=1, batch_size=2, seq_len=8,
                                      progress=False)
        medusa_generate(model, heads, PROMPT, 5)
    with pytest.raises(ValueError, match="block_size must be >= 1"):
        jacobi_generate(model, PROMPT, 5, block_size=0)
