"""Chapter 5's views: sweeps, the roofline tables built on them, the CPU measurements' plumbing, charts, explorer.

Timings are never asserted (tests never depend on wall-clock time): only shapes, columns and the arithmetic
around measured numbers."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch

import unveiled as uv
from unveiled import pruning as P
from unveiled.hardware import supports
from unveiled.plots import pruning as plots
from unveiled.pruning import experiments as E
from unveiled.pruning import roofline as R
from unveiled.pruning.speed import break_even, csr_vs_dense, decode_speeds
from unveiled.quant.experiments import calibration_batch

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def tiny_s():
    return uv.zoo.load("S")


@pytest.fixture(scope="module")
def small_sweep(tiny_s):
    grid = [E.Compression("dense"), E.Compression("unstructured", "magnitude", "50%", 0.5),
            E.Compression("unstructured", "wanda", "50%", 0.5), E.Compression("unstructured", "sparsegpt", "50%", 0.5),
            E.Compression("semi-structured", "magnitude", "2:4", 0.5),
            E.Compression("semi-structured", "wanda", "2:4", 0.5),
            E.Compression("semi-structured", "sparsegpt", "2:4", 0.5),
            E.Compression("structured", "magnitude", "mlp", 0.3), E.Compression("low-rank", "svd", "uniform", 0.2)]
    df = E.run_compressions(tiny_s, grid, "tiny", calibration=calibration_batch("tiny", 4, 128), progress=False)
    df.insert(0, "model", "tiny-s")
    return df


def test_grids_cover_what_the_issue_asks():
    smol = E.smollm2_compressions()
    fam = pd.DataFrame([c.describe() for c in smol])
    un = fam[fam.family == "unstructured"]
    assert set(un.method) == {"magnitude", "wanda", "sparsegpt"}
    assert sorted(un.target.unique()) == [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7]
    assert set(fam[fam.family == "semi-structured"].pattern) == {"2:4", "4:8"}
    st = fam[fam.family == "structured"]
    assert set(st.method) == {"magnitude", "activation", "taylor"} and set(st.target) == {0.1, 0.2, 0.3, 0.4}
    assert set(fam[fam.family == "low-rank"].method) == {"svd", "asvd"}
    assert len(fam.label.unique()) == len(fam)
    tiny = pd.DataFrame([c.describe() for c in E.tiny_compressions("S")])
    assert (tiny.recover_steps > 0).sum() == (tiny[tiny.family == "structured"].recover_steps == 0).sum()
    # SmolLM2's shape as written in the grid is the shipped model's (checked against the GGUF's config)
    cfg = uv.smollm2.config_from_gguf(uv.smollm2.read_gguf(verify=False))
    assert (cfg.hidden_size, cfg.num_layers, cfg.num_heads, cfg.num_kv_heads, cfg.intermediate_size) == \
        (576, 30, 9, 3, 1536)


def test_sweep_rows_measure_what_they_remove(small_sweep, tiny_s):
    s = small_sweep.set_index("label")
    assert s.loc["dense", "sparsity"] == 0 and s.loc["dense", "delta_pct"] == 0
    assert s.loc["magnitude 50%", "sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert s.loc["structured 30% (MLP, magnitude)", "sparsity"] == pytest.approx(0.3, abs=2e-3)
    assert s.loc["structured 30% (MLP, magnitude)", "params"] < tiny_s.num_parameters()
    assert s.loc["SVD uniform keep 80%", "sparsity"] == pytest.approx(0.2, abs=5e-3)
    assert (small_sweep.perplexity >= small_sweep.loc[small_sweep.family == "dense", "perplexity"].iloc[0] * 0.99).all()


def test_roofline_views(small_sweep, tiny_s):
    frontier = R.frontier_table(small_sweep, tiny_s, ["a100", "v100"], seq_len=128)
    assert set(frontier.device) == {"NVIDIA A100 SXM 40GB", "NVIDIA V100 SXM2 32GB"}
    dense = frontier[frontier.family == "dense"]
    assert (dense.speedup == 1).all()
    comp = frontier[frontier.family != "dense"]
    assert (comp.speedup > 1).all()  # decode at batch 1 is memory-bound: every form that stores less is faster
    forms = R.forms_speedup_table("llama-2-7b", ["a100", "v100"], batches=(1, 256))
    big = forms[(forms.stage == "prefill") & (forms.batch == 256)].set_index(["device", "form"]).speedup
    assert big[("NVIDIA A100 SXM 40GB", "2:4")] > 1.5 and big[("NVIDIA V100 SXM2 32GB", "2:4")] == pytest.approx(1)
    assert set(forms.sparse_cores) == {"native", "none"}


def test_ordering_table_against_the_anchors(small_sweep):
    anchors = E.published_anchors()
    assert {"paper", "source_url", "where"} <= set(anchors.columns) and anchors.source_url.str.startswith("http").all()
    table = R.ordering_table(small_sweep, anchors)
    llama2 = table[(table.model == "LLaMA-2-7B") & (table.pattern == "50%")].iloc[0]
    assert llama2.order == "wanda < sparsegpt < magnitude"  # 6.42 < 6.51 < 14.89 in the README table
    assert llama2.magnitude_x_dense == pytest.approx(14.89 / 5.12)
    ours = table[table.model == "tiny-s"]
    assert set(ours.pattern) == {"50%", "2:4"} and ours.params_b.iloc[0] == pytest.approx(tiny_params() / 1e9)
    order = E.method_ordering(small_sweep, patterns=("50%",))
    assert order.iloc[0]["order"].count("<") == 2


def tiny_params():
    return uv.zoo.load("S").num_parameters()


def test_break_even_interpolates_and_csr_table_has_its_columns():
    df = pd.DataFrame({"sparsity": [0.5, 0.7, 0.9], "speedup": [0.2, 0.6, 1.4]})
    assert break_even(df) == pytest.approx(0.8)
    assert break_even(df.assign(speedup=[0.1, 0.2, 0.3])) is None
    assert break_even(df.assign(speedup=[1.2, 2, 3])) == 0.5
    table = csr_vs_dense(32, 48, sparsities=(0.5, 0.9), repeats=2, device="a100", budget_s=2)
    assert list(table.columns[:3]) == ["sparsity", "dense_s", "csr_s"]
    assert {"speedup", "predicted_speedup", "csr_bytes", "dense_bytes"} <= set(table.columns)
    assert (table.csr_s > 0).all() and table.csr_bytes.iloc[1] < table.csr_bytes.iloc[0]
    with pytest.raises(ValueError, match="index_bits"):
        P.speed.csr_matrix(torch.eye(3), 16)


def test_decode_speeds_table(tiny_s):
    small, _ = P.structured_prune(tiny_s, 0.3)
    df = decode_speeds({"dense": tiny_s, "structured": small}, list(range(1, 17)), new_tokens=3, budget_s=5)
    assert list(df.model) == ["dense", "structured"] and df.speedup.iloc[0] == 1
    assert df.params.iloc[1] < df.params.iloc[0] and (df.tokens_per_s > 0).all()


def test_charts_render_with_titles_and_descriptions(small_sweep, tiny_s):
    frontier = R.frontier_table(small_sweep, tiny_s, ["a100", "v100"], seq_len=128)
    forms = R.forms_speedup_table("smollm2-135m", ["a100"], batches=(1, 16))
    csr = pd.DataFrame({"sparsity": [0.5, 0.9], "speedup": [0.3, 1.2], "predicted_speedup": [1.0, 5.0]})
    speeds = pd.DataFrame({"model": ["dense", "small"], "speedup": [1.0, 1.3], "predicted_speedup": [1.0, 1.4]})
    ordering = R.ordering_table(small_sweep, E.published_anchors())
    tiny = small_sweep.assign(recover_steps=0)
    charts = [plots.sparsity_curves_chart(small_sweep, title="a"), plots.frontier_explorer_chart(frontier, title="b"),
              plots.forms_speedup_chart(forms, title="c"), plots.csr_break_even_chart(csr, title="d"),
              plots.decode_speed_chart(speeds, title="e"), plots.anchors_chart(ordering, title="f"),
              plots.recovery_chart(tiny, title="g")]
    for chart in charts:
        spec = chart.to_dict()
        assert spec.get("description") and spec.get("title")
    params = {p["name"] for p in charts[1].to_dict()["params"]}
    assert {"dev", "fam", "meth", "most"} <= params


def test_explorer_pieces(small_sweep):
    from unveiled.explorers import pruning as X

    spec = uv.model_spec("llama-2-7b")
    s, form = X.form_for("structured, 1 KV group + MLP", 0.3, spec)
    assert form is None and s.num_kv_heads == spec.num_kv_heads - 1
    assert X.form_for("low rank", 0.4, spec)[1].keep == pytest.approx(0.6)
    with pytest.raises(ValueError, match="form must be one of"):
        X.form_for("random", 0.5, spec)
    import ipywidgets

    assert isinstance(X.pruning_explorer(device="a100"), ipywidgets.Widget)  # an alias, not a dropdown option
    page = X.pruning_table_html("llama-2-7b", "a100", "2:4", 0.5)
    assert "speedup" in page and "native" in page
    svg = X.frontier_svg(small_sweep, "unstructured", 0.5)
    assert svg.startswith("<svg") and svg.count("<circle") == len(small_sweep) - 1
    assert not math.isnan(float(small_sweep.perplexity.max()))


def test_section_5_5_claims_on_the_roofline():
    # Fig. 5.6's text: in prefill only fewer operations (low rank, everywhere) or 2:4 on sparse tensor cores help;
    # unstructured sparsity changes nothing there; in decode CSR at 50 % is slower than dense.
    devices = ["a100", "h100-sxm", "v100", "rtx-4090", "mi300x", "i9-13900k"]
    t = R.forms_speedup_table("llama-2-7b", devices, batches=(1, 16)).set_index(["device", "stage", "batch", "form"])
    for d in devices:
        name = uv.get_device(d).display_name
        assert t.speedup[name, "prefill", 16, "low rank, 50% of parameters"] > 1.2
        assert t.speedup[name, "prefill", 16, "50% unstructured, bitmask"] == pytest.approx(1, abs=1e-3)
        two_four = t.speedup[name, "prefill", 16, "2:4"]
        if supports(d, "sparse_2_4") == "native":
            assert two_four > 1.3
        else:
            assert two_four == pytest.approx(1, abs=1e-3)
        assert t.speedup[name, "decode", 1, "50% unstructured, CSR int32"] < 1 < t.speedup[name, "decode", 1, "2:4"]
