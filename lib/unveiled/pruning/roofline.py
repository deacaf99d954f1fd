"""Pruning and factorization on the roofline: when does each weight form speed up decode or prefill, and where?

The survey analyses quantization on the roofline (§3.1.1) but not pruning (§3.2) or factorization (§3.4).
Each compressed model of the cached sweeps maps to an analyzer description: unstructured sparsity to a
compressed weight (a bitmask or CSR indices next to the kept values, multiplied densely on chip), N:M to its
values and position bits (with twice the compute roof on devices whose tensor cores run 2:4), structured
pruning to a smaller dense model, low rank to two thin matmuls. :func:`forms_speedup_table` predicts the
speedup of every form over the dense model across batch sizes and devices; :func:`frontier_table` puts every
row of a perplexity sweep at its predicted speed, the accuracy–speed frontier. Introduced in Chapter 5.
"""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from ..analyzer.sparsity import WeightForm, pruned_spec
from ..hardware import get_device, supports
from .speed import model_spec, predict_pass

__all__ = ["DEFAULT_FORMS", "forms_speedup_table", "frontier_table", "ordering_table", "row_form"]

#: The weight forms compared on the roofline (label -> form), all removing half of the block weights.
DEFAULT_FORMS: dict[str, WeightForm] = {
    "50% unstructured, CSR int32": WeightForm("unstructured", sparsity=0.5, storage="csr", index_bits=32),
    "50% unstructured, bitmask": WeightForm("unstructured", sparsity=0.5, storage="bitmask"),
    "2:4": WeightForm("n:m", n=2, m=4),
    "low rank, 50% of parameters": WeightForm("lowrank", keep=0.5),
}


def forms_speedup_table(model, devices: Sequence, forms: dict[str, WeightForm] | None = None, *,
                        batches: Sequence[int] = (1, 4, 16, 64, 256), seq_len: int = 1024, w_bits: int = 16,
                        a_bits: int = 16) -> pd.DataFrame:
    """Predicted speedup (dense time / form time) of each weight form, per device, stage and batch.

    Decode runs one token per sequence with a KV cache of ``seq_len`` tokens; prefill processes ``seq_len``
    prompt tokens per sequence. Columns: ``device``, ``form``, ``stage``, ``batch``, ``time_s``, ``dense_s``,
    ``speedup``, ``sparse_cores`` (the device's ``sparse_2_4`` support). Introduced in Chapter 5.
    """
    forms = DEFAULT_FORMS if forms is None else forms
    spec = model_spec(model)
    rows = []
    for d in devices:
        dev = get_device(d) if isinstance(d, str) else d
        native = supports(dev, "sparse_2_4")
        for stage in ("decode", "prefill"):
            for b in batches:
                kw = {"stage": stage, "batch": b, "seq_len": seq_len, "w_bits": w_bits, "a_bits": a_bits}
                dense = predict_pass(spec, dev, **kw)["time_s"]
                for label, form in forms.items():
                    t = predict_pass(spec, dev, form, **kw)["time_s"]
                    rows.append({"device": dev.display_name, "form": label, "stage": stage, "batch": b,
                                 "time_s": t, "dense_s": dense, "speedup": dense / t,
                                 "sparse_cores": native or "unknown"})
    return pd.DataFrame(rows)


def row_form(row: pd.Series | dict, spec) -> tuple[object, WeightForm | None]:
    """The analyzer's (model, weight form) for one row of a pruning sweep (see the module docstring).

    Unstructured rows are stored as a bitmask (the compact format a "load sparse, compute dense" kernel
    reads); low-rank rows use one kept share for every projection (the row's measured share). Introduced in
    Chapter 5."""
    family = row["family"]
    if family == "unstructured":
        return spec, WeightForm("unstructured", sparsity=float(row["sparsity"]), storage="bitmask")
    if family == "semi-structured":
        return spec, WeightForm.parse(str(row["pattern"]))
    if family == "structured":
        from .structured import plan_for_sparsity

        cfg = _decoder_config(spec)
        plan = plan_for_sparsity(cfg, float(row["target"]), 1 if row["pattern"] == "kv+mlp" else 0)
        return pruned_spec(spec, plan.kv_groups, plan.mlp_channels), None
    if family == "low-rank":
        return spec, WeightForm("lowrank", keep=max(1e-6, 1.0 - float(row["sparsity"])))
    return spec, None


def _decoder_config(spec):
    from ..models import DecoderConfig

    return DecoderConfig(vocab_size=spec.vocab_size, hidden_size=spec.hidden_size, num_layers=spec.num_layers,
                         num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads,
                         intermediate_size=spec.intermediate_size, head_dim=spec.head_dim)


def frontier_table(sweep: pd.DataFrame, model, devices: Sequence, *, stage: str = "decode", batch: int = 1,
                   seq_len: int = 512, w_bits: int = 16, a_bits: int = 16) -> pd.DataFrame:
    """Every row of a perplexity sweep at its predicted speed on each device: the accuracy–speed frontier.

    Adds ``device``, ``time_s``, ``speedup`` (over the dense model on that device) and ``weights_MB``.
    LoRA-recovered rows are left out (same speed as without recovery). Introduced in Chapter 5."""
    spec = model_spec(model)
    d = sweep[sweep["recover_steps"] == 0] if "recover_steps" in sweep.columns else sweep
    rows = []
    for dv in devices:
        dev = get_device(dv) if isinstance(dv, str) else dv
        kw = {"stage": stage, "batch": batch, "seq_len": seq_len, "w_bits": w_bits, "a_bits": a_bits}
        dense = predict_pass(spec, dev, **kw)
        for _, r in d.iterrows():
            s, form = row_form(r, spec)
            p = predict_pass(s, dev, form, **kw)
            rows.append(r.to_dict() | {"device": dev.display_name, "time_s": p["time_s"],
                                       "speedup": dense["time_s"] / p["time_s"],
                                       "weights_MB": p["weights_bytes"] / 1e6})
    return pd.DataFrame(rows)


def ordering_table(ours: pd.DataFrame, anchors: pd.DataFrame, patterns: Sequence[str] = ("50%", "4:8", "2:4"),
                   methods: Sequence[str] = ("magnitude", "wanda", "sparsegpt")) -> pd.DataFrame:
    """Per model and pattern: the perplexity of each method relative to the dense model, and the methods'
    order from best to worst, for the published models and ours. ``ours`` is a sweep table (its ``model``
    column names the model); ``anchors`` is :func:`~unveiled.pruning.experiments.published_anchors`.
    Columns: ``model``, ``params_b``, ``pattern``, one ``<method>_x_dense`` column per method, ``order``.
    Introduced in Chapter 5."""
    ours = ours.copy()
    for _name, g in ours.groupby("model"):  # the dense model's size, in billions of parameters
        ours.loc[g.index, "params_b"] = float(g.loc[g["family"] == "dense", "params"].iloc[0]) / 1e9
    frames = [anchors[["model", "params_b", "method", "pattern", "perplexity"]]]
    dense_ours = ours.loc[ours["family"] == "dense"].assign(method="dense", pattern="dense")
    part = ours[ours["method"].isin(methods) & ours["family"].isin(("unstructured", "semi-structured"))]
    frames.append(pd.concat([dense_ours, part])[["model", "params_b", "method", "pattern", "perplexity"]])
    table = pd.concat(frames, ignore_index=True)
    rows = []
    for model_name, g in table.groupby("model", sort=False):
        dense = g.loc[g["method"] == "dense", "perplexity"]
        if dense.empty:
            continue
        for p in patterns:
            sub = g[(g["pattern"] == p) & g["method"].isin(methods)].set_index("method")["perplexity"]
            if set(sub.index) != set(methods):
                continue
            row = {"model": model_name, "params_b": float(g["params_b"].iloc[0]), "pattern": p}
            for m in methods:
                row[f"{m}_x_dense"] = float(sub[m] / dense.iloc[0])
            row["order"] = " < ".join(sub.sort_values().index)
            rows.append(row)
    return pd.DataFrame(rows)
