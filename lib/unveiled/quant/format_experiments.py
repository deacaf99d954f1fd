"""Number formats measured on real models: the cached perplexity sweeps and per-layer errors of Chapter 10.

The survey's Table 3 rates floating point, uniform (integer) and non-uniform quantization by precision and range
in words [Yuan et al. 2024, §6.3]; these experiments put numbers on it. Every format is applied by
round-to-nearest to all block projections of a model (embedding and head kept in fp16, as in Chapter 3), and
perplexity is measured on the same held-out windows as Chapter 3's sweeps (:func:`.experiments.eval_tokens`):

* :func:`format_weight_recipes`: integer grids (INT8/INT4 per channel, in groups of 64 and 32) against FP8,
  FP6 and FP4 with one fp16 scale per channel or per group, and the block formats MXFP8/MXFP6/MXFP4 and NVFP4,
  each with its bits per weight *scales included*, so that formats are compared at equal storage;
* :func:`format_wa_recipes`: the same with the activations (each linear layer's input) quantized on the fly, per
  token or per block, the way a kernel that computes in the format must;
* :func:`layer_format_errors`: every linear layer's relative output error under each candidate format, on
  calibration inputs, which :mod:`.format_choice` turns into a per-layer format choice.

Activations are fake-quantized in float32, never through bf16/fp16 matmuls. Sweeps run on one thread and are
registered as cached experiments (``python -m unveiled.results run quant.smollm2_formats``). Introduced in
Chapter 10.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence

import pandas as pd
import torch
from torch import nn

from ..models import Decoder
from ..threads import torch_threads
from .experiments import LIVE_TOKENS, Recipe, _experiment, calibration_batch, eval_tokens, perplexities
from .formats import FormatSpec, get_format
from .layers import _check_model, model_size
from .uniform import QuantSpec

__all__ = [
    "LAYER_CANDIDATES",
    "format_label",
    "format_wa_recipes",
    "format_weight_recipes",
    "layer_format_errors",
    "run_format_recipes",
]


def _int(bits: int, group: int | None = None) -> QuantSpec:
    if group:
        return QuantSpec(bits, symmetric=True, granularity="group", group_size=group)
    return QuantSpec(bits, symmetric=True)


def _fp(element: str, granularity: str = "channel", group: int | None = None, scale: str = "fp16") -> FormatSpec:
    return FormatSpec(element, granularity, group, scale)


def _ceil(name: str) -> FormatSpec:
    """An MX format with the round-up E8M0 scale (no saturation of block maxima)."""
    return get_format(name, scale_rounding="ceil", name=f"{name} (ceil scale)")


def format_label(spec: QuantSpec | FormatSpec | None) -> str:
    """A short legend name: ``"INT4 g32"``, ``"FP8 E4M3 ch"``, ``"MXFP4"``, ``"NVFP4"``, ``"FP16"``.

    Introduced in Chapter 10."""
    if spec is None:
        return "FP16"
    if isinstance(spec, QuantSpec):
        gran = f"g{spec.group_size}" if spec.granularity == "group" else {"channel": "ch"}.get(
            spec.granularity, spec.granularity)
        return f"INT{spec.bits} {gran}" + ("" if spec.symmetric else " asym")
    if spec.name:
        base, _, rest = spec.name.partition(" ")
        return (base.upper().replace("_E", " E") + " " + rest).strip()
    elem = spec.element.upper().replace("_", " ")
    gran = {"none": "unscaled", "tensor": "tensor", "channel": "ch", "token": "token"}.get(
        spec.granularity, f"g{spec.group_size}")
    return f"{elem} {gran}" + ("" if spec.scale in ("fp16", "fp32") or spec.granularity == "none"
                               else f" {spec.scale}")


def _family(spec: QuantSpec | FormatSpec | None) -> str:
    if spec is None:
        return "FP16"
    if isinstance(spec, QuantSpec):
        return "integer"
    if spec.granularity == "group" and spec.scale in ("e8m0", "fp8_e4m3"):
        return "block FP (MX/NVFP4)"
    return "floating point"


def format_weight_recipes(kind: str = "smollm2") -> list[Recipe]:
    """Weight-only formats at 8, 6 and 4 bits: integer, minifloat (per channel / per group) and block formats.

    Integer groups are 64 and 32 on SmolLM2: its width 576 is not a multiple of 128, and INT4 g64 stores the
    4.25 bits of MXFP4. The tiny models' widths (128, 192, 352, 512) allow only groups of 32 besides per-channel
    scales. Introduced in Chapter 10."""
    groups = (None, 64, 32) if kind == "smollm2" else (None, 32)
    specs: list[QuantSpec | FormatSpec] = []
    specs += [_int(8, g) for g in groups]
    specs += [_fp("fp8_e4m3"), _fp("fp8_e5m2"), FormatSpec("fp8_e4m3"), get_format("mxfp8"), _ceil("mxfp8")]
    specs += [_fp("fp6_e2m3"), _fp("fp6_e3m2"), get_format("mxfp6"), get_format("mxfp6_e3m2")]
    specs += [_int(4, g) for g in groups]
    specs += [QuantSpec(4, granularity="group", group_size=32)]  # asymmetric, integer zero point
    specs += [_fp("fp4_e2m1"), _fp("fp4_e2m1", "group", 32), get_format("mxfp4"), _ceil("mxfp4"), get_format("nvfp4")]
    return [Recipe("FP16", "none")] + [Recipe(format_label(s), "rtn", s) for s in specs]


def format_wa_recipes(kind: str = "smollm2") -> list[Recipe]:
    """Weights and activations in the same format (what a kernel computing in that format needs).

    Integer and minifloat activations are scaled per token (dynamic); block formats quantize each token's
    blocks of 32 (16 for NVFP4, whose tensor scale is taken from the current input). Introduced in Chapter 10."""
    token = {"granularity": "token"}
    pairs: list[tuple[QuantSpec | FormatSpec, QuantSpec | FormatSpec]] = [
        (_int(8), QuantSpec(8, symmetric=True, **token)),
        (_fp("fp8_e4m3"), FormatSpec("fp8_e4m3", "token", scale="fp32")),
        (FormatSpec("fp8_e4m3", "tensor", scale="fp32"), FormatSpec("fp8_e4m3", "tensor", scale="fp32")),
        (_fp("fp8_e5m2"), FormatSpec("fp8_e5m2", "token", scale="fp32")),
        (get_format("mxfp8"), get_format("mxfp8")),
        (_ceil("mxfp8"), _ceil("mxfp8")),
        (get_format("mxfp6"), get_format("mxfp6")),
        (_int(4), QuantSpec(4, symmetric=True, **token)),
        (_int(4, 32), QuantSpec(4, symmetric=True, granularity="group", group_size=32)),
        (_fp("fp4_e2m1"), FormatSpec("fp4_e2m1", "token", scale="fp32")),
        (get_format("mxfp4"), get_format("mxfp4")),
        (_ceil("mxfp4"), _ceil("mxfp4")),
        (get_format("nvfp4"), get_format("nvfp4")),
    ]
    return [Recipe("FP16", "none")] + [Recipe(f"W {format_label(w)} · A {format_label(a)}", "rtn", w, a)
                                       for w, a in pairs]


def _describe(r: Recipe) -> dict:
    w, a = r.weights, r.activations
    return {"label": r.label, "weights": format_label(w), "activations": format_label(a) if a else "FP16",
            "family": _family(w), "w_bits": w.bits if w else 16, "a_bits": a.bits if a else 16}


def run_format_recipes(model: Decoder, recipes: Sequence[Recipe], tokens: Sequence[int], live_tokens: int,
                       progress: bool = False) -> pd.DataFrame:
    """Apply each recipe, measure perplexity and the stored bits per weight of the block projections.

    ``linear_bits`` counts codes and scales as stored (:func:`~unveiled.quant.layers.model_size`);
    ``delta_pct`` is the change against the first ``method="none"`` row. Introduced in Chapter 10."""
    model = _check_model(model)
    rows = []
    it = recipes
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(recipes, desc="formats", leave=False)
    for r in it:
        t0 = time.perf_counter()
        q = r.apply(model)
        took = time.perf_counter() - t0
        sizes = model_size(q)
        lin = sizes[sizes["kind"].str.endswith("_proj")]
        row = _describe(r) | perplexities(q, tokens, live_tokens)
        row["linear_bits"] = float(8 * lin["bytes"].sum() / lin["params"].sum())
        row["quantize_s"] = took
        rows.append(row)
        del q
    df = pd.DataFrame(rows)
    base = df.loc[df["label"] == "FP16", "perplexity"]
    df["delta_pct"] = 100 * (df["perplexity"] / base.iloc[0] - 1) if len(base) else math.nan
    return df


#: Candidate formats of the per-layer choice (weights and activations in the same format), cheapest first.
LAYER_CANDIDATES: dict[str, FormatSpec | None] = {
    "MXFP4": get_format("mxfp4"),
    "NVFP4": get_format("nvfp4"),
    "MXFP6": get_format("mxfp6"),
    "FP8 E4M3": FormatSpec("fp8_e4m3", "tensor", scale="fp32"),
    "MXFP8": get_format("mxfp8"),
    "BF16": None,
}


@torch.inference_mode()
def layer_format_errors(model: Decoder, calibration: torch.Tensor,
                        candidates: dict[str, FormatSpec | None] | None = None) -> pd.DataFrame:
    """Relative output error of every linear layer when its weight and its input are both in a format.

    For layer ``y = x Wᵀ`` on the calibration inputs ``X`` (one forward pass of the unquantized model, hooks on
    every block projection): ``‖X Wᵀ − X̂ Ŵᵀ‖² / ‖X Wᵀ‖²``, with ``X̂`` quantized per token/block as a kernel would.
    This is the signal Transformer Engine's per-layer precision choice relies on [NVIDIA 2022; Micikevicius et
    al. 2022]. Columns: ``layer``, ``block``, ``kind``, ``format``, ``bits_per_weight``, ``rel_error``,
    ``params``. Introduced in Chapter 10.
    """
    model = _check_model(model)
    candidates = LAYER_CANDIDATES if candidates is None else candidates
    rows = []

    def hook_for(name: str, layer: nn.Linear):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            w = layer.weight.detach().to(torch.float32)
            y = x @ w.T
            ref = float(y.pow(2).sum())
            parts = name.split(".")
            for label, spec in candidates.items():
                if spec is None:
                    err, bits = 0.0, 16.0
                else:
                    yq = spec.fake_quantize(x) @ spec.fake_quantize(w).T
                    err = float((yq - y).pow(2).sum()) / ref
                    bits = 8 * spec.storage_bytes(tuple(w.shape)) / w.numel()
                rows.append({"layer": name, "block": int(parts[1]), "kind": parts[-1], "format": label,
                             "bits_per_weight": bits, "rel_error": err, "params": w.numel()})

        return hook

    handles = [m.register_forward_pre_hook(hook_for(n, m)) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and n != "lm_head"]
    try:
        model.hidden_states(calibration)
    finally:
        for h in handles:
            h.remove()
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------------------------------
# The cached experiments (python -m unveiled.results run quant.<name>)
# --------------------------------------------------------------------------------------------------

def _smollm2_formats(recipes: list[Recipe]) -> pd.DataFrame:
    from ..smollm2 import load_smollm2

    with torch_threads(1):
        model = load_smollm2()
        df = run_format_recipes(model, recipes, eval_tokens("smollm2"), LIVE_TOKENS["smollm2"])
    df.insert(0, "model", "smollm2-135m")
    return df


@_experiment("smollm2_formats", "SmolLM2-135M: perplexity of weight-only number formats at equal stored bits: "
             "INT8/INT4 per channel, g64, g32 vs FP8/FP6/FP4 (per channel, g32) vs MXFP8/MXFP6/MXFP4 vs NVFP4")
def smollm2_formats() -> pd.DataFrame:
    """Weight-only formats on SmolLM2-135M (see :func:`format_weight_recipes`). Introduced in Chapter 10."""
    return _smollm2_formats(format_weight_recipes("smollm2"))


@_experiment("smollm2_formats_wa", "SmolLM2-135M: perplexity with weights and activations in the same format "
             "(INT8/INT4, FP8 E4M3/E5M2, FP4, MXFP8/MXFP6/MXFP4, NVFP4)")
def smollm2_formats_wa() -> pd.DataFrame:
    """Weight-and-activation formats on SmolLM2-135M (see :func:`format_wa_recipes`). Introduced in Chapter 10."""
    return _smollm2_formats(format_wa_recipes("smollm2"))


@_experiment("tiny_formats", "Tiny models S and M: the weight-only and weight+activation format sweeps of "
             "SmolLM2 (integer groups of 32 only: the tiny models' widths are not multiples of 64)")
def tiny_formats() -> pd.DataFrame:
    """The format sweeps on the book's tiny character models (trained in full precision, unlike SmolLM2's Q4_1
    weights). Introduced in Chapter 10."""
    from .. import zoo

    frames = []
    with torch_threads(1):
        for name in ("S", "M"):
            model = zoo.load(name)
            for mode, recipes in (("weights", format_weight_recipes("tiny")),
                                  ("weights+activations", format_wa_recipes("tiny"))):
                df = run_format_recipes(model, recipes, eval_tokens("tiny"), LIVE_TOKENS["tiny"])
                df.insert(0, "mode", mode)
                df.insert(0, "model", f"tiny-{name.lower()}")
                frames.append(df)
    return pd.concat(frames, ignore_index=True)


@_experiment("smollm2_format_layers", "SmolLM2-135M: relative output error of each of the 210 linear layers with "
             "weights and inputs in MXFP4, NVFP4, MXFP6, FP8 E4M3 (per tensor), MXFP8 (calibration: 8 x 256 "
             "tokens of the training split)")
def smollm2_format_layers() -> pd.DataFrame:
    """Per-layer format errors on SmolLM2-135M (see :func:`layer_format_errors`). Introduced in Chapter 10."""
    from ..smollm2 import load_smollm2

    with torch_threads(1):
        model = load_smollm2()
        df = layer_format_errors(model, calibration_batch("smollm2", num_sequences=8))
    df.insert(0, "model", "smollm2-135m")
    return df
