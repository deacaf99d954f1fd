"""The decoder: cached and uncached runs agree, rollback is exact, seams behave, checkpoints load safely."""

from __future__ import annotations

import json
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from unveiled.models import (
    LINEAR_NAMES,
    CacheProtocol,
    Decoder,
    DecoderConfig,
    KVCache,
    linear_names,
    load_model,
    replace_linears,
    save_model,
)

CFG = DecoderConfig(vocab_size=23, hidden_size=32, num_layers=3, num_heads=4, num_kv_heads=2,
                    intermediate_size=48, max_seq_len=64, name="test")


@pytest.fixture(scope="module")
def model() -> Decoder:
    torch.manual_seed(0)
    m = Decoder(CFG, seed=1).eval()
    # Larger-than-init weights make attention patterns sharp, so errors in masks or RoPE would show.
    with torch.no_grad():
        for p in m.parameters():
            if p.dim() == 2:
                p.mul_(8)
    return m


def tokens(n: int, batch: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (batch, n), generator=torch.Generator().manual_seed(seed))


# -- configuration -------------------------------------------------------------------------------------


def test_config_parameter_count_matches_module():
    for cfg in (CFG, DecoderConfig(**{**CFG.to_dict(), "tie_embeddings": False})):
        assert Decoder(cfg).num_parameters() == cfg.num_parameters()


def test_config_checks_and_roundtrips():
    assert DecoderConfig.from_dict(json.loads(json.dumps(CFG.to_dict()))) == CFG
    assert DecoderConfig.from_hf_config(CFG.to_hf_config()) == CFG
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        DecoderConfig(vocab_size=5, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=3, intermediate_size=8)
    with pytest.raises(ValueError, match="even"):
        DecoderConfig(vocab_size=5, hidden_size=12, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=8)
    with pytest.raises(ValueError, match="Did you mean 'hidden_size'"):
        DecoderConfig.from_dict({**CFG.to_dict(), "hiden_size": 3})
    with pytest.raises(TypeError):
        DecoderConfig(vocab_size=5.0, hidden_size=32, num_layers=1, num_heads=4, num_kv_heads=4, intermediate_size=8)
    with pytest.raises(ValueError, match=r"lacks the field .hidden_size."):
        DecoderConfig.from_hf_config({"vocab_size": 3})


def test_seeded_init_is_reproducible_and_leaves_global_rng_alone():
    state = torch.random.get_rng_state()
    a, b = Decoder(CFG, seed=3), Decoder(CFG, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    assert a.tied and a.lm_head.weight is a.embed_tokens.weight


# -- caching -------------------------------------------------------------------------------------------


@settings(max_examples=25, deadline=None)
@given(cuts=st.lists(st.integers(1, 40), min_size=1, max_size=4, unique=True))
def test_cached_logits_match_uncached(model, cuts):
    x = tokens(41)
    full = model(x)
    cache = model.new_cache()
    pieces, start = [], 0
    for end in [*sorted(cuts), 41]:
        pieces.append(model(x[:, start:end], cache))
        start = end
    torch.testing.assert_close(torch.cat(pieces, 1), full, atol=2e-5, rtol=1e-5)
    assert len(cache) == cache.offset == 41


def test_token_by_token_decode_matches_full_forward(model):
    x = tokens(30, batch=1, seed=5)
    cache = model.new_cache()
    steps = [model(x[:, i : i + 1], cache) for i in range(30)]
    torch.testing.assert_close(torch.cat(steps, 1), model(x), atol=2e-5, rtol=1e-5)


def test_crop_restores_the_earlier_state_exactly(model):
    x, extra = tokens(20), tokens(7, seed=9)
    cache = model.new_cache()
    model(x[:, :12], cache)
    keys_before = [cache.keys(i).clone() for i in range(CFG.num_layers)]
    next_before = model(x[:, 12:13], cache)
    cache.crop(12)
    model(extra, cache)  # a rejected speculation
    cache.crop(12)
    assert len(cache) == 12 and cache.offset == 12
    assert all(torch.equal(cache.keys(i), keys_before[i]) for i in range(CFG.num_layers))
    assert torch.equal(model(x[:, 12:13], cache), next_before)
    cache.crop(-2)
    assert len(cache) == 11
    with pytest.raises(ValueError, match="cannot crop"):
        cache.crop(50)


def test_cache_grows_past_its_initial_capacity_and_counts_bytes(model):
    x = tokens(150, batch=1)
    cache = model.new_cache()
    pieces = [model(x[:, i : i + 50], cache) for i in range(0, 150, 50)]  # capacity 64 -> 128 -> 256
    torch.testing.assert_close(torch.cat(pieces, 1), model(x), atol=5e-5, rtol=1e-4)
    per_token = 2 * CFG.num_layers * CFG.num_kv_heads * CFG.head_dim * 4
    assert cache.nbytes == 150 * per_token
    assert isinstance(cache, CacheProtocol)


def test_verify_scores_a_proposal_like_a_full_forward(model):
    x = tokens(25)
    cache = model.new_cache()
    model(x[:, :20], cache)
    torch.testing.assert_close(model.verify(x[:, 20:], cache), model(x)[:, 20:], atol=2e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="cache"):
        model.verify(x, None)


def test_relative_positions_only(model):
    # RoPE makes attention depend on relative positions, so shifting every position changes nothing.
    x = tokens(16)
    torch.testing.assert_close(model(x, positions=37), model(x), atol=5e-5, rtol=1e-4)
    torch.testing.assert_close(model(x, positions=torch.arange(16)), model(x))
    with pytest.raises(ValueError, match="positions"):
        model(x, positions=torch.arange(3))


class RecordingCache(KVCache):
    """Keeps un-rotated keys (StreamingLLM's way) and records the attention weights it is shown."""

    keys_before_rope = True

    def __init__(self):
        super().__init__()
        self.seen: dict[int, torch.Tensor] = {}

    def observe_attention(self, layer, weights):
        self.seen[layer] = weights


class SinkWindowCache:
    """A minimal evicting cache (attention sinks + recent window) written only against the protocol."""

    keys_before_rope = True

    def __init__(self, sinks: int, window: int):
        self.sinks, self.window, self.k, self.v, self.offset = sinks, window, {}, {}, 0

    def update(self, layer, k, v):
        if layer == 0:
            self.offset += k.shape[2]
        ks = torch.cat([self.k[layer], k], 2) if layer in self.k else k
        vs = torch.cat([self.v[layer], v], 2) if layer in self.v else v
        if ks.shape[2] > self.sinks + self.window:
            ks = torch.cat([ks[:, :, : self.sinks], ks[:, :, -self.window :]], 2)
            vs = torch.cat([vs[:, :, : self.sinks], vs[:, :, -self.window :]], 2)
        self.k[layer], self.v[layer] = ks, vs
        return ks, vs

    def __len__(self):
        return self.k[0].shape[2] if self.k else 0

    def crop(self, n):
        raise NotImplementedError


def test_cache_seams_pre_rope_keys_and_attention_observer(model):
    x = tokens(18)
    cache = RecordingCache()
    out = torch.cat([model(x[:, :10], cache), model(x[:, 10:], cache)], 1)
    # Nothing was evicted, so positions in the cache equal positions in the text.
    torch.testing.assert_close(out, model(x), atol=5e-5, rtol=1e-4)
    w = cache.seen[2]
    assert w.shape == (2, CFG.num_heads, 8, 18)
    torch.testing.assert_close(w.sum(-1), torch.ones(2, CFG.num_heads, 8))
    assert torch.all(w[..., 0, 11:] == 0)  # causal: the first new query sees keys 0..10 only


def test_an_evicting_cache_plugs_in(model):
    x = tokens(40, batch=1)
    cache = SinkWindowCache(sinks=2, window=8)
    for i in range(40):
        logits = model(x[:, i : i + 1], cache)
    assert len(cache) == 10 and cache.offset == 40
    assert torch.isfinite(logits).all()
    big = SinkWindowCache(sinks=2, window=100)  # never evicts: must equal the plain cache
    steps = [model(x[:, i : i + 1], big) for i in range(40)]
    torch.testing.assert_close(torch.cat(steps, 1), model(x), atol=5e-5, rtol=1e-4)


# -- early exit and hidden states ------------------------------------------------------------------------


def test_early_exit_and_hidden_states(model):
    x = tokens(12)
    states = model.hidden_states(x)
    assert len(states) == CFG.num_layers + 1
    torch.testing.assert_close(model.head(states[-1]), model(x))
    torch.testing.assert_close(model(x, num_layers=CFG.num_layers), model(x))
    torch.testing.assert_close(model(x, num_layers=1), model.head(states[1]))
    torch.testing.assert_close(model(x, num_layers=0), model.head(model.embed_tokens(x)))
    assert len(model.hidden_states(x, num_layers=2)) == 3
    with pytest.raises(ValueError, match="num_layers"):
        model(x, num_layers=CFG.num_layers + 1)
    cache = model.new_cache()
    model(x, cache, num_layers=1)
    assert cache.layer_length(0) == 12 and cache.layer_length(1) == 0


def test_bad_token_input_is_rejected(model):
    with pytest.raises(TypeError, match="LongTensor"):
        model([1, 2, 3])
    with pytest.raises(ValueError, match="integer"):
        model(torch.zeros(1, 3))
    with pytest.raises(ValueError, match="at least one"):
        model(torch.zeros(1, 0, dtype=torch.long))
    assert model(torch.tensor([1, 2, 3])).shape == (1, 3, CFG.vocab_size)


def test_gqa_equals_explicit_reference(model):
    # An independent attention: repeat K/V per group, causal softmax, written out by hand.
    x = tokens(9, batch=1)
    attn = model.layers[0].self_attn
    h = model.layers[0].input_layernorm(model.embed_tokens(x))
    d, nh, nkv = CFG.head_dim, CFG.num_heads, CFG.num_kv_heads
    q = attn.q_proj(h).view(1, 9, nh, d).transpose(1, 2)
    k = attn.k_proj(h).view(1, 9, nkv, d).transpose(1, 2)
    v = attn.v_proj(h).view(1, 9, nkv, d).transpose(1, 2)
    pos = torch.arange(9, dtype=torch.float64)
    inv = 1.0 / CFG.rope_theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = (pos[:, None] * inv[None]).float()

    def rope(t):
        a, b = t[..., : d // 2], t[..., d // 2 :]
        return torch.cat([a * ang.cos() - b * ang.sin(), b * ang.cos() + a * ang.sin()], -1)

    q, k = rope(q), rope(k)
    out = torch.empty(1, nh, 9, d)
    for head in range(nh):
        g = head // (nh // nkv)
        s = q[0, head] @ k[0, g].T / math.sqrt(d)
        s = s.masked_fill(torch.triu(torch.ones(9, 9, dtype=torch.bool), 1), float("-inf"))
        out[0, head] = s.softmax(-1) @ v[0, g]
    ref = attn.o_proj(out.transpose(1, 2).reshape(1, 9, nh * d))
    torch.testing.assert_close(attn(h, model.rope, torch.arange(9)), ref, atol=2e-5, rtol=1e-4)


# -- swapping linears -----------------------------------------------------------------------------------


class Counting(nn.Module):
    def __init__(self, inner: nn.Linear):
        super().__init__()
        self.inner, self.calls = inner, 0

    def forward(self, x):
        self.calls += 1
        return self.inner(x)


def test_linear_names_are_stable():
    m = Decoder(CFG)
    names = linear_names(m)
    assert names[-1] == "lm_head"
    assert len(names) == CFG.num_layers * len(LINEAR_NAMES) + 1
    assert "layers.2.mlp.down_proj" in names and "layers.0.self_attn.q_proj" in names
    assert "lm_head" not in linear_names(m, include_head=False)


def test_replace_linears_swaps_modules_in_place():
    m = Decoder(CFG, seed=2).eval()
    x = tokens(6)
    before = m(x)
    done = replace_linears(m, lambda name, lin: Counting(lin))
    assert "lm_head" not in done and len(done) == CFG.num_layers * 7
    torch.testing.assert_close(m(x), before)
    assert m.layers[1].mlp.up_proj.calls == 1
    assert replace_linears(m, lambda n, lin: lin, include=["lm_head"]) == ["lm_head"]
    m2 = Decoder(CFG, seed=2)
    assert replace_linears(m2, lambda n, lin: Counting(lin), include=lambda n: n.endswith("q_proj")) == [
        f"layers.{i}.self_attn.q_proj" for i in range(CFG.num_layers)
    ]
    replace_linears(m2, lambda n, lin: nn.Linear(lin.in_features, lin.out_features, bias=False), include="lm_head")
    assert not m2.tied
    with pytest.raises(ValueError, match="Did you mean 'q_proj'"):
        replace_linears(m2, lambda n, lin: lin, include=["q_prj"])
    with pytest.raises(TypeError, match=r"nn.Module"):
        replace_linears(m2, lambda n, lin: 3)


# -- saving and loading -------------------------------------------------------------------------------


def test_save_load_round_trip(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(model, path, dtype=torch.float32, metadata={"steps": 3})
    loaded = load_model(path)
    assert loaded.config == CFG and loaded.tied
    x = tokens(10)
    assert torch.equal(loaded(x), model(x))
    save_model(model, tmp_path / "h.safetensors")
    half = load_model(tmp_path / "h.safetensors")
    assert torch.equal(half.embed_tokens.weight, model.embed_tokens.weight.half().float())
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        assert "lm_head.weight" not in f.keys()  # noqa: SIM118 (safe_open is not a dict); tied weight stored once
        assert json.loads(f.metadata()["steps"]) == 3


def test_load_never_unpickles(tmp_path, model, monkeypatch):
    path = tmp_path / "m.safetensors"
    save_model(model, path)

    def forbidden(*a, **k):
        raise AssertionError("torch.load (pickle) must not be used")

    monkeypatch.setattr(torch, "load", forbidden)
    load_model(path)


def test_mismatched_checkpoint_fails_clearly(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    other = DecoderConfig(**{**CFG.to_dict(), "hidden_size": 48, "intermediate_size": 64})
    with pytest.raises(ValueError, match=r"does not match the config.*wrong shapes"):
        load_model(path, other)
    deeper = DecoderConfig(**{**CFG.to_dict(), "num_layers": 4})
    with pytest.raises(ValueError, match=r"missing tensors.*layers.3"):
        load_model(path, deeper)
    untied = DecoderConfig(**{**CFG.to_dict(), "tie_embeddings": False})
    with pytest.raises(ValueError, match=r"missing tensors.*lm_head"):
        load_model(path, untied)


def test_corrupt_or_missing_file_fails_clearly(tmp_path, model):
    path = tmp_path / "m.safetensors"
    save_model(model, path)
    raw = path.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(tmp_path / "trunc.safetensors")
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="not a readable safetensors"):
        load_model(tmp_path / "junk.safetensors")
    with pytest.raises(ValueError, match="no checkpoint file"):
        load_model(tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="Decoder"):
        save_model(nn.Linear(2, 2), tmp_path / "x.safetensors")
