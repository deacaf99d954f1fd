"""Chapter 6's claims, asserted against the cached SmolLM2 sweep, the serving simulation and the tiny model
(tests/claims.py explains the registry)."""

from __future__ import annotations

import pytest
import torch

import unveiled as uv
from claims import claim
from unveiled import kvcache as kv
from unveiled.kvcache import experiments as kvexp
from unveiled.threads import torch_threads

PAGE = "chapters/06_kv_cache.ipynb"
KIVI, TOKEN = "KIVI (K per channel, V per token), R=32", "per token (K and V), R=32"


@pytest.fixture(scope="module")
def ppl():
    q = uv.results.cached("kvcache.experiments.smollm2_kv_quant")
    table = q.pivot_table(index="scheme", columns="kv_bits", values="perplexity", sort=False)
    return table / table.loc["full precision", 16]


@claim(PAGE, "a 4-bit cache costs almost nothing and a 2-bit one raises SmolLM2's perplexity by 18 %, for about a "
             "third and a fifth of the bytes at long contexts",
       "keeps a real model's perplexity almost unchanged at 4 bits and raises it by 18 % at 2 bits, where per-token "
       "keys with the same window raise it by 74 %")
def test_kivi_costs_almost_nothing_at_4_bits_and_18_percent_at_2(ppl):
    assert abs(ppl.loc[KIVI, 4] - 1) < 0.01  # "almost nothing", "almost unchanged"
    assert round(100 * (ppl.loc[KIVI, 2] - 1)) == 18
    assert round(100 * (ppl.loc[TOKEN, 2] - 1)) == 74
    key_grouping, value_grouping, window = kvexp.QUANT_SCHEMES[KIVI]
    share = {bits: kv.QuantizedKVCache(bits, key_grouping=key_grouping, value_grouping=value_grouping, group_size=32,
                                       residual=window).bits_per_element(64, 32768) / 16 for bits in (4, 2)}
    assert abs(share[4] - 1 / 3) < 0.03 and abs(share[2] - 1 / 5) < 0.02, share  # scales and window counted


@claim(PAGE, "so several times more sequences fit")
def test_paging_fits_several_times_more_sequences():
    a100 = uv.analyze("llama-2-13b", "a100-80gb", stage="decode", seq_len=1)
    slots = int((a100.memory.capacity - a100.memory.weights) // kv.kv_bytes_per_token("llama-2-13b"))
    served = kv.block_size_sweep(kv.request_stream(1000, seed=0, max_len=2048), slots, max_len=2048)
    by = {(r.layout, r.block_size if r.layout == "paged" else None): r.sequences for r in served.itertuples()}
    assert by["paged", 16] >= 3 * by["reserve-max", None]


@claim(PAGE, "shared blocks with copy-on-write make parallel samples and common prefixes nearly free")
def test_shared_prefixes_and_samples_cost_at_most_one_block_each():
    out = kv.prefix_sharing_savings(32, shared_prefix=1000, unique_lens=[50] * 32, block_size=16)
    assert out["blocks_saved"] == out["expected_saved"] == 31 * (1000 // 16)  # each extra request: one partial block
    forked = kv.parallel_sampling_savings(1000, 20, 4, block_size=16)
    assert forked["copy_on_write_copies"] <= 3  # one copied partial block per extra writer


@claim(PAGE, "Paged attention computes exactly the contiguous result", "computes exactly the contiguous result")
def test_paged_attention_gives_the_contiguous_result():
    model = uv.zoo.load("S")
    x = torch.randint(0, model.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode(), torch_threads(1):
        paged, plain = kv.PagedKVCache(block_size=16), model.new_cache()
        for a, b in ((0, 25), (25, 26), (26, 40)):
            torch.testing.assert_close(model(x[:, a:b], paged), model(x[:, a:b], plain), rtol=0, atol=1e-5)
    for layer in range(model.config.num_layers):
        assert torch.equal(paged.keys(layer), plain.keys(layer))  # gathered through the table, bit for bit
