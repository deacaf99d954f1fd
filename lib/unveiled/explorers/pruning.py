"""A live pruning explorer (ipywidgets): a weight form on a device against the dense model, and the measured
accuracy of SmolLM2 at that sparsity.

Pick a model, a device, a weight form (unstructured as a bitmask or in CSR, 2:4, 4:8, low rank, or structured
pruning of MLP channels with or without one KV group per layer), the share of block parameters removed, the
batch and the sequence length. The explorer predicts prefill and decode with :func:`unveiled.analyze` and the
form's costs (:mod:`unveiled.analyzer.sparsity`), and shows the speedups and the weight memory next to the
dense model, whether the device's tensor cores run 2:4 sparsity, and where the form's family sits on the
measured SmolLM2 frontier (the cached sweep). The static book shows its initial state; the Altair version in
:mod:`unveiled.plots.pruning` works without a kernel. Introduced in Chapter 5.
"""

from __future__ import annotations

import html
import math
from typing import TYPE_CHECKING

import pandas as pd

from ..analyzer.configs import model_names
from ..analyzer.configs import model_spec as spec_of
from ..analyzer.sparsity import WeightForm, pruned_spec
from ..hardware import device_names, get_device, supports
from ..plots.pruning import METHOD_COLORS
from .live import ExplorerStill, control_row, fit_svg, labelled, live_or_still

if TYPE_CHECKING:
    import ipywidgets

__all__ = ["FORM_CHOICES", "form_for", "frontier_svg", "pruning_explorer", "pruning_table_html"]

#: The explorer's weight forms (label -> sweep family it is measured by).
FORM_CHOICES = {"unstructured, bitmask": "unstructured", "unstructured, CSR int32": "unstructured",
                "2:4": "semi-structured", "4:8": "semi-structured", "low rank": "low-rank",
                "structured, MLP channels": "structured", "structured, 1 KV group + MLP": "structured"}


def form_for(choice: str, sparsity: float, spec) -> tuple[object, WeightForm | None]:
    """The analyzer's (model, weight form) for an explorer choice at ``sparsity`` (the share of block
    parameters removed; N:M patterns fix it at 50 %). Introduced in Chapter 5."""
    from ..pruning.roofline import _decoder_config
    from ..pruning.structured import plan_for_sparsity

    if choice not in FORM_CHOICES:
        raise ValueError(f"form must be one of {list(FORM_CHOICES)}, got {choice!r}")
    if choice.startswith("unstructured"):
        storage = "csr" if "CSR" in choice else "bitmask"
        return spec, WeightForm("unstructured", sparsity=sparsity, storage=storage, index_bits=32)
    if choice in ("2:4", "4:8"):
        return spec, WeightForm.parse(choice)
    if choice == "low rank":
        return spec, WeightForm("lowrank", keep=1.0 - sparsity)
    kv = 1 if "KV" in choice else 0
    plan = plan_for_sparsity(_decoder_config(spec), sparsity, kv)
    return pruned_spec(spec, plan.kv_groups, plan.mlp_channels), None


def pruning_table_html(model: str, device: str, choice: str, sparsity: float, *, batch: int = 1,
                       seq_len: int = 1024, bits: int = 16) -> str:
    """Prefill and decode of ``model`` on ``device`` with the chosen form, next to dense: time, speedup, weight
    memory. Introduced in Chapter 5."""
    from ..pruning.speed import predict_pass

    spec = spec_of(model)
    s, form = form_for(choice, sparsity, spec)
    rows = []
    for stage in ("prefill", "decode"):
        kw = {"stage": stage, "batch": batch, "seq_len": seq_len, "w_bits": bits, "a_bits": bits}
        dense, pruned = predict_pass(spec, device, **kw), predict_pass(s, device, form, **kw)
        rows.append(f"<tr><td><b>{stage}</b></td><td>{pruned['time_s'] * 1e3:.4g} ms</td>"
                    f"<td>{dense['time_s'] * 1e3:.4g} ms</td><td><b>{dense['time_s'] / pruned['time_s']:.2f}×</b></td>"
                    f"<td>{pruned['weights_bytes'] / 1e9:.3g} GB</td><td>{dense['weights_bytes'] / 1e9:.3g} GB</td></tr>")
    cores = supports(get_device(device), "sparse_2_4") or "unknown (no vendor source)"
    label = form.label if form is not None else f"{choice}: {s.num_heads} heads, {s.num_kv_heads} KV heads, " \
                                                 f"intermediate {s.intermediate_size}"
    return ("<div style='font:12px sans-serif'><table><tr><th></th><th>pruned</th><th>dense</th><th>speedup</th>"
            "<th>weights</th><th>dense weights</th></tr>" + "".join(rows) + "</table>"
            f"<p>{html.escape(label)} · {bits}-bit weights and activations · 2:4 sparse tensor cores on this "
            f"device: <b>{html.escape(cores)}</b></p></div>")


#: The cached sweep the explorer draws its measured frontier from.
SWEEP = "pruning.smollm2_sweep"


def _measured_sweep() -> pd.DataFrame | None:
    """The cached SmolLM2 sweep, or None where this checkout does not hold it (the frontier then says how to
    produce it)."""
    from ..datafiles import list_data_files
    from ..results import cached

    return cached(SWEEP) if f"results/{SWEEP}.csv" in list_data_files() else None


def frontier_svg(sweep: pd.DataFrame | None, family: str, sparsity: float, *, width: int = 420,
                 height: int = 220) -> str:
    """SmolLM2's measured perplexity (log) against the share of block parameters removed: the chosen family's
    points in colour, the others grey, a rule at the chosen sparsity. Without the sweep (``None``), a line
    saying how to produce it. Introduced in Chapter 5."""
    if sweep is None:
        return (f"<svg width='{width}' height='40' style='font:12px sans-serif'><text x='4' y='24'>SmolLM2's "
                f"measured frontier is not cached here: python -m unveiled.results run {SWEEP}</text></svg>")
    d = sweep[(sweep["family"] != "dense") & (sweep["recover_steps"] == 0 if "recover_steps" in sweep.columns else True)]
    dense = float(sweep.loc[sweep["family"] == "dense", "perplexity"].iloc[0])
    lo, hi = math.log(dense * 0.9), math.log(max(float(d["perplexity"].max()), dense * 2))
    pad = 36

    def x(s):
        return pad + (width - pad - 8) * s / 0.75

    def y(p):
        return 8 + (height - pad - 8) * (1 - (math.log(p) - lo) / (hi - lo))

    dots = []
    for _, r in d.iterrows():
        chosen = r["family"] == family
        colour = METHOD_COLORS.get(r["method"], "#333") if chosen else "#cccccc"
        dots.append(f"<circle cx='{x(r['sparsity']):.1f}' cy='{y(min(r['perplexity'], math.exp(hi))):.1f}' "
                    f"r='{4 if chosen else 2.5}' fill='{colour}'><title>{html.escape(r['label'])}: "
                    f"{r['perplexity']:.4g}</title></circle>")
    ticks = "".join(f"<text x='{x(t / 100):.0f}' y='{height - pad + 14}' font-size='10' text-anchor='middle'>{t}%</text>"
                    for t in (0, 20, 40, 60))
    return (f"<svg width='{width}' height='{height}' style='font:11px sans-serif'>"
            f"<line x1='{pad}' x2='{width - 8}' y1='{y(dense):.1f}' y2='{y(dense):.1f}' stroke='#000' "
            f"stroke-dasharray='4 3'/><line x1='{x(sparsity):.1f}' x2='{x(sparsity):.1f}' y1='8' "
            f"y2='{height - pad}' stroke='#d62728'/>" + "".join(dots) + ticks +
            f"<text x='{width / 2:.0f}' y='{height - 4}' text-anchor='middle'>block parameters removed "
            f"(SmolLM2-135M, measured; dashed: dense {dense:.3g})</text></svg>")


def pruning_explorer(model: str = "llama-2-7b", device: str = "a100-40gb", *, form: str = "2:4", sparsity: float = 0.5,
                     batch: int = 1, seq_len: int = 1024) -> ipywidgets.VBox | ExplorerStill:
    """The live explorer: model, device, weight form, share removed, batch and sequence length (in the book
    build, a still of its initial state: :func:`.live.live_or_still`). Introduced in Chapter 5."""
    if form not in FORM_CHOICES:
        raise ValueError(f"form must be one of {list(FORM_CHOICES)}, got {form!r}")
    device = get_device(device).name  # the registry's name (an alias such as "a100" is not a dropdown option)
    sweep = _measured_sweep()
    shown = 0.5 if form in ("2:4", "4:8") else sparsity
    pruning_table_html(model, device, form, shown, batch=batch, seq_len=seq_len)  # fail early on bad names

    def still() -> str:
        label = f"SmolLM2-135M perplexity against the share of block parameters removed, {form} highlighted"
        return (pruning_table_html(model, device, form, shown, batch=batch, seq_len=seq_len)
                + fit_svg(frontier_svg(sweep, FORM_CHOICES[form], shown), label))

    return live_or_still(
        lambda: _pruning_widget(sweep, model, device, form, sparsity, batch, seq_len), still,
        title="Pruning explorer", call="uv.pruning_explorer()",
        settings={"model": model, "device": device, "form": form, "removed": shown, "batch": batch,
                  "sequence": seq_len},
        description=f"Roofline prefill and decode of {model} on {device} with weights in form {form}, "
                    "next to the dense model, and SmolLM2's measured frontier")


def _pruning_widget(sweep: pd.DataFrame | None, model: str, device: str, form: str, sparsity: float, batch: int,
                    seq_len: int):
    import ipywidgets as w

    c = {
        "model": w.Dropdown(options=model_names(), value=model, layout=w.Layout(width="170px")),
        "device": w.Dropdown(options=device_names("datasheet"), value=device, layout=w.Layout(width="150px")),
        "form": w.Dropdown(options=list(FORM_CHOICES), value=form, layout=w.Layout(width="220px")),
        "sparsity": w.Dropdown(options=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7], value=sparsity,
                               layout=w.Layout(width="80px")),
        "batch": w.Dropdown(options=[2**k for k in range(10)], value=batch, layout=w.Layout(width="80px")),
        "seq_len": w.Dropdown(options=[2**k for k in range(7, 16)], value=seq_len, layout=w.Layout(width="100px")),
    }
    table, chart = w.HTML(), w.HTML()

    def update(_=None):
        v = {k: x.value for k, x in c.items()}
        s = 0.5 if v["form"] in ("2:4", "4:8") else v["sparsity"]
        try:
            table.value = pruning_table_html(v["model"], v["device"], v["form"], s, batch=v["batch"],
                                             seq_len=v["seq_len"])
        except ValueError as exc:
            table.value = f"<div style='color:#d62728;font:13px sans-serif'>{html.escape(str(exc))}</div>"
        chart.value = fit_svg(frontier_svg(sweep, FORM_CHOICES[v["form"]], s),
                              f"SmolLM2-135M perplexity against the share removed, {v['form']} highlighted")

    update()
    for widget in c.values():
        widget.observe(update, names="value")
    controls = w.VBox([
        control_row([labelled("model", c["model"], "70px"), labelled("device", c["device"], "70px")]),
        control_row([labelled("form", c["form"], "70px"), labelled("removed", c["sparsity"], "70px")]),
        control_row([labelled("batch", c["batch"], "70px"), labelled("sequence", c["seq_len"], "80px")]),
    ])
    return w.VBox([controls, table, chart])
