"""Per-layer number formats, Transformer-Engine style: the cheapest format whose measured error fits a budget.

NVIDIA's Transformer Engine runs each linear layer in FP8 or keeps it in 16 bits, layer by layer
[NVIDIA 2022; Micikevicius et al. 2022]; the survey cites it as the new processing element of §6.4. The same idea
with more formats: measure every layer's relative output error under each candidate (:func:`.format_experiments.
layer_format_errors`, weights and inputs both quantized), then give each layer the candidate with the fewest
stored bits whose error is at most ``budget`` (:func:`choose_formats`), falling back to BF16. The choice is
applied to a model with :func:`apply_format_choice` (weights and activations of each layer in its format) and
summarised by :func:`choice_summary`. What it buys on a device depends on which formats the device executes
natively: the roofline time of a choice is computed by the analyzer (Chapter 10). Introduced in Chapter 10.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import pandas as pd

from .._validate import check_number
from ..models import Decoder, replace_linears
from ..threads import torch_threads
from .experiments import LIVE_TOKENS, _experiment, eval_tokens, perplexities
from .format_experiments import LAYER_CANDIDATES
from .formats import FormatSpec
from .layers import QuantLinear, _check_model

__all__ = ["ANALYZER_FORMATS", "BUDGETS", "FALLBACK", "apply_format_choice", "choice_roofline_table", "choice_summary",
           "choose_formats"]

#: The format a layer keeps when no candidate fits the budget.
FALLBACK = "BF16"
_COLUMNS = ("layer", "format", "bits_per_weight", "rel_error")


def choose_formats(errors: pd.DataFrame, budget: float, candidates: Sequence[str] | None = None) -> pd.DataFrame:
    """For each layer, the candidate with the fewest bits per weight whose ``rel_error`` is at most ``budget``.

    ``errors`` has one row per (layer, format) with ``bits_per_weight`` and ``rel_error`` (as
    :func:`~unveiled.quant.format_experiments.layer_format_errors` returns); ``candidates`` restricts the
    formats (default: all in the table). Ties in bits go to the smaller error. A layer where nothing fits
    keeps :data:`FALLBACK` (16 bits, error 0). Returns one row per layer, in the table's layer order, with the
    other columns of the chosen row (``block``, ``kind``, ``params``...). Introduced in Chapter 10.
    """
    if not isinstance(errors, pd.DataFrame):
        raise TypeError(f"errors must be a DataFrame of per-layer errors, got {type(errors).__name__}")
    missing = [c for c in _COLUMNS if c not in errors.columns]
    if missing:
        raise ValueError(f"errors lacks the columns {missing}; it needs {list(_COLUMNS)}")
    budget = check_number("budget", budget)
    if budget < 0:
        raise ValueError(f"budget is a relative error (>= 0), got {budget}")
    table = errors
    if candidates is not None:
        unknown = sorted(set(candidates) - set(errors["format"]))
        if unknown:
            raise ValueError(f"no errors measured for {unknown}; the table has {sorted(set(errors['format']))}")
        table = errors[errors["format"].isin(list(candidates))]
    order = list(dict.fromkeys(errors["layer"]))
    fits = table[table["rel_error"] <= budget].sort_values(["bits_per_weight", "rel_error"], kind="stable")
    chosen = fits.drop_duplicates("layer").set_index("layer")
    rows = []
    for layer in order:
        if layer in chosen.index:
            rows.append({"layer": layer, **chosen.loc[layer].to_dict()})
        else:
            base = errors[errors["layer"] == layer].iloc[0].to_dict()
            rows.append(base | {"format": FALLBACK, "bits_per_weight": 16.0, "rel_error": 0.0})
    return pd.DataFrame(rows)


def choice_summary(choice: pd.DataFrame) -> pd.DataFrame:
    """Share of the parameters and of the layers in each format, and the average stored bits per weight.

    Columns: ``format``, ``layers``, ``params_share``; ``df.attrs["bits_per_weight"]`` is the parameter-weighted
    mean. Introduced in Chapter 10."""
    params = choice["params"].astype(float)
    out = (choice.assign(_p=params).groupby("format", sort=False)
           .agg(layers=("layer", "size"), params=("_p", "sum")).reset_index())
    out["params_share"] = out.pop("params") / params.sum()
    out.attrs["bits_per_weight"] = float((choice["bits_per_weight"] * params).sum() / params.sum())
    return out


def apply_format_choice(model: Decoder, choice: pd.DataFrame,
                        formats: dict[str, FormatSpec | None] | None = None) -> Decoder:
    """A copy of ``model`` whose layers compute in their chosen formats (weights and inputs, fake-quantized).

    ``formats`` maps the format names of ``choice`` to specs (default: :data:`~.format_experiments.
    LAYER_CANDIDATES`); :data:`FALLBACK` layers stay unquantized. Introduced in Chapter 10."""
    model = _check_model(model)
    formats = LAYER_CANDIDATES if formats is None else formats
    wanted = dict(zip(choice["layer"], choice["format"], strict=True))
    unknown = sorted({f for f in wanted.values() if f != FALLBACK and f not in formats})
    if unknown:
        raise ValueError(f"no spec for the formats {unknown}; known: {sorted(formats)}")
    out = copy.deepcopy(model)

    def swap(name, linear):
        spec = formats.get(wanted[name])
        return QuantLinear.from_linear(linear, spec, spec)

    replace_linears(out, swap, lambda n: wanted.get(n, FALLBACK) != FALLBACK)
    return out


#: Error budgets of the cached mixed-format runs (relative output error per layer).
BUDGETS = (0.002, 0.01, 0.03)


@_experiment("smollm2_format_mix", "SmolLM2-135M: perplexity with a per-layer format (weights and inputs), the "
             "cheapest of MXFP4/NVFP4/MXFP6/FP8/MXFP8/BF16 within a relative-error budget of 0.002, 0.01, 0.03 "
             "per layer")
def smollm2_format_mix() -> pd.DataFrame:
    """Perplexity of SmolLM2-135M with the per-layer choice at each budget of :data:`BUDGETS` (the errors are the
    cached ``quant.smollm2_format_layers``). Introduced in Chapter 10."""
    from ..results import cached
    from ..smollm2 import load_smollm2

    errors = cached("quant.smollm2_format_layers")
    rows = []
    with torch_threads(1):
        model = load_smollm2()
        tokens = eval_tokens("smollm2")
        for budget in BUDGETS:
            choice = choose_formats(errors, budget)
            summary = choice_summary(choice)
            mixed = apply_format_choice(model, choice)
            row = {"model": "smollm2-135m", "budget": budget, "bits_per_weight": summary.attrs["bits_per_weight"]}
            row |= {f"share_{f}": float(s) for f, s in zip(summary["format"], summary["params_share"], strict=True)}
            rows.append(row | perplexities(mixed, tokens, LIVE_TOKENS["smollm2"]))
            del mixed
    return pd.DataFrame(rows).fillna(0.0)



#: Analyzer names of the per-layer candidates (None: 16-bit weights).
ANALYZER_FORMATS = {"MXFP4": "mxfp4", "NVFP4": "nvfp4", "MXFP6": "mxfp6", "FP8 E4M3": "fp8_e4m3", "MXFP8": "mxfp8",
                    FALLBACK: None}


def choice_roofline_table(choice: pd.DataFrame, model: str, devices: Sequence[str],
                          settings: Sequence[tuple[str, int, int]] = (("decode", 1, 1024), ("prefill", 1, 1024)),
                          ) -> pd.DataFrame:
    """Roofline time of one pass of ``model`` with each linear layer in its chosen format, next to all-BF16 and
    all-FP8 (per-tensor E4M3), on each device and stage.

    Each layer is priced by :func:`unveiled.analyze` with ``number_format=`` its format: bytes at the format's
    stored bits, compute at its native roof or the 16-bit one (:mod:`unveiled.analyzer.number_formats`); the
    other operators (attention, norms, the head) as in BF16. ``settings`` lists ``(stage, batch, seq_len)``.
    Columns: ``device``, ``stage``, ``bf16_ms``, ``fp8_ms``, ``choice_ms``, ``speedup`` (BF16 / choice).
    Introduced in Chapter 10."""
    from ..analyzer import analyze

    unknown = sorted(set(choice["format"]) - set(ANALYZER_FORMATS))
    if unknown:
        raise ValueError(f"no analyzer format for {unknown}; known: {sorted(ANALYZER_FORMATS)}")
    kinds = choice["layer"].str.rsplit(".", n=1).str[-1]
    rows = []
    for dev in devices:
        for stage, batch, seq_len in settings:
            def run(fmt, dev=dev, stage=stage, batch=batch, seq_len=seq_len):
                return analyze(model, dev, stage=stage, batch=batch, seq_len=seq_len, check_context=False,
                               number_format=fmt)
            per = {name: run(fmt).ops.set_index("op")["time_s"] for name, fmt in ANALYZER_FORMATS.items()
                   if name in set(choice["format"]) | {FALLBACK}}
            base = run(None)
            ops = base.ops.set_index("op")
            linear = [k for k in ops.index if k in set(kinds)]
            rest = float((ops["time_s"] * ops["count"]).drop(linear).sum())
            mixed = rest + sum(float(per[f][k]) for f, k in zip(choice["format"], kinds, strict=True))
            rows.append({"device": base.device.display_name, "stage": stage, "bf16_ms": 1e3 * base.time_s,
                         "fp8_ms": 1e3 * run("fp8_e4m3").time_s, "choice_ms": 1e3 * mixed,
                         "speedup": base.time_s / mixed})
    return pd.DataFrame(rows)
