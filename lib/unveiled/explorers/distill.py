"""A live teacher-vs-student explorer (ipywidgets): what a distilled model buys on any device.

Pick a teacher and a student (any model the analyzer knows, or a preset pair), a device, the batch, the
context length and the weight precision; the table shows, for both models, the memory footprint, whether it
fits, the time to first token, the time per output token, the throughput and the largest batch that fits,
all from the analyzer's roofline model [Yuan et al. 2024]. The static page shows a still of the initial state; the
Altair version of the chapter works without a kernel. Introduced in Chapter 4.
"""

from __future__ import annotations

import html

from .live import control_row, labelled, live_or_still, slider_layout

__all__ = ["teacher_student_explorer", "teacher_student_table"]


def teacher_student_table(teacher: str, student: str, device: str, *, batch: int = 1, context: int = 2048,
                          w_bits: int = 16) -> str:
    """The explorer's HTML table for one setting (also usable on its own). Introduced in Chapter 4."""
    from ..analyzer import estimate_generation, max_batch
    from ..hardware import get_device

    dev = get_device(device)
    cols, results = {}, {}
    for role, name in (("teacher", teacher), ("student", student)):
        gen = estimate_generation(name, dev, batch=batch, prompt_len=context, gen_len=2, w_bits=w_bits, check_context=False)
        mb = max_batch(name, dev, seq_len=context, w_bits=w_bits) if dev.memory_bytes else None
        results[role] = gen
        mem = gen.memory
        fits = "—" if mem.fits is None else ("yes" if mem.fits else "<b style='color:#d62728'>no</b>")
        cols[role] = [html.escape(name), f"{mem.weights / 1e9:.3g}", f"{mem.kv_cache / 1e9:.3g}",
                      f"{mem.total / 1e9:.3g}", fits, f"{gen.ttft_s * 1e3:.3g}", f"{gen.tpot_s * 1e3:.3g}",
                      f"{batch / gen.tpot_s:,.0f}", "—" if mb is None else str(mb)]
    # One row per quantity, one column per model: narrow enough for a phone.
    labels = ["model", "weights (GB)", "KV cache (GB)", "total (GB)", "fits", "TTFT (ms)", "TPOT (ms)",
              "tokens/s", "largest batch"]
    rows = "".join(f"<tr><th style='text-align:left'>{lab}</th><td>{t}</td><td>{s}</td></tr>"
                   for lab, t, s in zip(labels, cols["teacher"], cols["student"], strict=True))
    speed = results["teacher"].tpot_s / results["student"].tpot_s
    cap = "unknown" if not dev.memory_bytes else f"{dev.memory_bytes / 1e9:.3g} GB"
    return (
        "<table style='font-size:12px'><tr><th></th><th>teacher</th><th>student</th></tr>"
        f"{rows}</table>"
        f"<p style='font-size:12px'>{html.escape(dev.display_name)} ({cap}); batch {batch}, context {context} "
        f"tokens, {w_bits}-bit weights. The student decodes <b>{speed:.2f}×</b> faster per step.</p>")


def teacher_student_explorer(teacher: str = "llama-2-13b", student: str = "llama-2-7b", device: str = "a6000", *,
                             batch: int = 1, context: int = 2048, w_bits: int = 16):
    """A live explorer of teacher vs student on any device; returns an ``ipywidgets.VBox`` (a still of the
    initial state in the book build, :func:`.live.live_or_still`).

    Introduced in Chapter 4.
    """
    from ..analyzer import model_names
    from ..hardware import get_device

    models = model_names()
    for label, value in (("teacher", teacher), ("student", student)):
        if value not in models:
            from .._validate import unknown_name

            raise unknown_name(f"{label} model", value, models)
    get_device(device)  # fail early on an unknown device
    start = dict(teacher=teacher, student=student, device=device, batch=batch, context=context, w_bits=w_bits)
    return live_or_still(
        lambda: _teacher_student_widget(**start),
        lambda: teacher_student_table(teacher, student, device, batch=batch, context=context, w_bits=w_bits),
        title="Teacher-vs-student explorer",
        call=f"teacher_student_explorer({teacher!r}, {student!r}, {device!r}, context={context})",
        settings={"teacher": teacher, "student": student, "device": device, "batch": batch,
                  "context": f"{context:,} tokens", "weights": f"{w_bits}-bit"},
        description=f"Memory, time to first token, time per output token and throughput of {teacher} and "
                    f"{student} on {device}")


def _teacher_student_widget(teacher: str, student: str, device: str, batch: int, context: int, w_bits: int):
    import ipywidgets as w

    from ..analyzer import model_names
    from ..distill import PAIRS
    from ..hardware import device_names

    models = model_names()
    devices = sorted({*device_names(), device})
    presets = w.Dropdown(options=["(custom)", *PAIRS], value="(custom)")
    t_pick = w.Dropdown(options=models, value=teacher)
    s_pick = w.Dropdown(options=models, value=student)
    d_pick = w.Dropdown(options=devices, value=device)
    b_slider = w.IntSlider(value=batch, min=1, max=256, layout=slider_layout())
    c_slider = w.IntSlider(value=context, min=128, max=32768, step=128, layout=slider_layout())
    bits = w.Dropdown(options=[16, 8, 4], value=w_bits)
    out = w.HTML()

    def redraw(*_):
        try:
            out.value = teacher_student_table(t_pick.value, s_pick.value, d_pick.value, batch=b_slider.value,
                                              context=c_slider.value, w_bits=bits.value)
        except ValueError as e:  # e.g. a device without a peak for this precision
            out.value = f"<p style='color:#d62728'>{html.escape(str(e))}</p>"

    def preset(change):
        if change["new"] in PAIRS:
            t_pick.value, s_pick.value = PAIRS[change["new"]]

    presets.observe(preset, names="value")
    for control in (t_pick, s_pick, d_pick, b_slider, c_slider, bits):
        control.observe(redraw, names="value")
    redraw()
    left = w.VBox([labelled("preset", presets), labelled("teacher", t_pick), labelled("student", s_pick),
                   labelled("device", d_pick)])
    right = w.VBox([labelled("batch", b_slider), labelled("context", c_slider), labelled("weight bits", bits)])
    return w.VBox([control_row([left, right], align_items="flex-start"), out])
