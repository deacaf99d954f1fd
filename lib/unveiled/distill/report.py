"""Small tables for the distillation chapter: model shapes, next-token choices, loss against training cost.
Introduced in Chapter 4.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .._validate import check_int
from .experiments import TINY_BASE, TINY_RUNS

__all__ = [
    "cost_points",
    "model_table",
    "next_token_table",
]

# --------------------------------------------------------------------------------------------------
# Small tables for the chapter
# --------------------------------------------------------------------------------------------------


def model_table(models: dict[str, torch.nn.Module]) -> pd.DataFrame:
    """Shape and size of each model: layers, width, heads, parameters and weight bytes in fp16.

    Introduced in Chapter 4.
    """
    rows = []
    for name, m in models.items():
        c = m.config
        rows.append({"model": name, "num_layers": c.num_layers, "hidden_size": c.hidden_size, "num_heads": c.num_heads,
                     "num_kv_heads": c.num_kv_heads, "vocab_size": c.vocab_size, "parameters": m.num_parameters(),
                     "weights_bytes_fp16": 2 * m.num_parameters(),
                     "kv_bytes_per_token_fp16": 2 * 2 * c.num_layers * c.num_kv_heads * c.head_dim})
    return pd.DataFrame(rows)


@torch.inference_mode()
def next_token_table(models: dict[str, torch.nn.Module], tokenizer, context: str, k: int = 5) -> pd.DataFrame:
    """The ``k`` most likely next tokens of each model after ``context`` (one column per model).

    Cells read ``'token' probability``. Shows on real text what the divergences do: a mode-seeking student
    puts more mass on the teacher's favourite, a mode-covering one keeps the alternatives. Introduced in
    Chapter 4.
    """
    k = check_int("k", k)
    ids = torch.tensor([tokenizer.encode(context)])
    out = {}
    for name, m in models.items():
        probs = m(ids)[0, -1].float().softmax(-1)
        top = torch.topk(probs, k)
        out[name] = [f"{tokenizer.decode([int(i)])!r} {float(p):.3f}" for p, i in zip(top.values, top.indices,
                                                                                      strict=True)]
    return pd.DataFrame(out, index=pd.RangeIndex(1, k + 1, name="rank"))


def cost_points(curves: pd.DataFrame, costs: pd.DataFrame, shared_by: int = 5) -> pd.DataFrame:
    """Final validation loss of each tiny run against its training cost, in units of a plain 400-step run.

    ``costs`` is :func:`step_costs`'s table (measured ratios to the plain step). A run with the live teacher
    costs ``steps × ratio``; a cached run costs its steps plus the teacher passes that built the cache, once
    if the run pays for it alone (``cache: own``) or divided among the ``shared_by`` runs that read the same
    cache (``cache: shared``). Black-box and on-policy runs are left out (their costs are of another kind:
    sampling). ``data_frontier`` is the loss plain training reaches at the same cost, interpolated linearly
    between the data-only runs (NaN outside their range): a run below it beats plain training at equal cost.
    Introduced in Chapter 4.
    """
    ratio = costs.set_index("mode").ratio_to_plain
    last = curves.groupby("run").tail(1).set_index("run")
    base = TINY_BASE.steps
    rows = []
    for name, spec in TINY_RUNS.items():
        if name not in last.index or spec.data != "text" or spec.settings.on_policy_fraction > 0:
            continue
        s = spec.settings
        val = float(last.loc[name, "val_loss"])
        if s.alpha == 0:
            rows.append({"run": name, "method": spec.method, "val_loss": val, "cost_plain_steps": s.steps / base})
        elif s.teacher_mode == "online":
            rows.append({"run": name, "method": spec.method, "val_loss": val,
                         "cost_plain_steps": s.steps * ratio["live teacher"] / base})
        else:
            teacher = ratio["teacher pass (cache build)"]
            rows.append({"run": f"{name} (cache: own)", "method": spec.method, "val_loss": val,
                         "cost_plain_steps": s.steps * (ratio["cached top-k"] + teacher) / base})
            rows.append({"run": f"{name} (cache: shared)", "method": spec.method, "val_loss": val,
                         "cost_plain_steps": s.steps * (ratio["cached top-k"] + teacher / shared_by) / base})
    out = pd.DataFrame(rows)
    data = out[out.method == "data only"].sort_values("cost_plain_steps")
    lo, hi = data.cost_plain_steps.min(), data.cost_plain_steps.max()
    out["data_frontier"] = [float(np.interp(c, data.cost_plain_steps, data.val_loss)) if lo <= c <= hi else np.nan
                            for c in out.cost_plain_steps]
    return out
