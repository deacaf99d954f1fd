"""The vendored corpora, the character tokenizer, the fixed split and the seeded batches."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from unveiled import data_file
from unveiled import text as tx


def test_tiny_shakespeare_is_the_pinned_file():
    raw = data_file("tinyshakespeare.txt").read_bytes()
    assert len(raw) == 1_115_394
    assert hashlib.sha256(raw).hexdigest() == "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"
    text = tx.corpus("shakespeare")
    assert len(text) == tx.CORPORA["shakespeare"].chars == 1_115_394
    assert len(set(text)) == 65


def test_pydoc_slice_is_the_pinned_file():
    text = tx.corpus("pydoc")
    assert len(text) == tx.CORPORA["pydoc"].chars
    assert text.startswith("assert\n======")


def test_split_is_first_90_percent_then_last_10_percent():
    train, val = tx.corpus_split("train"), tx.corpus_split("val")
    assert len(train) == 1_003_854 and len(val) == 111_540
    assert train + val == tx.corpus_split("all")
    with pytest.raises(ValueError, match="split must be one of"):
        tx.corpus_split("test")


def test_unknown_corpus_suggests_a_name():
    with pytest.raises(ValueError, match="Did you mean 'shakespeare'"):
        tx.corpus("shakespear")


def test_a_changed_corpus_file_is_detected(monkeypatch):
    bad = dataclasses.replace(tx.CORPORA["pydoc"], sha256="0" * 64)
    monkeypatch.setitem(tx.CORPORA, "pydoc", bad)
    tx.corpus.cache_clear()
    try:
        with pytest.raises(ValueError, match="corrupt or was replaced"):
            tx.corpus("pydoc")
    finally:
        tx.corpus.cache_clear()


@given(st.text(alphabet=tx.shakespeare_tokenizer().chars, max_size=200))
def test_char_tokenizer_round_trips(s):
    tok = tx.shakespeare_tokenizer()
    ids = tok.encode(s)
    assert len(ids) == len(s) and all(0 <= i < 65 for i in ids)
    assert tok.decode(ids) == s


def test_char_tokenizer_vocabulary_and_errors():
    tok = tx.shakespeare_tokenizer()
    assert tok.vocab_size == 65 and tok.chars == "".join(sorted(tok.chars))
    assert isinstance(tok, tx.Tokenizer)
    assert tx.CharTokenizer.from_json(tok.to_json()) == tok
    with pytest.raises(ValueError, match="not in this tokenizer's vocabulary"):
        tok.encode("def f(x): return {x}")
    assert tok.decode(tok.encode("a{b}", errors="skip")) == "ab"
    with pytest.raises(ValueError, match="token ids must be in"):
        tok.decode([65])
    with pytest.raises(ValueError, match="distinct"):
        tx.CharTokenizer("aa")
    with pytest.raises(ValueError, match="not a char tokenizer"):
        tx.CharTokenizer.from_json('{"type": "bpe"}')


def test_batches_are_shifted_windows_and_seeded():
    data = torch.arange(1000)
    x, y = tx.random_batch(data, 4, 16, torch.Generator().manual_seed(0))
    assert x.shape == y.shape == (4, 16)
    assert torch.equal(y[:, :-1], x[:, 1:]) and torch.equal(y[:, -1], x[:, -1] + 1)
    a, b = tx.training_batches(data, 3, 8, seed=7), tx.training_batches(data, 3, 8, seed=7)
    for _ in range(3):
        (xa, ya), (xb, yb) = next(a), next(b)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    assert not torch.equal(next(tx.training_batches(data, 3, 8, seed=8))[0], next(tx.training_batches(data, 3, 8, seed=7))[0])
    with pytest.raises(ValueError, match="at least seq_len"):
        tx.random_batch(torch.arange(5), 1, 5, torch.Generator())
    with pytest.raises(ValueError, match="1-D"):
        tx.random_batch(torch.zeros(2, 9, dtype=torch.long), 1, 4, torch.Generator())
