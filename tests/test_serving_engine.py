"""The real serving engine: continuous batching on a paged KV pool gives every request exactly the tokens of plain
greedy generation, whatever shares its steps (no timing is asserted here)."""

from __future__ import annotations

import pytest
import torch

import unveiled as uv
import unveiled.serving as sv
from unveiled.generation import generate
from unveiled.serving.costs import StepShape
from unveiled.serving.engine import ServingEngine, profile_engine, serve, text_prompts
from unveiled.text import corpus_split, shakespeare_tokenizer

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny():
    return uv.zoo.load("M")


@pytest.fixture(scope="module")
def shakespeare_ids():
    return shakespeare_tokenizer().encode(corpus_split("val"))


def reference(model, prompts, workload):
    with torch.inference_mode():
        return {rid: generate(model, p, int(n))[len(p):].tolist()
                for (rid, p), n in zip(prompts.items(), workload.output_len, strict=True)}


@pytest.mark.parametrize("policy, num_blocks, budget", [
    ("continuous", 64, None),
    ("chunked", 64, 24),  # prompts of up to 96 tokens split into chunks
    ("continuous", 14, None),  # too few blocks: requests are preempted and recomputed
    ("static", 64, None),
])
def test_engine_generates_exactly_what_plain_generation_does(tiny, shakespeare_ids, policy, num_blocks, budget):
    wl = sv.poisson_workload(16, 300.0, sv.uniform_lengths(16, 96), sv.uniform_lengths(4, 40), seed=1)
    prompts = text_prompts(wl, shakespeare_ids, seed=1)
    res = serve(tiny, wl, prompts, policy, num_blocks=num_blocks, max_batch=8, max_batched_tokens=budget)
    assert res.generated == reference(tiny, prompts, wl)
    s = res.steps
    assert s.finished.sum() == len(wl) and s.output_tokens.sum() == wl.output_len.sum()
    assert (s.time_s > 0).all() and s.decode_seqs.max() > 1  # requests really shared steps
    if budget is not None:
        assert (s.decode_tokens + s.prefill_tokens).max() <= budget and (s.prefill_seqs > 0).sum() > len(wl)
    if num_blocks == 14:
        assert res.requests.preemptions.sum() > 0


def test_packed_forward_matches_the_decoder(tiny):
    """Two sequences packed into one step, one of them continuing a cached prefix: the logits of each equal the
    Decoder's own forward on that sequence."""
    gen = torch.Generator().manual_seed(0)
    a = torch.randint(0, 65, (40,), generator=gen).tolist()
    b = torch.randint(0, 65, (25,), generator=gen).tolist()
    mgr = uv.kvcache.BlockManager(16, 16)
    eng = ServingEngine(tiny, 16, 16)
    mgr.add("a", 40)
    mgr.add("b", 25)
    eng.forward([(b[:10], 0, mgr.block_table("b"))])  # b's first 10 tokens cached by an earlier step
    logits = eng.forward([(a, 0, mgr.block_table("a")), (b[10:], 10, mgr.block_table("b"))])
    with torch.inference_mode():
        want_a = tiny(torch.tensor(a))[0, -1]
        want_b = tiny(torch.tensor(b))[0, -1]
    torch.testing.assert_close(logits[0], want_a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(logits[1], want_b, rtol=1e-5, atol=1e-5)


def test_profile_engine_rows(tiny):
    shapes = [StepShape(4, 4 * 50, (), 4), StepShape(0, 0, ((32, 32),), 1), StepShape(2, 100, ((16, 48),), 3)]
    df = profile_engine(tiny, shapes, repeats=2)
    assert len(df) == 3 and (df.time_s > 0).all() and (df.median_s >= df.time_s).all()
    assert df.tokens.tolist() == [4, 32, 18] and df.attention_pairs.tolist() == [200, 32 * 32, 100 + 16 * 48]
    assert set(sv.FEATURES) <= set(df.columns)


def test_engine_errors(tiny, shakespeare_ids):
    wl = sv.poisson_workload(2, 1.0, 10, 5, seed=0)
    prompts = text_prompts(wl, shakespeare_ids)
    with pytest.raises(ValueError, match="threads=1"):
        serve(tiny, wl, prompts, threads=2)
    with pytest.raises(ValueError, match="prompt tokens given"):
        serve(tiny, wl, {0: [1, 2], 1: [3]})
    with pytest.raises(ValueError, match="context of 256"):
        serve(tiny, sv.workload_from_requests([(0.0, 250, 10)]), {0: [1] * 250})
    with pytest.raises(TypeError, match="Decoder"):
        ServingEngine(object(), 4)
    with pytest.raises(ValueError, match="clock must be one of"):
        serve(tiny, wl, prompts, clock="sundial")


def test_engine_on_smollm2_matches_plain_generation():
    smol = uv.load_smollm2(progress=False)
    from unveiled.smollm2 import smollm2_tokenizer

    ids = smollm2_tokenizer().encode(corpus_split("val")[:20_000])
    wl = sv.poisson_workload(4, 50.0, sv.uniform_lengths(20, 60), sv.uniform_lengths(3, 8), seed=2)
    prompts = text_prompts(wl, ids, seed=2)
    res = serve(smol, wl, prompts, "chunked", num_blocks=64, max_batch=4, max_batched_tokens=32)
    assert res.generated == reference(smol, prompts, wl)
