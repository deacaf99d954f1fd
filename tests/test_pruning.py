"""unveiled.pruning: exact masks, SparseGPT on GPTQ's machinery, structured pruning, low-rank factorization."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import unveiled as uv
from unveiled import pruning as P
from unveiled.models import Decoder, DecoderConfig
from unveiled.pruning import speed as _speed  # noqa: F401 (P.speed below)
from unveiled.quant import calibration_batch, hessian_from_inputs, layer_error, sequential_calibration

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY = DecoderConfig(vocab_size=65, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=96, name="t")


def _correlated(n: int, d: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(d, d, generator=g, dtype=torch.float64) / d**0.5
    scale = torch.exp(torch.randn(d, generator=g, dtype=torch.float64))  # outlier channels, as in LLMs
    return (torch.randn(n, d, generator=g, dtype=torch.float64) @ mix) * scale


def _weight(rows: int, cols: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.fixture(scope="module")
def tiny_s():
    return uv.zoo.load("S")


@pytest.fixture(scope="module")
def tiny_calibration():
    return calibration_batch("tiny", 8, 128)


# ---------------------------------------------------------------------------------------------------
# Patterns and masks
# ---------------------------------------------------------------------------------------------------


def test_patterns_parse_and_label():
    assert P.SparsityPattern.parse("2:4") == P.SparsityPattern(n=2, m=4)
    assert P.SparsityPattern.parse("2:4").sparsity == 0.5 and P.SparsityPattern.parse("4:8").label == "4:8"
    assert P.SparsityPattern.parse("30%").sparsity == pytest.approx(0.3)
    assert P.SparsityPattern.parse(0.7).label == "70%"


@pytest.mark.parametrize("bad", [1.0, -0.1, 1.5, "120%"])
def test_sparsity_outside_unit_interval_is_rejected(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        P.SparsityPattern.parse(bad)


def test_n_above_m_and_malformed_patterns_are_rejected():
    with pytest.raises(ValueError, match="N <= M"):
        P.SparsityPattern.parse("5:4")
    with pytest.raises(ValueError, match="N:M"):
        P.SparsityPattern.parse("2-4")
    with pytest.raises(ValueError, match="multiple of 4"):
        P.nm_keep_mask(torch.rand(3, 10), 2, 4)


@given(rows=st.integers(1, 12), groups=st.integers(1, 12), s=st.floats(0.0, 0.95), seed=st.integers(0, 99))
def test_row_masks_remove_exactly_floor_s_in_per_row_and_the_lowest_scores(rows, groups, s, seed):
    cols = 4 * groups
    score = torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed))
    keep = P.keep_mask(score, s, "row")
    k = P.prune_count(cols, s)
    assert ((~keep).sum(1) == k).all()
    if 0 < k < cols:  # every removed score is <= every kept score of the same row
        assert (torch.where(~keep, score, -1).amax(1) <= torch.where(keep, score, 2).amin(1)).all()
    layer = P.keep_mask(score, s, "layer")
    assert int((~layer).sum()) == P.prune_count(rows * cols, s)


@given(rows=st.integers(1, 10), groups=st.integers(1, 10), nm=st.sampled_from([(2, 4), (4, 8), (1, 4), (3, 4)]),
       seed=st.integers(0, 99))
def test_nm_masks_keep_exactly_n_of_every_m_the_highest(rows, groups, nm, seed):
    n, m = nm
    score = torch.rand(rows, m * groups, generator=torch.Generator().manual_seed(seed))
    keep = P.nm_keep_mask(score, n, m)
    assert (keep.reshape(rows, groups, m).sum(-1) == n).all()
    w = P.apply_mask(score, keep)
    assert P.is_nm_sparse(w, n, m) and P.sparsity_of(w) == pytest.approx(1 - n / m)
    grouped, kept = score.reshape(rows, groups, m), keep.reshape(rows, groups, m)
    assert (torch.where(~kept, grouped, -1).amax(-1) <= torch.where(kept, grouped, 2).amin(-1)).all()


def test_wanda_score_is_weight_times_input_norm_and_compares_per_row():
    x = _correlated(256, 16).float()
    w = _weight(6, 16).float()
    inputs = uv.quant.LayerInputs((x.T @ x).double(), x.shape[0])
    norms = x.norm(dim=0)  # independent: the L2 norm of each input channel over the tokens
    assert torch.allclose(inputs.input_norms, norms, rtol=1e-5)
    score = P.wanda_score(w, inputs.input_norms)
    assert torch.allclose(score, w.abs() * norms[None, :], rtol=1e-5)
    pruned, keep = P.prune_layer(w, "wanda", 0.5, inputs=inputs)
    for r in range(6):  # brute force, row by row
        order = torch.argsort(w[r].abs() * norms)
        assert set(torch.nonzero(~keep[r]).flatten().tolist()) == set(order[:8].tolist())
    assert (pruned[~keep] == 0).all() and torch.equal(pruned[keep], w[keep])
    with pytest.raises(ValueError, match="input-channel norms"):
        P.wanda_score(w, norms[:5])


# ---------------------------------------------------------------------------------------------------
# SparseGPT on the shared Hessian machinery
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pattern", [0.3, 0.5, 0.7, "2:4", "4:8"])
def test_sparsegpt_counts_and_patterns_are_exact(pattern):
    h = hessian_from_inputs(_correlated(1024, 96))
    w = _weight(24, 96)
    res = P.sparsegpt_prune(w, h, pattern, block_size=32)
    pat = P.SparsityPattern.parse(pattern)
    assert torch.equal(res.weight == 0, ~res.keep)
    if pat.is_nm:
        assert P.is_nm_sparse(res.weight, pat.n, pat.m) and P.sparsity_of(res.weight) == 0.5
    else:
        assert int((~res.keep).sum()) == P.prune_count(w.numel(), pat.sparsity)


@pytest.mark.parametrize("pattern", [0.5, "2:4", "4:8"])
def test_sparsegpt_beats_plain_masking_with_its_own_mask_and_magnitude(pattern):
    h = hessian_from_inputs(_correlated(2048, 128))
    w = _weight(32, 128)
    res = P.sparsegpt_prune(w, h, pattern)
    masked = layer_error(w, P.apply_mask(w, res.keep), h)
    assert layer_error(w, res.weight, h) < 0.9 * masked
    mag, _ = P.prune_layer(w, "magnitude", pattern)
    assert layer_error(w, res.weight, h) < layer_error(w, mag, h)


def test_sparsegpt_update_is_the_least_squares_optimum_when_pruned_columns_come_first():
    # Theorem: with every pruned column before every kept one, the sequential OBS update solves
    # min ||(W - Q) X|| over the kept weights exactly (the kept columns can absorb everything).
    x = _correlated(2048, 40)
    h = hessian_from_inputs(x)
    w = _weight(8, 40)
    keep = torch.ones_like(w, dtype=torch.bool)
    keep[:, :15] = False
    res = P.sparsegpt_prune(w, h, keep=keep, damp=0.0, block_size=7)
    # closed form: the kept weights are w_K + w_P H_PK H_KK^-1 (normal equations per row)
    P_, K = slice(0, 15), slice(15, 40)
    best = torch.zeros_like(w)
    best[:, K] = w[:, K] + w[:, P_] @ h[P_, K] @ torch.linalg.inv(h[K, K])
    assert torch.allclose(res.weight, best, atol=1e-8)
    assert res.loss == pytest.approx(layer_error(w, res.weight, h), rel=1e-9)  # losses = the objective (damp 0)


def test_sparsegpt_with_identity_hessian_is_magnitude_within_each_block():
    w = _weight(16, 64)
    res = P.sparsegpt_prune(w, torch.eye(64, dtype=torch.float64), 0.5, block_size=64, damp=0.0)
    mag, keep = P.prune_layer(w, "magnitude", 0.5, per="layer")
    assert torch.equal(res.keep, keep) and torch.allclose(res.weight, mag)


def test_sparsegpt_never_worse_than_masking_on_real_calibration_inputs(tiny_s, tiny_calibration):
    # On every layer of a real model, with the inputs each layer really sees, the OBS update reduces the
    # layer error of SparseGPT's own mask (the update is a sequential heuristic, so this is checked on data).
    seen = []

    def process(name, lin, inputs):
        for pattern in (0.5, "2:4"):
            res = P.sparsegpt_prune(lin.weight.detach(), inputs.hessian, pattern)
            plain = layer_error(lin.weight, P.apply_mask(lin.weight.detach(), res.keep), inputs.hessian)
            seen.append((name, pattern, layer_error(lin.weight, res.weight, inputs.hessian), plain))
        return lin, {}

    sequential_calibration(tiny_s, tiny_calibration, process, progress=False)
    assert len(seen) == 2 * 14
    assert all(err <= plain for _, _, err, plain in seen), [s for s in seen if s[2] > s[3]]


def test_sparsegpt_argument_errors():
    w = _weight(4, 16)
    with pytest.raises(ValueError, match="hessian must be"):
        P.sparsegpt_prune(w, torch.eye(8), 0.5)
    with pytest.raises(ValueError, match="multiple of M"):
        P.sparsegpt_prune(w, torch.eye(16), "2:4", block_size=6)
    with pytest.raises(ValueError, match="bool tensor"):
        P.sparsegpt_prune(w, torch.eye(16), keep=torch.ones(4, 16))
    with pytest.raises(ValueError, match="damp"):
        P.sparsegpt_prune(w, torch.eye(16), 0.5, damp=-1.0)


# ---------------------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
@pytest.mark.parametrize("pattern", [0.4, "2:4"])
def test_prune_model_prunes_every_block_projection_exactly(tiny_s, tiny_calibration, method, pattern):
    pat = P.SparsityPattern.parse(pattern)
    cal = tiny_calibration if method != "magnitude" else None
    pruned, report = P.prune_model(tiny_s, method, pattern, cal, progress=False)
    assert len(report) == 14 and pruned is not tiny_s
    for name in report["name"]:
        w = pruned.get_submodule(name).weight
        if pat.is_nm:
            assert P.is_nm_sparse(w, 2, 4)
        elif method == "wanda":
            assert ((w == 0).sum(1) == P.prune_count(w.shape[1], 0.4)).all()
        else:
            assert int((w == 0).sum()) == P.prune_count(w.numel(), 0.4)
    assert torch.equal(pruned.embed_tokens.weight, tiny_s.embed_tokens.weight)
    assert P.sparsity_of(tiny_s.layers[0].mlp.up_proj.weight) < 0.01  # the original is untouched
    if cal is not None:
        assert (report["layer_error"] >= 0).all()


def test_prune_model_errors(tiny_s):
    with pytest.raises(ValueError, match="calibration tokens"):
        P.prune_model(tiny_s, "wanda", 0.5)
    with pytest.raises(ValueError, match="method must be one of"):
        P.prune_model(tiny_s, "random", 0.5)
    with pytest.raises(ValueError, match=r"no block projection matches 'mlp\.dwn_proj'"):
        P.prune_model(tiny_s, "magnitude", 0.5, include=["mlp.dwn_proj"])
    with pytest.raises(ValueError, match="SparseGPT chooses"):
        P.prune_layer(torch.ones(2, 4), "sparsegpt", 0.5, inputs=uv.quant.LayerInputs(torch.eye(4), 1), per="row")
    only, report = P.prune_model(tiny_s, "magnitude", 0.5, include=["down_proj"])
    assert list(report["layer"].unique()) == ["down_proj"] and P.sparsity_of(only.layers[0].mlp.up_proj.weight) < 0.01


# ---------------------------------------------------------------------------------------------------
# Structured pruning
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("score", P.SCORES)
def test_structured_model_equals_the_masked_dense_model(tiny_s, tiny_calibration, score):
    plan = P.StructuredPlan(kv_groups=1, mlp_channels=100)
    keep = P.select_structures(P.structure_scores(tiny_s, score, tiny_calibration), plan)
    small = P.shrink(tiny_s, keep)
    masked = P.mask_structures(tiny_s, keep)
    tokens = tiny_calibration[:2, :64]
    with torch.no_grad():
        assert torch.allclose(small(tokens), masked(tokens), atol=1e-5, rtol=1e-5)
    cfg = small.config
    assert (cfg.num_kv_heads, cfg.num_heads, cfg.intermediate_size) == (1, 2, 252)
    assert small.num_parameters() == cfg.num_parameters() < tiny_s.num_parameters()
    assert small.layers[0].self_attn.q_proj.weight.shape == (2 * cfg.head_dim, cfg.hidden_size)


def test_structured_scores_match_their_definitions(tiny_s, tiny_calibration):
    cfg = tiny_s.config
    blk = tiny_s.layers[1]
    mag = P.structure_scores(tiny_s, "magnitude")[1]
    c = 7
    with torch.no_grad():
        want = (blk.mlp.gate_proj.weight[c].pow(2).sum() + blk.mlp.up_proj.weight[c].pow(2).sum()
                + blk.mlp.down_proj.weight[:, c].pow(2).sum())
    assert float(mag["mlp"][c]) == pytest.approx(float(want), rel=1e-5)
    # activation: mean squared norm of channel c's contribution to the block output, recomputed by hand
    act = P.structure_scores(tiny_s, "activation", tiny_calibration)[1]
    seen = []
    h = blk.mlp.down_proj.register_forward_pre_hook(lambda _m, a: seen.append(a[0].reshape(-1, a[0].shape[-1])))
    with torch.no_grad():
        tiny_s.hidden_states(tiny_calibration)
    h.remove()
    a = torch.cat(seen)
    contrib = a[:, c : c + 1] * blk.mlp.down_proj.weight.detach()[:, c][None, :]
    assert float(act["mlp"][c]) == pytest.approx(float(contrib.pow(2).sum(1).mean()), rel=1e-4)
    assert act["kv_groups"].shape == (cfg.num_kv_heads,) and (act["kv_groups"] > 0).all()
    tay = P.structure_scores(tiny_s, "taylor", tiny_calibration)
    assert all(torch.isfinite(t["mlp"]).all() and (t["mlp"] >= 0).all() for t in tay)
    assert all(p.requires_grad for p in tiny_s.layers[0].mlp.parameters())  # left as found


def test_structured_prune_removes_the_lowest_scores_and_reports():
    m = Decoder(TINY, seed=3)
    scores = P.structure_scores(m, "magnitude")
    small, report = P.structured_prune(m, P.StructuredPlan(1, 16), "magnitude")
    for i, s in enumerate(scores):
        assert report.loc[i, "removed_kv_groups"] == str(int(torch.argmin(s["kv_groups"])))
    assert small.config.intermediate_size == 80 and len(report) == 2


def test_structured_plans():
    cfg = DecoderConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                        intermediate_size=1536, head_dim=64)  # SmolLM2-135M's shape
    plan = P.plan_for_sparsity(cfg, 0.3)
    assert plan.kv_groups == 0 and abs(plan.block_sparsity(cfg) - 0.3) < 0.001
    both = P.plan_for_sparsity(cfg, 0.3, kv_groups=1)
    assert both.kv_groups == 1 and abs(both.block_sparsity(cfg) - 0.3) < 0.001
    assert both.config(cfg).num_heads == 6 and both.config(cfg).num_kv_heads == 2
    with pytest.raises(ValueError, match="already removes"):
        P.plan_for_sparsity(cfg, 0.05, kv_groups=1)
    with pytest.raises(ValueError, match="kv_groups"):
        P.StructuredPlan(kv_groups=3).check(cfg)
    with pytest.raises(ValueError, match="calibration tokens"):
        P.structure_scores(Decoder(TINY), "taylor")


def test_lora_recovery_returns_plain_linears_and_lowers_training_loss(tiny_s):
    small, _ = P.structured_prune(tiny_s, P.StructuredPlan(0, 200), "magnitude")
    train = uv.text.shakespeare_tokenizer().encode(uv.text.corpus_split("train")[:50_000])
    rec, log = P.lora_recover(small, train, steps=30, lr=3e-3)
    assert all(type(m) is torch.nn.Linear for n, m in rec.named_modules() if n.endswith("_proj"))
    assert rec.num_parameters() == small.num_parameters()
    assert log["loss"].tail(5).mean() < log["loss"].head(5).mean()


# ---------------------------------------------------------------------------------------------------
# Low-rank factorization
# ---------------------------------------------------------------------------------------------------


@given(rows=st.integers(2, 20), cols=st.integers(2, 20), seed=st.integers(0, 50), data=st.data())
def test_svd_error_is_the_discarded_singular_values(rows, cols, seed, data):
    w = _weight(rows, cols, seed)
    rank = data.draw(st.integers(1, min(rows, cols)))
    a, b = P.svd_factorize(w, rank)
    s = torch.linalg.svdvals(w)
    assert float((w - b @ a).pow(2).sum()) == pytest.approx(float(s[rank:].pow(2).sum()), rel=1e-9, abs=1e-9)


def test_asvd_reconstructs_at_full_rank_and_minimises_the_scaled_error():
    w = _weight(12, 20)
    scale = P.asvd_scale(torch.rand(20, generator=torch.Generator().manual_seed(0)) + 0.1)
    a, b = P.svd_factorize(w, 12, scale=scale)
    assert torch.allclose(b @ a, w, atol=1e-10)
    a, b = P.svd_factorize(w, 4, scale=scale)
    s = torch.linalg.svdvals(w * scale[None, :])
    assert float(((w - b @ a) * scale[None, :]).pow(2).sum()) == pytest.approx(float(s[4:].pow(2).sum()), rel=1e-9)


def test_rank_errors_and_budgets():
    w = _weight(6, 10)
    for bad in (0, 7):
        with pytest.raises(ValueError, match="rank"):
            P.svd_factorize(w, bad)
    assert P.rank_for_params((576, 1536), 0.5) == 209 and P.break_even_rank((576, 1536)) == 418
    assert P.rank_for_params((576, 1536), 0.5) * (576 + 1536) <= 0.5 * 576 * 1536
    s = torch.tensor([3.0, 2.0, 1.0])
    assert [P.rank_for_energy(s, e) for e in (0.5, 9 / 14, 13 / 14, 1.0)] == [1, 1, 2, 3]
    with pytest.raises(ValueError, match="energy"):
        P.rank_for_energy(s, 0.0)
    with pytest.raises(ValueError, match="keep"):
        P.rank_for_params((4, 4), 1.5)


@pytest.mark.parametrize("allocation", P.ALLOCATIONS)
@pytest.mark.parametrize("method", P.FACTORIZATIONS)
def test_lowrank_model_meets_the_budget(tiny_s, tiny_calibration, method, allocation):
    out, report = P.lowrank_model(tiny_s, 0.6, method=method, allocation=allocation, calibration=tiny_calibration)
    assert report["params"].sum() <= 0.6 * report["dense_params"].sum()
    lin = out.layers[0].mlp.up_proj
    if isinstance(lin, P.LowRankLinear):
        x = torch.randn(3, lin.first.weight.shape[1])
        assert torch.allclose(lin(x), x @ lin.weight.T, atol=1e-5)
    if allocation == "energy":  # one energy share for every factorized layer
        energies = report.loc[report["rank"] > 0, "energy"]
        assert energies.min() > 0.5
    with torch.no_grad():
        assert torch.isfinite(out(tiny_calibration[:1, :32])).all()


def test_lowrank_model_errors(tiny_s):
    with pytest.raises(ValueError, match="calibration tokens"):
        P.lowrank_model(tiny_s, 0.5, method="asvd")
    with pytest.raises(ValueError, match="allocation"):
        P.lowrank_model(tiny_s, 0.5, allocation="greedy")
    with pytest.raises(ValueError, match="keep"):
        P.lowrank_model(tiny_s, 0.0)


def test_gptq_and_sparsegpt_share_one_hessian_implementation():
    # One implementation, not two: the Hessian, damping, inverse Cholesky factor and column sweep live in
    # unveiled.quant.hessian, and both methods call them.
    import inspect

    from unveiled.pruning import sparsegpt
    from unveiled.quant import gptq

    for module in (gptq, sparsegpt):
        src = inspect.getsource(module)
        assert "cholesky" not in src and "prepare_hessian(" in src and "obs_sweep(" in src, module.__name__


def test_lowrank_timing_twin_has_the_ranks_of_the_real_factorization(tiny_s):
    real, report = P.lowrank_model(tiny_s, 0.6)
    twin = P.speed.lowrank_twin(tiny_s, 0.6)
    for name, rank in zip(report["name"], report["rank"], strict=True):
        assert twin.get_submodule(name).rank == rank == real.get_submodule(name).rank
