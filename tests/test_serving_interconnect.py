"""Host and GPU-to-GPU links (sourced data) and tensor parallelism on paper."""

from __future__ import annotations

import pytest

import unveiled as uv
import unveiled.serving as sv


def test_interconnect_table_is_sourced_and_consistent():
    t = sv.interconnect_table()
    assert t.source_url.str.startswith("https://").all()
    assert ((t.per_direction_gb_s * 2 - t.bidirectional_gb_s).abs() < 1e-9).all()
    for dev in t.device.unique():
        uv.get_device(dev)  # every device is in the hardware registry
        assert "host" in set(t.link[t.device == dev])


def test_link_bandwidth():
    assert sv.link_bandwidth("a100-80gb", "peer") == 300e9
    assert sv.link_bandwidth("h100-sxm", "host") == 64e9
    assert sv.link_bandwidth("l40s", "peer") == sv.link_bandwidth("l40s", "host")  # no NVLink: PCIe
    with pytest.raises(ValueError, match="no sourced interconnect data"):
        sv.link_bandwidth("tpu-v5e")
    with pytest.raises(ValueError, match="link must be one of"):
        sv.link_bandwidth("a100-80gb", "wifi")


def test_ring_allreduce_moves_two_p_minus_one_over_p():
    assert sv.allreduce_time(1e9, 1, 1e9) == 0
    assert sv.allreduce_time(1e9, 2, 1e9) == pytest.approx(1.0)
    assert sv.allreduce_time(1e9, 8, 1e9) == pytest.approx(2 * 7 / 8)
    assert sv.allreduce_time(0, 4, 1e9, latency_s=1e-6) == pytest.approx(6e-6)


def test_shard_splits_heads_mlp_and_vocabulary():
    s = sv.shard("llama-3-8b", 4)
    full = uv.model_spec("llama-3-8b")
    assert (s.num_heads, s.num_kv_heads, s.intermediate_size) == (8, 2, 3584)
    assert s.hidden_size == full.hidden_size and s.head_dim == full.head_dim
    assert sv.shard("llama-3-8b", 16).num_kv_heads == 1  # 8 KV heads over 16 GPUs: replicated
    with pytest.raises(ValueError, match="cannot split evenly"):
        sv.shard("llama-2-7b", 3)


def test_tensor_parallel_decode_table():
    t = sv.tensor_parallel_decode("llama-2-70b", "h100-sxm", gpus=(1, 2, 4, 8), batch=16, seq_len=2048)
    one = t[t.gpus == 1]
    assert (one.allreduce_ms == 0).all() and one.speedup.tolist() == pytest.approx([1.0, 1.0])
    nv = t[t.link == "peer"].set_index("gpus")
    pcie = t[t.link == "host"].set_index("gpus")
    assert (nv.compute_ms.diff().dropna() < 0).all()  # each GPU reads less of the weights and the cache
    assert (nv.allreduce_ms <= pcie.allreduce_ms).all()  # NVLink is faster than PCIe
    # two all-reduces per layer of batch x hidden fp16 activations
    assert nv.loc[2, "allreduce_bytes"] == 2 * 80 * 16 * 8192 * 2
