"""One palette for the whole book: the same colour means the same stage or precision in every chapter."""

from __future__ import annotations

import altair as alt

#: Inference stages.
STAGE_COLORS: dict[str, str] = {"prefill": "#1f77b4", "decode": "#d62728"}

#: Numeric precisions, from wide to narrow (used for weights, activations or KV cache alike).
PRECISION_COLORS: dict[str, str] = {
    "fp32": "#7f7f7f",
    "fp16": "#1f77b4",
    "bf16": "#17becf",
    "fp8": "#9467bd",
    "int8": "#2ca02c",
    "w8": "#2ca02c",
    "int4": "#ff7f0e",
    "w4": "#ff7f0e",
    "int3": "#8c564b",
    "w3": "#8c564b",
    "int2": "#e377c2",
    "w2": "#e377c2",
    "int1": "#bcbd22",
    "w1": "#bcbd22",
}

#: What limits an operator on the roofline.
BOUND_COLORS: dict[str, str] = {"memory": "#d62728", "compute": "#2ca02c"}


def color_scale(mapping: dict[str, str], domain: list[str] | None = None) -> alt.Scale:
    """An Altair colour scale that applies one of the palettes above to the given domain (in order)."""
    domain = list(mapping) if domain is None else list(domain)
    return alt.Scale(domain=domain, range=[mapping.get(d, "#333333") for d in domain])


def log_axis(title: str, **kwargs) -> dict:
    """Keyword arguments for an Altair positional encoding on a base-10 log scale (rooflines are log-log)."""
    return {"title": title, "scale": alt.Scale(type="log"), **kwargs}
