"""Perplexity: every token predicted once, from fixed windows, deterministically."""

from __future__ import annotations

import math

import pytest
import torch

from unveiled.evaluation import PerplexityResult, perplexity, text_perplexity, window_nll
from unveiled.models import Decoder, DecoderConfig
from unveiled.text import CharTokenizer

CFG = DecoderConfig(vocab_size=11, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                    intermediate_size=16, name="eval-test")


class Uniform:
    def __call__(self, tokens):
        return torch.zeros(*tokens.shape, 11)


def test_uniform_model_has_perplexity_vocab_size():
    res = perplexity(Uniform(), list(range(11)) * 30, window=16)
    assert res.tokens == 329
    assert res.perplexity == pytest.approx(11.0, rel=1e-12)
    assert res.bits_per_token == pytest.approx(math.log2(11))


@pytest.mark.parametrize("n,window", [(2, 4), (17, 4), (100, 7), (100, 200), (65, 16)])
def test_windows_match_an_explicit_computation(n, window):
    model = Decoder(CFG, seed=0).eval()
    ids = torch.randint(0, 11, (n,), generator=torch.Generator().manual_seed(n))
    got = window_nll(model, ids, window=window, batch_size=3)
    assert got.shape == (n - 1,)
    expect = []
    for start in range(0, n - 1, window):
        chunk = ids[start : min(start + window + 1, n)]
        with torch.no_grad():
            lp = torch.log_softmax(model(chunk[None, :-1]).double(), -1)[0]
        expect.append(-lp.gather(-1, chunk[1:, None])[:, 0])
    torch.testing.assert_close(got, torch.cat(expect), atol=1e-6, rtol=1e-6)


def test_perplexity_is_deterministic_and_counts_windows():
    model = Decoder(CFG, seed=1).eval()
    ids = torch.randint(0, 11, (300,), generator=torch.Generator().manual_seed(0))
    a, b = perplexity(model, ids, window=64), perplexity(model, ids, window=64)
    assert a == b
    assert a.windows == 5 and a.tokens == 299
    assert isinstance(a, PerplexityResult) and a.as_dict()["perplexity"] == a.perplexity


def test_text_perplexity_reports_bits_per_char():
    tok = CharTokenizer("abcdefghijk")
    res = text_perplexity(Uniform(), tok, "abcabcabcabc" * 5, window=8, max_tokens=20)
    assert res.tokens == 20 and res.chars == 20
    assert res.bits_per_char == pytest.approx(math.log2(11))
    assert res.nats_per_char == pytest.approx(math.log(11))


def test_bad_input():
    with pytest.raises(ValueError, match="at least 2 tokens"):
        perplexity(Uniform(), [3])
    with pytest.raises(ValueError, match="window must be >= 1"):
        perplexity(Uniform(), [1, 2, 3], window=0)
    with pytest.raises(ValueError, match="1-D"):
        perplexity(Uniform(), torch.zeros(2, 3, dtype=torch.long))
    with pytest.raises(TypeError, match="text must be a str"):
        text_perplexity(Uniform(), CharTokenizer("ab"), [1, 2])
