"""The analyzer against real PyTorch decoders built from the same config.json (on the meta device).

Two independent checks of the exact convention: the FLOPs of every matrix-product operator equal what
``torch.utils.flop_counter.FlopCounterMode`` counts in a reference decoder (prefill, and a decode step with a
KV cache) for dense GQA, MoE and MLA models; and the parameter count derived from the config equals the sum
of the reference model's parameter sizes for every shipped config.
"""

from __future__ import annotations

import json

import pytest
import torch
from reference_decoders import RefDecoder
from torch.utils.flop_counter import FlopCounterMode

import unveiled as uv

ATTN_OPS = {"q_proj", "k_proj", "v_proj", "o_proj", "qk_matmul", "sv_matmul", "q_a_proj", "q_b_proj",
            "kv_a_proj_with_mqa", "kv_b_proj", "q_absorb", "o_absorb"}


def raw_config(name: str) -> dict:
    return json.loads(uv.data_file(f"model_configs/{name}.json").read_text())


def module_flops(model: torch.nn.Module, tokens: torch.Tensor, **kw) -> dict[str, int]:
    with FlopCounterMode(display=False) as fc:
        model(tokens, **kw)
    return {k: int(sum(v.values())) for k, v in fc.get_flop_counts().items()}


def op_modules(model, op: str) -> list[str]:
    """Fully qualified names (as FlopCounterMode reports them) of the reference modules of operator ``op``."""
    if not hasattr(model, "_fqns"):
        model._fqns = [f"RefDecoder.{n}" for n, _ in model.named_modules() if n]
    names = model._fqns
    if op == "lm_head":
        return [k for k in names if k in ("RefDecoder.lm_head", "RefDecoder.head")]
    if op in ("project_in", "project_out"):
        return [f"RefDecoder.{op}"]
    suffix = (".self_attn." if op in ATTN_OPS else ".mlp.") + op
    return [k for k in names if k.endswith(suffix)]


def bias_flops(model, op: str, tokens: int) -> int:
    """Bias additions of the operator's Linear modules (FlopCounterMode counts addmm as the product only)."""
    keys = set(op_modules(model, op))
    return sum(tokens * m.out_features for n, m in model.named_modules()
               if f"RefDecoder.{n}" in keys and isinstance(m, torch.nn.Linear) and m.bias is not None)


def reference_op_flops(model, counts: dict[str, int], op: str, tokens_per_linear: int) -> int:
    """FLOPs of the reference modules that implement analyzer operator ``op``, plus their bias adds."""
    return sum(counts.get(k, 0) for k in op_modules(model, op)) + bias_flops(model, op, tokens_per_linear)


def check_matmul_flops(name: str, stage: str, batch: int, seq_len: int, logits: str = "all"):
    cfg = raw_config(name)
    model = RefDecoder(cfg)
    spec = uv.model_spec(name)
    if stage == "prefill":
        tokens = torch.zeros(batch, seq_len, dtype=torch.long, device="meta")
        counts = module_flops(model, tokens, logits=logits)
        n_tokens = batch * seq_len
    else:
        window = spec.sliding_window
        cached = (min(seq_len, window) if window else seq_len) - 1
        tokens = torch.zeros(batch, 1, dtype=torch.long, device="meta")
        counts = module_flops(model, tokens, cache_len=cached, decode=True)
        n_tokens = batch
    a = uv.analyze(name, "a6000", stage=stage, batch=batch, seq_len=seq_len, logits=logits, check_context=False)
    ops = a.ops[a.ops.op.isin(_matmul_ops(a))]
    assert len(ops) >= 5
    accounted = 0
    for _, row in ops.iterrows():
        ref = reference_op_flops(model, counts, row.op, n_tokens)
        ours = row["count"] * row.flops
        assert ours == pytest.approx(ref, rel=1e-12), f"{name} {stage} {row.op}: analyzer {ours:.6g} vs torch {ref:.6g}"
        accounted += ref
    # every matrix product of the reference model belongs to one of the analyzer's operators
    biases = sum(bias_flops(model, op, n_tokens) for op in ops.op)
    assert counts["Global"] + biases == pytest.approx(accounted, rel=1e-12), f"{name} {stage}: unaccounted FLOPs"


def _matmul_ops(a) -> list[str]:
    ev = a._ev
    return [n for n, k in zip(ev.names, ev.kinds, strict=True) if k in ("gemm", "attention")]


DENSE = ["llama-3-8b", "llama-2-7b", "qwen2.5-7b", "gemma-2b", "qwen3-0.6b", "mistral-7b", "opt-125m", "gpt2",
         "opt-350m"]
MOE = ["mixtral-8x7b", "qwen1.5-moe-a2.7b", "qwen3-30b-a3b"]
MLA = ["deepseek-v2-lite", "deepseek-v2"]


@pytest.mark.parametrize("name", DENSE + MOE + MLA)
def test_prefill_matmul_flops_match_flop_counter(name):
    check_matmul_flops(name, "prefill", batch=2, seq_len=7)


@pytest.mark.parametrize("name", ["llama-3-8b", "qwen1.5-moe-a2.7b", "deepseek-v2-lite"])
def test_prefill_last_token_logits(name):
    check_matmul_flops(name, "prefill", batch=2, seq_len=3, logits="last")


@pytest.mark.parametrize("name", DENSE + MOE + MLA)
def test_decode_step_matmul_flops_match_flop_counter(name):
    check_matmul_flops(name, "decode", batch=3, seq_len=37)


def test_decode_beyond_the_sliding_window_attends_to_the_window_only():
    # Mistral keeps the last 4,096 tokens: a cache of 5,000 costs the same attention as one of 4,096
    check_matmul_flops("mistral-7b", "decode", batch=2, seq_len=5000)
    a = uv.analyze("mistral-7b", "a6000", stage="decode", seq_len=5000).ops.set_index("op")
    b = uv.analyze("mistral-7b", "a6000", stage="decode", seq_len=4096).ops.set_index("op")
    assert a.loc["qk_matmul", "flops"] == b.loc["qk_matmul", "flops"]


@pytest.mark.parametrize("name", uv.model_names())
def test_param_count_equals_reference_module_sizes(name):
    model = RefDecoder(raw_config(name))
    assert uv.model_spec(name).param_count() == sum(p.numel() for p in model.parameters())
