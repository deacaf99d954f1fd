"""Charts and the live explorer of Chapter 8: they build from the library's numbers, carry titles, stay small,
and their log axes never meet zero."""

from __future__ import annotations

import json

import ipywidgets as w
import pandas as pd
import pytest

from unveiled import results
from unveiled.explorers.kernels import flash_explorer, flash_summary_html
from unveiled.kernels.experiments import PATHS, ROOF_GOAL
from unveiled.kernels.io import attention_traffic, traffic_sweep
from unveiled.plots import kernels as kp


def size(chart) -> int:
    return len(json.dumps(chart.to_dict()))


@pytest.fixture(scope="module")
def sweep():
    return traffic_sweep(seq_lens=(256, 1024, 4096), head_dims=(64, 128), buffers_kb=(16, 100, 228), device="a6000")


def test_traffic_chart(sweep):
    chart = kp.traffic_chart(sweep, head_dim=128, buffer_kb=100, title="traffic")
    spec = chart.to_dict()
    assert spec["title"] == "traffic" and spec["width"] == "container"
    values = [row["MB"] for row in spec["datasets"][next(iter(spec["datasets"]))]]
    assert min(values) > 0  # a log axis
    with pytest.raises(ValueError, match="no rows"):
        kp.traffic_chart(sweep, head_dim=96, buffer_kb=100)


def test_static_explorer_binds_widgets_and_stays_small(sweep):
    chart = kp.traffic_explorer_chart(sweep)
    spec = chart.to_dict()
    assert {p["name"] for p in spec["params"]} == {"kern_n", "kern_d"}
    assert all(p.get("bind") for p in spec["params"])
    assert all(panel.get("title") for panel in spec["vconcat"])
    assert size(chart) < 60_000
    assert (sweep[["naive_bytes", "flash_bytes", "bound_bytes", "naive_s", "flash_s"]] > 0).all().all()


def test_fusion_decode_and_profile_charts_from_cached_tables():
    chains = results.cached("kernels.experiments.fusion_chains")
    assert kp.fusion_chart(chains, title="fusion").to_dict()["title"] == "fusion"
    decode = results.cached("kernels.experiments.smollm2_decode")
    spec = kp.decode_speed_chart(decode, goal=ROOF_GOAL, title="decode").to_dict()
    assert spec["title"] == "decode"
    profile = results.cached("kernels.experiments.smollm2_profile")
    chart = kp.profile_chart(profile, title="profile")
    assert chart.to_dict()["title"] == "profile" and size(chart) < 30_000
    kinds = {kp._kind(op) for op in profile.op}
    assert {"matrix-vector (weights)", "attention", "elementwise", "copies", "Python and dispatch"} <= kinds


def test_live_explorer_builds_and_reads_out():
    html = flash_summary_html(4096, 128, 100, "a6000")
    t = attention_traffic(4096, 128, 100e3, device="a6000")
    assert f"{t['tile']} rows" in html and "A6000" in html
    box = flash_explorer("h100-sxm")
    assert isinstance(box, w.VBox)
    assert "H100" in box.children[-1].value


def test_cached_tables_have_the_columns_the_chapter_reads():
    decode = results.cached("kernels.experiments.smollm2_decode")
    assert {"threads", "clock", "path", "tokens_per_s", "fraction_of_roof", "fraction_of_read", "read_bytes_s",
            "compile_cpu_s"} <= set(decode.columns)
    assert set(decode.path) == set(PATHS)
    assert set(decode.threads) == {1, 2} and (decode.fraction_of_roof > 0).all()
    tiny = results.cached("kernels.experiments.tiny_decode")
    assert set(tiny.path) == set(decode.path)
    for name in ("smollm2_decode", "smollm2_profile", "fusion_chains", "tiny_decode"):
        prov = results.cached(f"kernels.experiments.{name}").attrs["provenance"]
        assert prov["command"] == f"python -m unveiled.results run kernels.experiments.{name}"
    assert isinstance(decode, pd.DataFrame)


# ---- the cached tables' deterministic parts, recomputed live ------------------------------------------------------
@pytest.fixture(scope="module")
def smol():
    from unveiled.smollm2 import load_smollm2

    return load_smollm2(progress=False)


def test_cached_profile_bytes_are_the_counters(smol, one_torch_thread):
    from unveiled.kernels.validation import decoder_traffic

    profile = results.cached("kernels.experiments.smollm2_profile").set_index("op")
    live = decoder_traffic(smol, stage="decode", seq_len=64).set_index("op")
    assert (profile.loc[live.index, "bytes"] == live["bytes"]).all()
    assert (profile.loc[live.index, "calls"] == live["calls"]).all()


def test_cached_decode_bytes_are_the_analyzers(smol):
    from unveiled.kernels.decode_step import decode_step_bytes

    decode = results.cached("kernels.experiments.smollm2_decode")
    assert (decode["bytes"] == decode_step_bytes(smol, 64)).all()
    ratio = decode["achieved_bytes_s"] / decode["bandwidth_bytes_s"]
    assert ratio.to_numpy() == pytest.approx(decode["fraction_of_roof"].to_numpy())


def test_cached_fusion_bytes_are_the_counters():
    from unveiled.kernels.fusion import _eager_counts, fusion_cases

    chains = results.cached("kernels.experiments.fusion_chains").set_index("case")
    tokens = int(chains.loc["SwiGLU: SiLU(gate)·up", "compulsory_bytes"] // (3 * 4 * 1536))
    for case in fusion_cases(tokens):
        eager_bytes, kernels, _, compulsory = _eager_counts(case.fn, case.args)
        assert chains.loc[case.name, "eager_bytes"] == eager_bytes
        assert chains.loc[case.name, "eager_kernels"] == kernels
        assert chains.loc[case.name, "compulsory_bytes"] == compulsory


def test_chapter_claims_about_the_cached_measurements():
    """Chapter 8, section 8.7: the library's product streams below a plain read, which streams below the triad (one
    thread, CPU-time clock); compiled, the step streams faster than eager and never faster than a plain read of its
    weights by more than timing noise; the read is measured in the same run as the steps."""
    decode = results.cached("kernels.experiments.smollm2_decode")
    one = decode[(decode.threads == 1) & (decode.clock == "thread")].set_index("path")
    compiled = one[one.index.str.startswith("compiled")]
    assert (compiled.fraction_of_roof > one.loc["eager Decoder", "fraction_of_roof"]).all()
    assert (decode.fraction_of_read < 1.05).all(), decode[["threads", "clock", "path", "fraction_of_read"]]
    assert decode.groupby(["threads", "clock"]).read_bytes_s.nunique().eq(1).all()  # one read per run
    streams = results.cached("kernels.experiments.memory_streams")
    s = streams[(streams.threads == 1) & (streams.clock == "thread")].set_index("kernel").fraction_of_triad
    assert s["GEMV, weight [out, in] (nn.Linear)"] < s["read: sum(a)"] < 1


def test_decode_chart_adds_the_read_as_a_last_bar_per_thread_count():
    decode = results.cached("kernels.experiments.smollm2_decode")
    spec = kp.decode_speed_chart(decode, goal=ROOF_GOAL).to_dict()
    rows = next(iter(spec["datasets"].values()))
    reads = [r for r in rows if r["path"] == kp.READ_PATH]
    assert len(reads) == decode.threads.nunique()
    assert all(r["tokens_per_s"] == "(a read, not a step)" for r in reads)
    assert all(isinstance(r["pct"], float) and 0 < r["pct"] <= 100 for r in rows)
    old = decode.drop(columns=["read_bytes_s", "fraction_of_read"])  # a table from before the read was measured
    rows = next(iter(kp.decode_speed_chart(old, goal=ROOF_GOAL).to_dict()["datasets"].values()))
    assert kp.READ_PATH not in {r["path"] for r in rows}
