"""Charts of the appendix "The models in this book": training curves and predicted-vs-measured pass times."""

from __future__ import annotations

import altair as alt
import pandas as pd

from .style import STAGE_COLORS, color_scale

__all__ = ["predicted_vs_measured", "training_curves"]


def training_curves(cards: dict[str, dict]) -> alt.Chart:
    """Training loss (every 10 steps) and validation loss (first 16k validation characters) per zoo model.

    ``cards`` maps a model name to its model card (:func:`unveiled.zoo.card`). Introduced in the appendix
    "The models in this book".
    """
    rows = []
    for name, card in cards.items():
        for point in card["curve"]:
            rows.append({"model": name, "step": point["step"], "split": "train (batch)", "loss": point["train_loss"]})
            if point.get("val_loss_16k") is not None:
                rows.append({"model": name, "step": point["step"], "split": "validation (16k chars)",
                             "loss": point["val_loss_16k"]})
    df = pd.DataFrame(rows)
    return (
        alt.Chart(df)
        .mark_line(point=alt.OverlayMarkDef(size=20))
        .encode(
            x=alt.X("step:Q", title="training step"),
            y=alt.Y("loss:Q", title="loss (nats per character)", scale=alt.Scale(zero=False)),
            color=alt.Color("model:N", title="model"),
            strokeDash=alt.StrokeDash("split:N", title=None, legend=alt.Legend(symbolType="stroke")),
            tooltip=["model", "split", "step", alt.Tooltip("loss:Q", format=".3f")],
        )
        .properties(width=480, height=260, description="Training and validation loss of each of the book's tiny "
                                                       "models against the training step")
    )


def predicted_vs_measured(errors: pd.DataFrame) -> alt.HConcatChart:
    """Measured pass time against the roofline prediction and the calibrated prediction (log-log).

    ``errors`` is the table of :func:`unveiled.calibration.prediction_errors`. Points on the diagonal are
    predicted exactly; colour is the stage (book palette), shape the model. Introduced in the appendix "The
    models in this book".
    """
    base = errors[["model", "stage", "batch", "seq_len", "measured_s", "roofline_s", "calibrated_s"]]
    long = base.melt(id_vars=["model", "stage", "batch", "seq_len", "measured_s"],
                     value_vars=["roofline_s", "calibrated_s"], var_name="predictor", value_name="predicted_s")
    long["predictor"] = long["predictor"].map({"roofline_s": "roofline (analyzer)", "calibrated_s": "calibrated"})
    lo = float(min(long.predicted_s.min(), long.measured_s.min())) / 2
    hi = float(max(long.predicted_s.max(), long.measured_s.max())) * 2
    domain = [lo, hi]
    panels = []
    for predictor in ("roofline (analyzer)", "calibrated"):
        data = long[long.predictor == predictor]
        diagonal = alt.Chart(pd.DataFrame({"t": domain})).mark_line(color="#999999", strokeDash=[4, 4]).encode(
            x=alt.X("t:Q", scale=alt.Scale(type="log", domain=domain)),
            y=alt.Y("t:Q", scale=alt.Scale(type="log", domain=domain)),
        )
        points = alt.Chart(data).mark_point(filled=True, size=60, opacity=0.8).encode(
            x=alt.X("predicted_s:Q", title=f"predicted time, {predictor} (s)",
                    scale=alt.Scale(type="log", domain=domain)),
            y=alt.Y("measured_s:Q", title="measured time (s)", scale=alt.Scale(type="log", domain=domain)),
            color=alt.Color("stage:N", scale=color_scale(STAGE_COLORS, ["prefill", "decode"]), title="stage",
                            legend=alt.Legend(orient="bottom")),
            shape=alt.Shape("model:N", title="model", legend=alt.Legend(orient="bottom")),
            tooltip=["model", "stage", "batch", "seq_len", alt.Tooltip("predicted_s:Q", format=".2e"),
                     alt.Tooltip("measured_s:Q", format=".2e")],
        )
        panels.append((diagonal + points).properties(width=250, height=250, title=predictor))
    return alt.hconcat(*panels)
