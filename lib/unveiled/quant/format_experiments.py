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

from ..hardware import device_features
from ..models import Decoder
from ..session import progress_bar
from ..threads import torch_threads
from .experiments import LIVE_TOKENS, Recipe, _experiment, calibration_batch, eval_tokens, perplexities
from .formats import FormatSpec, code_entropy, get_format
from .formats import quantize as format_quantize
from .layers import _check_model, model_size
from .uniform import QuantSpec, fake_quantize
from .uniform import quantize as int_quantize

__all__ = [
    "EQUAL_BITS",
    "LAYER_CANDIDATES",
    "SURVEY_TABLE3",
    "format_findings",
    "format_label",
    "format_wa_recipes",
    "format_weight_recipes",
    "layer_format_errors",
    "run_format_recipes",
    "table3_measurements",
    "table4_examples",
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
    for r in progress_bar(recipes, desc="formats", enabled=progress):
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


# --------------------------------------------------------------------------------------------------
# The survey's Tables 3 and 4, measured
# --------------------------------------------------------------------------------------------------

#: The survey's ratings in Table 3 (floating point, uniform), as printed.
SURVEY_TABLE3 = {"precision": ("good", "bad"), "range": ("good", "bad"), "hardware efficiency": ("bad", "good"),
                 "casting effort": ("good", "bad")}


def table3_measurements(weight: torch.Tensor) -> pd.DataFrame:
    """The survey's Table 3 (floating point against uniform quantization) measured on one weight matrix, with
    FP8 E4M3 and INT8 at the same 8 bits and the same fp16 scale per output channel.

    Rows: precision (relative RMS error), range (binades between the smallest positive value and the largest),
    small weights rounded to zero (%), casting without a scale (relative RMS error when the raw values are cast:
    E4M3 as is, integers by rounding) and hardware (registry devices whose matrix units run it natively).
    Columns: ``aspect``, ``floating_point``, ``uniform``, ``better`` (by the measurement) and ``survey`` (its
    ratings, FP / uniform). Introduced in Chapter 10."""
    w = weight.detach().to(torch.float32)
    fp8 = FormatSpec("fp8_e4m3", "channel", scale="fp16")
    int8 = _int(8)

    def rel(q: torch.Tensor) -> float:
        return float((q - w).norm() / w.norm())

    qf, qi = fp8.fake_quantize(w), fake_quantize(w, int8)
    e4m3 = fp8.element_format
    feats = device_features()
    native = feats[feats["support"] == "native"]
    rows = [
        ("precision: relative RMS error", rel(qf), rel(qi), "lower"),
        ("range: binades from smallest to largest value", math.log2(e4m3.max_finite / e4m3.min_subnormal),
         math.log2(127), "higher"),
        ("small weights rounded to zero (%)", 100 * float(((qf == 0) & (w != 0)).float().mean()),
         100 * float(((qi == 0) & (w != 0)).float().mean()), "lower"),
        ("casting without a scale: relative RMS error", rel(FormatSpec("fp8_e4m3").fake_quantize(w)),
         rel(torch.round(w).clamp(-128, 127)), "lower"),
        ("hardware: registry devices running it natively", int((native["feature"] == "fp8_e4m3").sum()),
         int((native["feature"] == "int8").sum()), "higher"),
    ]
    out = []
    for (aspect, f, u, sense), survey in zip(rows, ("precision", "range", "range", "casting effort",
                                                    "hardware efficiency"), strict=True):
        better = "tie" if f == u else ("floating point" if (f < u) == (sense == "lower") else "uniform")
        out.append({"aspect": aspect, "floating_point": f, "uniform": u, "better": better,
                    "survey": " / ".join(SURVEY_TABLE3[survey])})
    return pd.DataFrame(out)



def table4_examples(weight: torch.Tensor, weights_table: pd.DataFrame, int8_table: pd.DataFrame) -> pd.DataFrame:
    """The survey's Table 4 (four ways formats improved), each with this book's example and a measurement.

    ``weights_table`` is the cached weight-only sweep (``quant.smollm2_formats``), ``int8_table`` Chapter 3's
    activation sweep (``quant.smollm2_activations``, for LLM.int8()); ``weight`` gives the code statistics of
    variable-length encoding. Columns: ``direction``, ``survey_examples``, ``book_example``, ``measurement``.
    Introduced in Chapter 10."""
    d = weights_table.set_index("label")["delta_pct"]
    fp8 = format_quantize(weight, FormatSpec("fp8_e4m3", "channel", scale="fp16"))
    int4 = int_quantize(weight, _int(4, 32))
    llm_int8 = int8_table.set_index("label")["delta_pct"]
    outlier_label = next(lb for lb in llm_int8.index if lb.startswith("LLM.int8()"))
    rows = [
        ("low-bit floating point", "FP8 (H100), ZeroQuant-FP, FP6-LLM, LLM-FP4",
         "FP8/FP6/FP4 element formats (§10.3)",
         f"FP8 E4M3 {d['FP8 E4M3 ch']:+.2f} %, FP6 E2M3 {d['FP6 E2M3 ch']:+.2f} %, FP4 E2M1 {d['FP4 E2M1 ch']:+.1f} % "
         f"perplexity (per-channel scales)"),
        ("variable-length encoding", "ALPS (posits), ANT (flint), Dybit",
         "entropy of the stored codes (what an ideal variable-length code needs)",
         f"FP8 E4M3 codes carry {code_entropy(fp8.codes):.2f} of their 8 bits, INT4 g32 codes "
         f"{code_entropy(int4.codes):.2f} of 4"),
        ("outlier-aware quantization", "OLAccel, GOBO, OliVe",
         "LLM.int8() (Chapter 3); NVFP4's 16-value blocks keep an outlier in its own block",
         f"LLM.int8() W8A8 {llm_int8[outlier_label]:+.2f} %; NVFP4 {d['NVFP4']:+.1f} % against FP4 per channel "
         f"{d['FP4 E2M1 ch']:+.1f} %"),
        ("bit-sharing encoding", "AdaptivFloat, MX / block data representation",
         "MXFP4: one shared exponent per 32 values (§10.3)",
         f"MXFP4 {d['MXFP4']:+.1f} % at 4.25 bits against FP4 with one fp16 scale per row {d['FP4 E2M1 ch']:+.1f} %"),
    ]
    return pd.DataFrame(rows, columns=["direction", "survey_examples", "book_example", "measurement"])


#: Formats compared at equal stored bits per weight in the weight-only sweep (SmolLM2 labels).
EQUAL_BITS = {"8": ("INT8 ch", "FP8 E4M3 ch", "FP8 E5M2 ch"), "6": ("FP6 E2M3 ch", "FP6 E3M2 ch"),
              "4.5": ("INT4 g32", "FP4 E2M1 g32", "NVFP4"), "4.25": ("INT4 g64", "MXFP4", "MXFP4 (ceil scale)")}


def format_findings(weights: pd.DataFrame, both: pd.DataFrame) -> dict:
    """The comparisons the chapter reads from the two SmolLM2 sweeps, as numbers: perplexity change (%) per
    label, the best label of each equal-bits group, and the NVFP4/MXFP4 ratios of perplexity in each sweep.

    ``weights``: ``quant.smollm2_formats``; ``both``: ``quant.smollm2_formats_wa``. Introduced in Chapter 10."""
    d = weights.set_index("label")["delta_pct"]
    p = weights.set_index("label")["perplexity"]
    b = both.set_index("label")["perplexity"]
    bd = both.set_index("label")["delta_pct"]
    best = {bits: min(labels, key=lambda lb: p[lb]) for bits, labels in EQUAL_BITS.items()}
    return {
        "delta": d.to_dict(), "delta_wa": bd.to_dict(), "best": best,
        "nvfp4_over_mxfp4": float(p["NVFP4"] / p["MXFP4"]),
        "nvfp4_over_mxfp4_wa": float(b["W NVFP4 · A NVFP4"] / b["W MXFP4 · A MXFP4"]),
        "fp8_minus_int8_wa": float(bd["W FP8 E4M3 ch · A FP8 E4M3 token"] - bd["W INT8 ch · A INT8 token"]),
        "mx_ceil_gain_wa": float(bd["W MXFP8 · A MXFP8"] - bd["W MXFP8 (ceil scale) · A MXFP8 (ceil scale)"]),
    }
