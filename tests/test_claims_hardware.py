"""Chapter 10's claims: the judging words of its Takeaways, asserted against the analyzer, the registry and the
cached SmolLM2 and tiny-model format tables (tests/claims.py explains the registry)."""

from __future__ import annotations

import pytest

import unveiled as uv
from claims import claim
from unveiled import accelerators as acc
from unveiled.hardware import supports
from unveiled.quant import format_choice as fchoice
from unveiled.quant import format_experiments as fe
from unveiled.quant import formats as F

PAGE = "chapters/10_hardware.ipynb"


@pytest.fixture(scope="module")
def weights():
    return uv.results.cached("quant.smollm2_formats").set_index("label").delta_pct


@pytest.fixture(scope="module")
def both():
    return uv.results.cached("quant.smollm2_formats_wa").set_index("label").delta_pct


def test_figure_20_left_has_the_survey_points():
    """The markdown sentence after Figure 10.1 quotes the survey's two points (38.4 and 115 TFLOP/s): the same."""
    _, points = acc.figure20_left_data()
    assert points.flop_s.tolist() == pytest.approx([38.4e12, 115.2e12])


@claim(PAGE, "PIM wins on operators whose intensity stays below the point where its compute runs out (GEMV at "
             "batch 1, attention over the KV cache: about one operation per byte), by up to the ratio of internal "
             "to interface bandwidth, and loses on batched GEMMs; grouped-query attention raises attention's "
             "intensity to that point, where the gain is gone.")
def test_pim_wins_below_its_crossing_and_loses_on_batched_gemms():
    cube = uv.get_device("hbm-pim-cube")
    host = acc.HBM2_INTERFACE_GB_S * 1e9
    cross, ratio = cube.peak("fp16") / host, cube.bandwidth / host
    one = acc.pim_decode_table("llama-2-7b", batch=1, seq_len=2048).set_index("op")
    sixteen = acc.pim_decode_table("llama-2-7b", batch=16, seq_len=2048).set_index("op")
    gqa = acc.pim_decode_table("llama-3-8b", batch=16, seq_len=2048).set_index("op")
    gemv = ["q_proj", "o_proj", "down_proj", "lm_head"]
    attention = ["qk_matmul", "sv_matmul"]
    for ops, table in ((gemv, one), (attention, sixteen)):
        assert (table.loc[ops, "intensity"] < cross).all()
        assert table.loc[ops, "intensity"].between(0.9, 1.1).all()  # "about one operation per byte"
        assert (table.loc[ops, "speedup"] > 1.5).all()  # wins
    assert (one.speedup <= ratio * (1 + 1e-9)).all() and one.speedup.max() == pytest.approx(ratio)  # "up to"
    assert (sixteen.loc[gemv, "speedup"] < 0.5).all()  # loses on batched GEMMs
    assert gqa.loc["qk_matmul", "intensity"] == pytest.approx(cross, rel=0.05)  # "to that point"
    assert abs(gqa.loc["qk_matmul", "speedup"] - 1) < 0.05  # "where the gain is gone"


@claim(PAGE, "for a quarter to half a bit of scale per value")
def test_block_scales_cost_a_quarter_to_half_a_bit():
    blocks = [n for n in F.FORMAT_NAMES if F.get_format(n).granularity == "group"]
    assert set(blocks) == {"mxfp8", "mxfp6", "mxfp4", "nvfp4"}
    overhead = {n: F.bits_per_element(n) - F.ELEMENTS[F.get_format(n).element].bits for n in blocks}
    assert min(overhead.values()) == pytest.approx(0.25) and max(overhead.values()) == pytest.approx(0.5, abs=1e-3)
    assert {F.get_format(n).group_size for n in blocks} == {16, 32}


@claim(PAGE, "scaled weights need precision more than range, outlier-heavy activations need the float grid")
def test_eight_bits_precision_over_range_and_the_float_grid_for_activations(weights, both):
    # "E4M3 and INT8 cost a fraction of what E5M2 costs" (weights, one scale per channel)
    assert max(weights["INT8 ch"], weights["FP8 E4M3 ch"]) < 0.2 * weights["FP8 E5M2 ch"]
    # precision over range, at 8 and at 6 bits: the format with the extra mantissa bit wins
    assert weights["FP8 E4M3 ch"] < weights["FP8 E5M2 ch"] and weights["FP6 E2M3 ch"] < weights["FP6 E3M2 ch"]
    # SmolLM2's activations have outliers: there FP8 beats INT8; the tiny models' have none, and INT8 keeps up
    assert both["W FP8 E4M3 ch · A FP8 E4M3 token"] < both["W INT8 ch · A INT8 token"]
    tiny = uv.results.cached("quant.tiny_formats").query("mode == 'weights+activations'")
    tiny = tiny.pivot_table(index="label", columns="model", values="delta_pct")
    assert tiny.loc["W INT8 ch · A INT8 token"].max() <= tiny.loc["W FP8 E4M3 ch · A FP8 E4M3 token"].max()


@claim(PAGE, "At 4 bits the scale decides more than the element: NVFP4's short blocks with precise scales beat "
             "MXFP4's power-of-two scales")
def test_four_bits_the_scale_decides(weights, both):
    element = abs(weights["INT4 g32"] - weights["FP4 E2M1 g32"])  # same fp16 scales per 32, two grids
    scale = min(abs(weights["MXFP4"] - weights["FP4 E2M1 g32"]), abs(weights["NVFP4"] - weights["FP4 E2M1 g32"]))
    assert scale > 3 * element
    assert weights["NVFP4"] < min(weights["MXFP4"], weights["MXFP4 (ceil scale)"])
    assert both["W NVFP4 · A NVFP4"] < min(both["W MXFP4 · A MXFP4"],
                                           both["W MXFP4 (ceil scale) · A MXFP4 (ceil scale)"])
    # "and with activations quantized too the gap widens"
    fx = fe.format_findings(uv.results.cached("quant.smollm2_formats"), uv.results.cached("quant.smollm2_formats_wa"))
    assert fx["nvfp4_over_mxfp4_wa"] < fx["nvfp4_over_mxfp4"] < 1


@claim(PAGE, "A storage-only format speeds up memory-bound decode as much as a native one")
def test_storage_only_formats_speed_up_decode_like_native_ones():
    assert supports("h100-sxm", "nvfp4") == "storage" and supports("b200", "nvfp4") == "native"

    def speedup(device, stage, batch):
        run = {f: uv.analyze("llama-2-70b", device, stage=stage, batch=batch, seq_len=2048, number_format=f)
               for f in (None, "nvfp4")}
        return run[None].time_s / run["nvfp4"].time_s

    h100, b200 = speedup("h100-sxm", "decode", 1), speedup("b200", "decode", 1)
    assert h100 > 2 and h100 == pytest.approx(b200, rel=0.01)
    # only native execution raises the compute roof: compute-bound prefill gains on the B200 alone
    assert speedup("h100-sxm", "prefill", 8) == pytest.approx(1, abs=0.01) and speedup("b200", "prefill", 8) > 1.5


@claim(PAGE, "Per-layer formats put most of a model in 4–6 bits while the sensitive layers keep 8 or 16")
def test_per_layer_choice_puts_most_weights_in_four_to_six_bits():
    errors = uv.results.cached("quant.smollm2_format_layers")
    choice = fchoice.choose_formats(errors, 0.01)  # the chapter's budget
    bits = errors.drop_duplicates("format").set_index("format").bits_per_weight.to_dict() | {"BF16": 16}
    summary = fchoice.choice_summary(choice).set_index("format")
    low = summary.params_share[[f for f in summary.index if bits[f] <= 6.5]].sum()
    high = [f for f in summary.index if bits[f] > 6.5]
    assert low > 0.5 and summary.params_share.sum() == pytest.approx(1)
    assert high and all(bits[f] >= 8 for f in high)  # the others keep 8 or 16 bits
    # "decode gains on any device from the bytes, prefill only where the chosen formats are native"
    priced = fchoice.choice_roofline_table(choice, "smollm2-135m", ["h100-sxm", "b200"],
                                          settings=[("decode", 1, 1024), ("prefill", 32, 256)])
    pr = priced.set_index(["device", "stage"]).speedup
    assert pr.xs("decode", level="stage").min() > 1.5
    assert pr.xs("prefill", level="stage").iloc[0] < 1.01 < pr.xs("prefill", level="stage").iloc[1]
