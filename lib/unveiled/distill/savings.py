"""What the smaller model buys: teacher vs student decode cost on the roofline, and measured on this CPU.

At small batch a decode step is memory-bound, so a student's speedup is about its ratio of bytes read per
step, and its smaller weights leave room for a larger batch (the analyzer's view, [Yuan et al. 2024]); on a
CPU, tiny models are overhead-bound instead, which :func:`decode_on_this_machine` shows next to the
prediction. Introduced in Chapter 4.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import pandas as pd
import torch

from .._validate import check_int, unknown_name
from ..analyzer import analyze, max_batch, model_from_hf_config, sweep
from ..hardware import get_device

__all__ = [
    "EXPLORER_DEVICES",
    "PAIRS",
    "decode_on_this_machine",
    "measure_decode",
    "teacher_student_costs",
    "teacher_student_limits",
]

# --------------------------------------------------------------------------------------------------
# Measured decode speed (student vs teacher on this CPU)
# --------------------------------------------------------------------------------------------------


@torch.inference_mode()
def measure_decode(
    model: torch.nn.Module,
    batch: int = 1,
    prompt_len: int = 64,
    new_tokens: int = 64,
    repeats: int = 3,
    vocab_size: int | None = None,
) -> dict:
    """Time one prefill of ``prompt_len`` tokens and ``new_tokens`` decode steps with a KV cache.

    Returns the best of ``repeats`` runs (the least disturbed on a shared machine): ``ttft_s`` (prefill),
    ``tpot_s`` (mean time per decode step) and ``tokens_per_s`` (``batch`` / ``tpot_s``), plus the weight
    bytes in fp32 as run. Greedy decoding of random prompts: the time does not depend on the text.
    Introduced in Chapter 4.
    """
    batch = check_int("batch", batch)
    prompt_len = check_int("prompt_len", prompt_len)
    new_tokens = check_int("new_tokens", new_tokens)
    repeats = check_int("repeats", repeats)
    v = vocab_size or model.config.vocab_size
    prompt = torch.randint(0, v, (batch, prompt_len), generator=torch.Generator().manual_seed(0))
    best_ttft, best_tpot = math.inf, math.inf
    for _ in range(repeats):
        cache = model.new_cache()
        t0 = time.perf_counter()
        logits = model(prompt, cache)[:, -1]
        t1 = time.perf_counter()
        for _ in range(new_tokens):
            logits = model(logits.argmax(-1)[:, None], cache)[:, -1]
        t2 = time.perf_counter()
        best_ttft, best_tpot = min(best_ttft, t1 - t0), min(best_tpot, (t2 - t1) / new_tokens)
    params = list({id(p): p for p in model.parameters()}.values())
    return {"batch": batch, "prompt_len": prompt_len, "ttft_s": best_ttft, "tpot_s": best_tpot,
            "tokens_per_s": batch / best_tpot, "weight_bytes": sum(p.numel() * p.element_size() for p in params)}


# --------------------------------------------------------------------------------------------------
# The roofline view: what the smaller model buys
# --------------------------------------------------------------------------------------------------

#: Teacher → student pairs of real model families (analyzer names), used by the roofline view and explorer.
PAIRS: dict[str, tuple[str, str]] = {
    "Llama-2 13B → 7B": ("llama-2-13b", "llama-2-7b"),
    "Llama-3 70B → 8B": ("llama-3-70b", "llama-3-8b"),
    "Qwen2.5 7B → 0.5B": ("qwen2.5-7b", "qwen2.5-0.5b"),
    "Qwen3 8B → 0.6B": ("qwen3-8b", "qwen3-0.6b"),
}
#: Devices of the static explorer (any registered device works in the live one).
EXPLORER_DEVICES = ("a6000", "a100-80gb", "h100-sxm", "rtx-4090", "l4", "jetson-agx-orin", "m2-ultra", "i9-13900k")


def _pairs(pairs) -> dict[str, tuple[str, str]]:
    if pairs is None:
        return dict(PAIRS)
    if isinstance(pairs, dict):
        return dict(pairs)
    out = {}
    for item in pairs:
        if isinstance(item, str):
            if item not in PAIRS:
                raise unknown_name("teacher/student pair", item, PAIRS)
            out[item] = PAIRS[item]
        else:
            teacher, student = item
            out[f"{teacher} → {student}"] = (teacher, student)
    return out


def teacher_student_costs(
    pairs=None,
    devices: Sequence[str] = EXPLORER_DEVICES,
    batches: Sequence[int] = (1, 4, 16, 64, 256),
    seq_lens: Sequence[int] = (512, 1024, 2048, 4096),
    w_bits: int = 16,
    a_bits: int = 16,
) -> pd.DataFrame:
    """Teacher vs student decode cost on each device, from the analyzer's roofline model [Yuan et al. 2024].

    One row per pair, role (``teacher``/``student``), device, batch and context ``seq_len`` (tokens in the KV
    cache): ``tpot_s`` (one decode step), ``ttft_s`` (prefill of a ``seq_len``-token prompt at that batch),
    ``weights_bytes``, ``kv_cache_bytes``, ``memory_bytes``, ``capacity_bytes`` and ``fits``. At small batch
    decoding is memory-bound, so the student's speedup is about its ratio of bytes read per step.
    Introduced in Chapter 4.
    """

    pairs = _pairs(pairs)
    frames = []
    for label, (teacher, student) in pairs.items():
        for role, name in (("teacher", teacher), ("student", student)):
            common = dict(batch=list(batches), seq_len=list(seq_lens), w_bits=w_bits, a_bits=a_bits,
                          check_context=False)
            dec = sweep(name, list(devices), stage="decode", **common)
            pre = sweep(name, list(devices), stage="prefill", **common)
            dec = dec.assign(pair=label, role=role, tpot_s=dec.time_s, ttft_s=pre.time_s.to_numpy())
            frames.append(dec)
    df = pd.concat(frames, ignore_index=True)
    df["capacity_bytes"] = [get_device(d).memory_bytes for d in df.device]
    cols = ["pair", "role", "model", "device", "batch", "seq_len", "w_bits", "tpot_s", "ttft_s", "weights_bytes",
            "kv_cache_bytes", "memory_bytes", "capacity_bytes", "fits"]
    return df[cols]


def teacher_student_limits(
    pairs=None,
    devices: Sequence[str] = EXPLORER_DEVICES,
    seq_lens: Sequence[int] = (512, 1024, 2048, 4096),
    w_bits: int = 16,
    a_bits: int = 16,
) -> pd.DataFrame:
    """Per pair, role, device and context: the weights, TTFT and TPOT at batch 1 and the largest batch that fits.

    ``max_batch`` is the analyzer's :func:`~unveiled.analyzer.max_batch` (weights + KV cache + activations
    within the device's memory; 0 if even one sequence does not fit). The student's smaller weights leave
    room for more KV cache, so it serves larger batches on the same device. Introduced in Chapter 4.
    """

    base = teacher_student_costs(pairs, devices, batches=(1,), seq_lens=seq_lens, w_bits=w_bits, a_bits=a_bits)
    base["max_batch"] = [
        max_batch(m, d, seq_len=int(s), w_bits=w_bits, a_bits=a_bits) for m, d, s in
        zip(base.model, base.device, base.seq_len, strict=True)
    ]
    return base.drop(columns=["batch", "fits"])


def decode_on_this_machine(
    models: dict[str, torch.nn.Module],
    device,
    context: int = 128,
    new_tokens: int = 64,
    batch: int = 1,
    repeats: int = 3,
) -> pd.DataFrame:
    """Measured decode time per token of each model on this CPU next to the analyzer's roofline prediction.

    ``device`` is the measured machine (``uv.measure_machine().device``); the models run in fp32, so the
    analyzer is asked for 32-bit weights and activations with a KV cache of ``context`` tokens. A large gap
    between the two means the step is not bandwidth- or compute-bound but overhead-bound (Python and kernel
    launches), as tiny models are. Introduced in Chapter 4.
    """

    rows = []
    for name, m in models.items():
        measured = measure_decode(m, batch=batch, prompt_len=context, new_tokens=new_tokens, repeats=repeats)
        spec = model_from_hf_config(m.config.to_hf_config(), name=name)
        pred = analyze(spec, device, stage="decode", batch=batch, seq_len=context + new_tokens // 2, w_bits=32,
                       a_bits=32, check_context=False)
        rows.append({"model": name, "parameters": m.num_parameters(), "weights_bytes": pred.memory.weights,
                     "kv_cache_bytes_per_token": pred.memory.kv_cache / (batch * (context + new_tokens // 2)),
                     "predicted_tpot_s": pred.time_s, "measured_tpot_s": measured["tpot_s"],
                     "measured_ttft_s": measured["ttft_s"]})
    df = pd.DataFrame(rows)
    df["overhead_factor"] = df.measured_tpot_s / df.predicted_tpot_s
    return df
