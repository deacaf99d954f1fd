"""The analyzer's weight forms (pruning and factorization on the roofline), checked against independent truth:
PyTorch's own CSR tensors for the bytes, FlopCounterMode for the operations, the book's Decoder for the shapes."""

from __future__ import annotations

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import unveiled as uv
from unveiled import pruning as P
from unveiled.analyzer.sparsity import WeightForm, linear_form_cost, pruned_spec, weight_form_bytes
from unveiled.hardware import supports
from unveiled.models import Decoder, DecoderConfig
from unveiled.pruning.speed import csr_matrix, model_spec, predict_pass


@pytest.mark.parametrize("sparsity", [0.3, 0.5, 0.9])
@pytest.mark.parametrize("index_bits", [32, 64])
def test_csr_bytes_equal_pytorchs_csr_tensor(sparsity, index_bits):
    gen = torch.Generator().manual_seed(0)
    w = P.apply_mask(torch.randn(64, 96, generator=gen),
                     P.keep_mask(torch.rand(64, 96, generator=gen), sparsity, "row"))
    c = csr_matrix(w, index_bits)
    stored = sum(t.numel() * t.element_size() for t in (c.values(), c.col_indices(), c.crow_indices()))
    form = WeightForm("unstructured", sparsity=P.sparsity_of(w), storage="csr", index_bits=index_bits)
    assert weight_form_bytes(64, 96, 32, form) == pytest.approx(stored, rel=1e-12)


def test_bitmask_nm_and_dense_bytes_from_first_principles():
    assert weight_form_bytes(4096, 4096, 16) == 4096 * 4096 * 2
    # 2:4 fp16: half the values plus 2 bits of position per kept value = 0.5625 of dense
    assert weight_form_bytes(4096, 4096, 16, "2:4") / weight_form_bytes(4096, 4096, 16) == pytest.approx(0.5625)
    # 4:8 needs 3 bits per kept value
    assert weight_form_bytes(8, 8, 16, "4:8") == pytest.approx(32 * 2 + 32 * 3 / 8)
    bitmask = WeightForm("unstructured", sparsity=0.75, storage="bitmask")
    assert weight_form_bytes(100, 80, 8, bitmask) == pytest.approx(0.25 * 8000 + 8000 / 8)


def test_lowrank_operations_match_flopcounter_and_parameters():
    lin = P.LowRankLinear(torch.randn(50, 300), torch.randn(200, 50))
    x = torch.randn(7, 300)
    with FlopCounterMode(display=False) as counter:
        lin(x)
    keep = 50 * (300 + 200) / (300 * 200)
    cost = linear_form_cost(7, 200, 300, 32, 32, WeightForm("lowrank", keep=keep))
    assert cost["flops"] == counter.get_total_flops()
    assert cost["weight_bytes"] == 4 * sum(p.numel() for p in lin.parameters())
    assert linear_form_cost(7, 200, 300, form="2:4", native_sparse=True)["peak_scale"] == 2.0
    assert linear_form_cost(7, 200, 300, form="4:8", native_sparse=True)["peak_scale"] == 1.0


def test_weight_form_validation():
    for bad in ({"kind": "sparse"}, {"kind": "unstructured", "sparsity": 1.0}, {"kind": "n:m", "n": 5, "m": 4},
                {"kind": "lowrank", "keep": 0.0}, {"storage": "coo"}):
        with pytest.raises(ValueError):
            WeightForm(**bad)
    with pytest.raises(ValueError, match="weight form"):
        WeightForm.parse("half")
    assert WeightForm.parse("2:4").label == "2:4" and WeightForm.parse(None).kind == "dense"


def test_forms_on_the_roofline_decode_and_prefill():
    dense_d = predict_pass("llama-2-7b", "a100", stage="decode", seq_len=1024, w_bits=16, a_bits=16)
    dense_p = predict_pass("llama-2-7b", "a100", stage="prefill", seq_len=1024, w_bits=16, a_bits=16)
    kw = {"w_bits": 16, "a_bits": 16, "seq_len": 1024}
    # decode is memory-bound: 2:4 saves its bytes on any device; prefill is compute-bound: only native 2:4 helps
    for dev in ("a100", "v100"):
        d = predict_pass("llama-2-7b", dev, "2:4", stage="decode", **kw)
        p = predict_pass("llama-2-7b", dev, "2:4", stage="prefill", **kw)
        base_d = predict_pass("llama-2-7b", dev, stage="decode", **kw)
        base_p = predict_pass("llama-2-7b", dev, stage="prefill", **kw)
        assert d["time_s"] < 0.7 * base_d["time_s"]
        if supports(dev, "sparse_2_4") == "native":
            assert p["time_s"] < 0.7 * base_p["time_s"]
        else:
            assert p["time_s"] == pytest.approx(base_p["time_s"])
    # unstructured sparsity without sparse kernels: operations unchanged; CSR at 50% with int32 indices costs more
    csr = predict_pass("llama-2-7b", "a100", WeightForm("unstructured", sparsity=0.5, storage="csr"),
                       stage="decode", **kw)
    assert csr["flops"] == dense_d["flops"] and csr["time_s"] > dense_d["time_s"]
    lr = predict_pass("llama-2-7b", "a100", WeightForm("lowrank", keep=0.5), stage="prefill", **kw)
    assert lr["flops"] < 0.6 * dense_p["flops"] and lr["time_s"] < dense_p["time_s"]
    assert predict_pass("llama-2-7b", "a100", "dense", stage="decode", **kw) == dense_d


def test_pruned_spec_matches_the_shrunk_decoder():
    cfg = DecoderConfig(vocab_size=97, hidden_size=96, num_layers=2, num_heads=6, num_kv_heads=3,
                        intermediate_size=80, name="t")
    m = Decoder(cfg, seed=0)
    small, _ = P.structured_prune(m, P.StructuredPlan(kv_groups=1, mlp_channels=24))
    spec = pruned_spec(model_spec(m), kv_groups=1, mlp_channels=24)
    assert spec.param_breakdown()["total"].sum() == small.num_parameters()
    assert (spec.num_heads, spec.num_kv_heads, spec.intermediate_size) == (4, 2, 56)
    with pytest.raises(ValueError, match="kv_groups"):
        pruned_spec(model_spec(m), kv_groups=3)
    with pytest.raises(ValueError, match="MoE or MLA"):
        pruned_spec(uv.model_spec("mixtral-8x7b"), kv_groups=1)


def test_analyze_and_sweep_take_the_weight_form():
    kw = {"stage": "decode", "batch": 4, "seq_len": 512}
    dense = uv.analyze("llama-2-7b", "a100", **kw)
    assert uv.analyze("llama-2-7b", "a100", weight_form="dense", **kw).time_s == dense.time_s
    nm = uv.analyze("llama-2-7b", "a100", weight_form="2:4", **kw)
    assert "2:4" in repr(nm) and nm.weight_form.label == "2:4"
    linear = uv.model_spec("llama-2-7b").param_breakdown()
    linear_bytes = 2 * float(linear[linear.storage == "linear"]["total"].sum())
    assert dense.memory.weights - nm.memory.weights == pytest.approx((1 - 0.5625) * linear_bytes, rel=1e-3)
    grid = uv.sweep("llama-2-7b", "a100", stage="decode", batch=[1, 4], seq_len=512, weight_form="2:4")
    row = grid[grid.batch == 4].iloc[0]
    assert row.time_s == pytest.approx(nm.time_s, rel=1e-12) and row.weights_bytes == pytest.approx(nm.memory.weights)
    with pytest.raises(ValueError, match="conventions='exact'"):
        uv.analyze("llama-2-7b", "a100", conventions="paper", weight_form="2:4")
    lr = uv.sweep("llama-2-7b", "a100", stage="prefill", seq_len=1024, weight_form=WeightForm("lowrank", keep=0.5))
    assert lr.flops.iloc[0] < uv.analyze("llama-2-7b", "a100", stage="prefill", seq_len=1024).flops


def test_weight_forms_follow_the_precision_and_exclude_number_formats():
    # precision= and the flat bit keywords give the same weight-form costs (the form reads the resolved precision)
    kw = {"stage": "decode", "batch": 2, "seq_len": 256, "weight_form": "2:4"}
    flat = uv.analyze("llama-2-7b", "a100", w_bits=4, a_bits=16, group_size=128, **kw)
    named = uv.analyze("llama-2-7b", "a100", precision=uv.Precision(w_bits=4, group_size=128), **kw)
    assert named.bytes == pytest.approx(flat.bytes, rel=1e-12) and named.time_s == pytest.approx(flat.time_s)
    assert flat.bytes < uv.analyze("llama-2-7b", "a100", stage="decode", batch=2, seq_len=256, weight_form="2:4").bytes
    grid = uv.sweep("llama-2-7b", "a100", stage="decode", batch=2, seq_len=256, w_bits=4, group_size=128,
                    weight_form="2:4")
    assert grid.time_s.iloc[0] == pytest.approx(flat.time_s, rel=1e-12)
    with pytest.raises(ValueError, match="not both"):
        uv.analyze("llama-2-7b", "h100-sxm", number_format="fp8_e4m3", weight_form="2:4")
