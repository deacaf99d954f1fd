"""The live serving explorer: pick a model, a device, a scheduling policy, the load and the engine's limits, and
see a simulated run (latency, throughput, goodput, memory and the queue over time).

Every change re-runs :func:`unveiled.serving.simulate` (a second or two for a few hundred requests), so any
model and device of the registry, any rate and any limit can be explored, beyond the precomputed grid of the
static explorer (:func:`unveiled.plots.serving.rate_explorer_chart`). Introduced in Chapter 9.
"""

from __future__ import annotations

import html

from ..analyzer import model_names
from ..hardware import device_names
from ..serving.experiments import SWEEP_TPOT_SLO_S, SWEEP_TTFT_SLO_S, sweep_workload
from ..serving.scheduler import POLICIES
from ..serving.simulator import simulate
from .live import control_row, labelled, live_or_still, slider_layout

__all__ = ["serving_explorer", "serving_summary_html"]


def serving_summary_html(result, ttft_slo_s: float = SWEEP_TTFT_SLO_S, tpot_slo_s: float = SWEEP_TPOT_SLO_S) -> str:
    """The explorer's read-out for one simulated run: throughput, TTFT and TPOT percentiles, goodput under the
    targets, memory and preemptions. Introduced in Chapter 9."""
    s = result.summary(ttft_slo_s, tpot_slo_s)
    label = ", ".join(f"{html.escape(str(v))}" for v in result.label.values())
    return (
        "<div style='font:13px sans-serif;max-width:560px'>"
        f"<p><b>{label}</b>: {int(s.requests):,} requests in {s.duration_s:.3g} s, {int(s.steps):,} steps "
        f"(mean batch {s.batch_mean:.3g} sequences, longest step {1e3 * s.step_max_s:.3g} ms)</p>"
        f"<p>throughput {s.output_tokens_per_s:,.0f} output tokens/s · TTFT p50 {s.ttft_p50_s:.3g} s, p99 "
        f"{s.ttft_p99_s:.3g} s · TPOT p50 {1e3 * s.tpot_p50_s:.3g} ms, p99 {1e3 * s.tpot_p99_s:.3g} ms</p>"
        f"<p>goodput {s.goodput_rps:.3g} requests/s ({100 * s.slo_attainment:.3g} % meet TTFT ≤ {ttft_slo_s:g} s and "
        f"TPOT ≤ {1e3 * tpot_slo_s:g} ms) · KV memory peak {100 * s.kv_peak_fraction:.3g} % of "
        f"{result.config.num_blocks:,} blocks · {int(s.preemptions)} preemptions</p></div>"
    )


def serving_explorer(m: str = "llama-2-7b", device: str = "a100-80gb", requests: int = 300):
    """A live explorer (ipywidgets) of one serving replica: model, device, policy, arrival rate, maximum batch
    and token budget; the read-out and the memory/queue chart redraw on every change. The workload is the
    Azure conversation trace's lengths with Poisson arrivals. In the book build it returns a still of its
    initial state (:func:`.live.live_or_still`). Introduced in Chapter 9."""
    first = {"policy": "continuous", "rate": 4.0, "max_batch": 256, "budget": 512}

    def still() -> str:
        res = simulate(m, device, sweep_workload(first["rate"], requests), first["policy"],
                       max_batch=first["max_batch"])
        return serving_summary_html(res)

    return live_or_still(
        lambda: _serving_widget(m, device, requests, first), still,
        title="Serving explorer", call=f"uv.serving_explorer(requests={requests})",
        settings={"model": m, "device": device, "policy": first["policy"], "requests/s": first["rate"],
                  "max batch": first["max_batch"], "requests": requests},
        description=f"Simulated serving of {m} on {device}: throughput, latency, goodput and memory of one run")


def _serving_widget(m: str, device: str, requests: int, first: dict):
    import ipywidgets as w
    from IPython.display import display

    from ..plots.serving import memory_chart

    model_w = w.Dropdown(options=model_names(), value=m)
    device_w = w.Dropdown(options=device_names(), value=device)
    policy_w = w.ToggleButtons(options=list(POLICIES), value=first["policy"])
    rate_w = w.FloatLogSlider(value=first["rate"], base=2, min=-2, max=6, step=0.25, layout=slider_layout())
    batch_w = w.SelectionSlider(options=[8, 16, 32, 64, 128, 256, 512], value=first["max_batch"],
                                layout=slider_layout())
    budget_w = w.SelectionSlider(options=[256, 512, 1024, 2048, 4096, 8192], value=first["budget"],
                                 layout=slider_layout())
    out = w.Output()

    def redraw(*_):
        out.clear_output(wait=True)
        with out:
            try:
                budget = budget_w.value if policy_w.value == "chunked" else None
                res = simulate(model_w.value, device_w.value, sweep_workload(rate_w.value, requests), policy_w.value,
                               max_batch=batch_w.value, max_batched_tokens=budget)
            except ValueError as exc:
                display(w.HTML(f"<p style='color:#cf222e'>{html.escape(str(exc))}</p>"))
                return
            display(w.HTML(serving_summary_html(res)))
            display(memory_chart({policy_w.value: res.memory()}, title="KV memory and queue over time"))

    for widget in (model_w, device_w, policy_w, rate_w, batch_w, budget_w):
        widget.observe(redraw, names="value")
    redraw()
    return w.VBox([control_row([labelled("model", model_w, "60px"), labelled("device", device_w, "60px")]),
                   labelled("policy", policy_w, "60px"),
                   control_row([labelled("requests/s", rate_w, "90px"), labelled("max batch", batch_w, "90px")]),
                   labelled("chunk budget", budget_w, "110px"), out])
