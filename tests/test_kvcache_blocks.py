"""BlockManager extensions for serving (Chapter 9): swapping to a host pool and prefix-cache look-ups."""

from __future__ import annotations

import pytest

from unveiled.kvcache import BlockManager, OutOfBlocksError
from unveiled.kvcache.paged import BlockManager as PagedBlockManager


def test_the_manager_is_one_implementation():
    assert PagedBlockManager is BlockManager


def test_swap_out_and_in_round_trip():
    m = BlockManager(4, num_blocks=8, host_blocks=4)
    m.add("a", 10)  # 3 blocks
    m.add("b", 4)  # 1 block
    table = m.block_table("a")
    pairs = m.swap_out("a")
    assert [d for d, _ in pairs] == table and len({h for _, h in pairs}) == 3
    assert m.allocator.num_used == 1 and m.host.num_used == 3
    assert m.sequences == ["b"] and m.swapped == ["a"] and m.length("a") == 10
    with pytest.raises(KeyError, match="swapped out"):
        m.append("a", 1)
    back = m.swap_in("a")
    assert [h for h, _ in back] == [h for _, h in pairs]
    assert m.host.num_used == 0 and m.allocator.num_used == 4 and m.length("a") == 10
    m.append("a", 3)  # grows normally afterwards
    assert len(m.block_table("a")) == 4


def test_swap_is_all_or_nothing():
    m = BlockManager(4, num_blocks=4, host_blocks=2)
    m.add("a", 12)
    with pytest.raises(OutOfBlocksError, match="host blocks"):
        m.swap_out("a")
    assert m.sequences == ["a"] and m.allocator.num_used == 3 and m.host.num_used == 0
    m2 = BlockManager(4, num_blocks=4, host_blocks=4)
    m2.add("a", 12)
    m2.swap_out("a")
    m2.add("b", 8)
    with pytest.raises(OutOfBlocksError, match="swapping in"):
        m2.swap_in("a")
    assert m2.swapped == ["a"] and m2.host.num_used == 3
    m2.free("a")  # freeing a swapped sequence returns its host blocks
    assert m2.host.num_used == 0 and m2.swapped == []


def test_swapping_a_shared_block_keeps_it_for_the_other_reader():
    m = BlockManager(4, num_blocks=8, host_blocks=8)
    m.add("p", 8)
    m.fork("p", "c")
    m.swap_out("c")
    assert m.allocator.num_used == 2 and all(m.allocator.refcount(b) == 1 for b in m.block_table("p"))
    m.swap_in("c")
    assert m.allocator.num_used == 4  # the copy comes back as private blocks


def test_cached_prefix_counts_live_full_blocks():
    m = BlockManager(4, num_blocks=16, prefix_caching=True)
    assert m.cached_prefix(list(range(12))) == 0
    m.add("a", list(range(10)))  # two full blocks hashed, one partial
    assert m.cached_prefix(list(range(12))) == 8
    assert m.cached_prefix([0, 1, 2, 3, 99, 5, 6, 7]) == 4  # the chain breaks at the second block
    assert m.cached_prefix([9, 1, 2, 3]) == 0
    m.free("a")
    assert m.cached_prefix(list(range(12))) == 0  # freed blocks leave the cache
    assert BlockManager(4, num_blocks=4).cached_prefix(list(range(8))) == 0  # no prefix caching
