"""Paged KV memory: paged attention equals contiguous attention; the allocator and block tables keep their
books (property tests); copy-on-write and prefix sharing behave; the serving simulation adds up."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unveiled.kvcache import (
    BlockAllocator,
    BlockManager,
    OutOfBlocksError,
    PagedKVCache,
    gather_kv,
    paged_attention,
)
from unveiled.kvcache.serving import (
    admit,
    block_size_sweep,
    parallel_sampling_savings,
    prefix_sharing_savings,
    request_stream,
)
from unveiled.models import Decoder, DecoderConfig

CFG = DecoderConfig(vocab_size=50, hidden_size=64, num_layers=2, num_heads=4, num_kv_heads=2,
                    intermediate_size=96, max_seq_len=128)


@pytest.fixture(scope="module")
def model() -> Decoder:
    return Decoder(CFG, seed=2).eval().requires_grad_(False)


def contiguous_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """q [H, d], k/v [L, K, d] -> [H, d], the plain reference."""
    rep = q.shape[0] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
    w = (torch.einsum("hd,lhd->hl", q, k) / math.sqrt(q.shape[1])).softmax(-1)
    return torch.einsum("hl,lhd->hd", w, v)


# ---- paged attention == contiguous attention -----------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(num_seqs=st.integers(1, 4), kv_heads=st.sampled_from([1, 2, 4]), group=st.sampled_from([1, 2, 3]),
       d=st.sampled_from([4, 8, 16]), block_size=st.integers(1, 8), data=st.data())
def test_paged_attention_equals_contiguous_attention(num_seqs, kv_heads, group, d, block_size, data):
    heads = kv_heads * group
    lengths = [data.draw(st.integers(1, 40)) for _ in range(num_seqs)]
    seed = data.draw(st.integers(0, 10_000))
    gen = torch.Generator().manual_seed(seed)
    needed = [math.ceil(n / block_size) for n in lengths]
    num_blocks = sum(needed) + data.draw(st.integers(0, 5))
    perm = torch.randperm(num_blocks, generator=gen).tolist()  # scattered, out-of-order physical blocks
    tables, start = [], 0
    for nb in needed:
        tables.append(perm[start : start + nb])
        start += nb
    keys = [torch.randn(n, kv_heads, d, generator=gen) for n in lengths]
    values = [torch.randn(n, kv_heads, d, generator=gen) for n in lengths]
    k_pool = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen)  # garbage in unused slots
    v_pool = torch.randn(num_blocks, block_size, kv_heads, d, generator=gen)
    for table, k, v in zip(tables, keys, values, strict=True):
        for t in range(len(k)):
            k_pool[table[t // block_size], t % block_size] = k[t]
            v_pool[table[t // block_size], t % block_size] = v[t]
    q = torch.randn(num_seqs, heads, d, generator=gen)
    out = paged_attention(q, k_pool, v_pool, tables, lengths)
    for i in range(num_seqs):
        torch.testing.assert_close(out[i], contiguous_attention(q[i], keys[i], values[i]), rtol=1e-5, atol=1e-6)
        assert torch.equal(gather_kv(k_pool, tables[i], lengths[i]), keys[i])


def test_paged_attention_matches_gather_then_attend_to_fp64_rounding():
    gen = torch.Generator().manual_seed(0)
    kp, vp = torch.randn(9, 4, 2, 8, generator=gen, dtype=torch.float64), torch.randn(9, 4, 2, 8, generator=gen, dtype=torch.float64)
    q = torch.randn(1, 4, 8, generator=gen, dtype=torch.float64)
    table = [7, 2, 5, 0]
    out = paged_attention(q, kp, vp, [table], [14])
    ref = contiguous_attention(q[0], gather_kv(kp, table, 14), gather_kv(vp, table, 14))
    torch.testing.assert_close(out[0], ref, rtol=1e-13, atol=1e-14)


def test_paged_attention_bad_arguments():
    kp = torch.zeros(4, 2, 3, 8)
    with pytest.raises(ValueError, match="query heads"):
        paged_attention(torch.zeros(1, 4, 8), kp, kp, [[0]], [1])
    with pytest.raises(ValueError, match="one block table"):
        paged_attention(torch.zeros(2, 3, 8), kp, kp, [[0]], [1])
    with pytest.raises(ValueError, match="cannot hold"):
        gather_kv(kp, [0, 1], 5)


# ---- the paged cache inside the decoder ----------------------------------------------------------


@settings(max_examples=15, deadline=None)
@given(block_size=st.sampled_from([1, 3, 4, 16]), sizes=st.lists(st.integers(1, 9), min_size=1, max_size=6),
       batch=st.integers(1, 3), seed=st.integers(0, 100))
def test_paged_cache_gives_the_contiguous_result(model, block_size, sizes, batch, seed):
    x = torch.randint(0, CFG.vocab_size, (batch, sum(sizes)), generator=torch.Generator().manual_seed(seed))
    paged, plain = PagedKVCache(block_size), model.new_cache()
    start = 0
    for s in sizes:
        a = model(x[:, start : start + s], paged)
        b = model(x[:, start : start + s], plain)
        torch.testing.assert_close(a, b, rtol=0, atol=1e-5)
        start += s
    assert len(paged) == paged.offset == start
    st_ = paged.stats()
    assert st_.used_blocks == batch * math.ceil(start / block_size)
    assert st_.internal_fragmentation_tokens <= batch * (block_size - 1)


def test_paged_cache_crop_and_continue(model):
    x = torch.randint(0, CFG.vocab_size, (1, 30), generator=torch.Generator().manual_seed(1))
    cache = PagedKVCache(4)
    model(x[:, :20], cache)
    cache.crop(13)
    assert len(cache) == 13 and cache.stats().used_blocks == 4
    out = model(x[:, 13:30], cache)
    torch.testing.assert_close(out, model(x)[:, 13:], rtol=0, atol=1e-5)


def test_fork_shares_blocks_and_copy_on_write_keeps_the_parent_intact(model):
    x = torch.randint(0, CFG.vocab_size, (1, 40), generator=torch.Generator().manual_seed(3))
    parent = PagedKVCache(4)
    model(x[:, :10], parent)  # 10 tokens: blocks 0, 1 full, block 2 half full
    keys_before = parent.keys(0)
    child = parent.fork()
    assert parent.block_tables() == child.block_tables() and parent.stats().used_blocks == 3
    a = model(x[:, 10:16], child)  # writes into the shared, half-full block: copy-on-write
    assert child.block_tables()[0][:2] == parent.block_tables()[0][:2]
    assert child.block_tables()[0][2] != parent.block_tables()[0][2]
    assert torch.equal(parent.keys(0), keys_before)
    assert torch.equal(child.keys(0)[:, :, :10], keys_before)
    b = model(x[:, 20:26], parent)
    torch.testing.assert_close(a, model(x[:, :16])[:, 10:], rtol=0, atol=1e-5)
    torch.testing.assert_close(b, model(torch.cat([x[:, :10], x[:, 20:26]], 1))[:, 10:], rtol=0, atol=1e-5)
    # 2 shared blocks + 2 each of their own
    assert parent.stats().used_blocks == 6
    child.release()
    parent.release()
    assert parent.stats().used_blocks == 0


def test_paged_cache_with_a_fixed_pool_runs_out_clearly(model):
    cache = PagedKVCache(4, num_blocks=2)
    with pytest.raises(OutOfBlocksError, match="more blocks"):
        model(torch.zeros(1, 9, dtype=torch.long), cache)


@pytest.mark.parametrize(("block_size", "error"), [(0, ValueError), (-3, ValueError), (1.5, TypeError),
                                                   (True, TypeError)])
def test_block_size_must_be_a_positive_int(block_size, error):
    with pytest.raises(error, match="block_size"):
        PagedKVCache(block_size)
    with pytest.raises(error, match="block_size"):
        BlockManager(block_size)


# ---- the allocator and the block manager (property tests) ---------------------------------------


@settings(max_examples=100, deadline=None)
@given(num_blocks=st.integers(0, 12), ops=st.lists(st.tuples(st.sampled_from(["alloc", "share", "free"]),
                                                              st.integers(0, 50)), max_size=80))
def test_allocator_never_hands_out_a_block_twice_and_frees_all(num_blocks, ops):
    alloc = BlockAllocator(num_blocks)
    refs: dict[int, int] = {}
    for op, pick in ops:
        if op == "alloc":
            if alloc.num_free == 0:
                with pytest.raises(OutOfBlocksError):
                    alloc.allocate()
                continue
            b = alloc.allocate()
            assert b not in refs, f"block {b} handed out while still in use"
            refs[b] = 1
        elif refs:
            b = sorted(refs)[pick % len(refs)]
            if op == "share":
                alloc.share(b)
                refs[b] += 1
            else:
                alloc.free(b)
                refs[b] -= 1
                if refs[b] == 0:
                    del refs[b]
        assert alloc.num_used == len(refs) and alloc.num_used + alloc.num_free == num_blocks
        assert all(alloc.refcount(b) == n for b, n in refs.items())
    for b, n in list(refs.items()):
        for _ in range(n):
            alloc.free(b)
    assert alloc.num_free == num_blocks and alloc.num_used == 0


def test_allocator_rejects_double_free_and_unknown_blocks():
    alloc = BlockAllocator(2)
    b = alloc.allocate()
    alloc.free(b)
    with pytest.raises(ValueError, match="double free"):
        alloc.free(b)
    with pytest.raises(ValueError, match="no block"):
        alloc.free(7)
    with pytest.raises(ValueError, match="free"):
        alloc.share(b)


OPS = st.lists(st.tuples(st.sampled_from(["add", "append", "fork", "truncate", "free"]), st.integers(0, 1000),
                         st.integers(0, 20)), max_size=60)


@settings(max_examples=80, deadline=None)
@given(block_size=st.integers(1, 6), num_blocks=st.sampled_from([None, 8, 30]), prefix=st.booleans(), ops=OPS)
def test_block_manager_keeps_its_books(block_size, num_blocks, prefix, ops):
    mgr = BlockManager(block_size, num_blocks, prefix_caching=prefix)
    next_id = 0
    for op, pick, n in ops:
        live = mgr.sequences
        try:
            if op == "add" or not live:
                prompt = [pick % 3] * n if prefix else n  # repetitive prompts exercise prefix hits
                mgr.add(next_id, prompt)
                next_id += 1
            else:
                seq = live[pick % len(live)]
                if op == "append":
                    mgr.append(seq, n)
                elif op == "fork":
                    mgr.fork(seq, next_id)
                    next_id += 1
                elif op == "truncate":
                    mgr.truncate(seq, min(n, mgr.length(seq)))
                else:
                    mgr.free(seq)
        except OutOfBlocksError:
            pass
        # every block's reference count equals the number of tables holding it; no free block is referenced
        held: dict[int, int] = {}
        for s in mgr.sequences:
            table = mgr.block_table(s)
            assert len(table) == math.ceil(mgr.length(s) / block_size)
            for b in table:
                held[b] = held.get(b, 0) + 1
        assert mgr.allocator.num_used == len(held)
        assert all(mgr.allocator.refcount(b) == c for b, c in held.items())
        st_ = mgr.stats()
        assert 0 <= st_.internal_fragmentation_tokens <= st_.used_blocks * (block_size - 1)
    for s in mgr.sequences:
        mgr.free(s)
    assert mgr.allocator.num_used == 0 and mgr.allocator.num_free == mgr.allocator.num_blocks


def test_an_admission_that_does_not_fit_allocates_nothing():
    mgr = BlockManager(4, 3)
    mgr.add("a", 8)
    with pytest.raises(OutOfBlocksError):
        mgr.add("b", 9)
    assert mgr.sequences == ["a"] and mgr.allocator.num_free == 1


@settings(max_examples=40, deadline=None)
@given(block_size=st.integers(1, 8), common=st.integers(0, 40), tail_a=st.integers(0, 10), tail_b=st.integers(0, 10))
def test_two_prompts_share_exactly_their_common_full_blocks(block_size, common, tail_a, tail_b):
    prefix = list(range(common))
    a = prefix + [1000 + i for i in range(tail_a)]
    b = prefix + [2000 + i for i in range(tail_b)]
    mgr = BlockManager(block_size, prefix_caching=True)
    mgr.add("a", a)
    mgr.add("b", b)
    ta, tb = mgr.block_table("a"), mgr.block_table("b")
    shared = len(set(ta) & set(tb))
    assert shared == common // block_size
    assert ta[:shared] == tb[:shared]


def test_equal_blocks_at_different_depths_are_not_conflated():
    mgr = BlockManager(2, prefix_caching=True)
    mgr.add("a", [1, 1, 1, 1])  # two full blocks with the same tokens
    table = mgr.block_table("a")
    assert table[0] != table[1]


def test_prefix_caching_needs_token_ids():
    with pytest.raises(ValueError, match="token ids"):
        BlockManager(4, prefix_caching=True).add("a", 10)
    with pytest.raises(KeyError, match="unknown sequence"):
        BlockManager(4).append("nope", 1)


# ---- the serving simulation ------------------------------------------------------------------------


def test_paging_fits_more_sequences_than_reserving_the_maximum():
    reqs = request_stream(500, seed=1)
    df = block_size_sweep(reqs, 40_000, block_sizes=(1, 16, 256))
    by = {(r.layout, r.block_size if r.layout == "paged" else None): r for r in df.itertuples()}
    reserve_max, exact = by[("reserve-max", None)], by[("reserve-exact", None)]
    paged1, paged16, paged256 = by[("paged", 1)], by[("paged", 16)], by[("paged", 256)]
    assert reserve_max.sequences == 40_000 // 2048
    assert paged1.sequences == exact.sequences and paged1.waste_fraction == 0
    assert reserve_max.sequences < paged256.sequences <= paged16.sequences <= paged1.sequences
    assert paged16.reserved - paged16.tokens <= paged16.sequences * 15


def test_admit_bad_layout():
    with pytest.raises(ValueError, match="layout"):
        admit(request_stream(3), 1000, layout="buddy")


def test_prefix_sharing_saves_the_shared_full_blocks():
    out = prefix_sharing_savings(10, shared_prefix=100, unique_lens=[5, 17, 33, 0, 1, 2, 3, 4, 50, 64], block_size=16)
    assert out["blocks_saved"] == out["expected_saved"] == 9 * (100 // 16)


@pytest.mark.parametrize(("prompt", "samples", "copies"), [(30, 4, 3), (32, 4, 0), (5, 1, 0)])
def test_parallel_sampling_copies_the_shared_partial_block_once_per_extra_writer(prompt, samples, copies):
    out = parallel_sampling_savings(prompt, 20, samples, block_size=16)
    assert out["copy_on_write_copies"] == copies
    shared = prompt // 16
    assert out["blocks_forked"] == shared + samples * (math.ceil((prompt + 20) / 16) - shared)
