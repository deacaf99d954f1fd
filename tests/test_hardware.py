"""The hardware registry: sourced data, the LLM-Viewer preset, look-ups, user devices and bad input."""

from __future__ import annotations

import csv
import importlib
import io
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import unveiled as uv

hw = importlib.import_module("unveiled.hardware")  # the registry module (uv.get_device looks a device up)


@pytest.fixture
def clean_registry():
    """Let a test register devices without leaking them into other tests."""
    hw._load()
    registry, aliases = dict(hw._REGISTRY), dict(hw._ALIASES)
    yield
    hw._REGISTRY.clear()
    hw._REGISTRY.update(registry)
    hw._ALIASES.clear()
    hw._ALIASES.update(aliases)


def csv_rows() -> list[dict]:
    return list(csv.DictReader(io.StringIO(uv.data_file("hardware.csv").read_text(encoding="utf-8"))))


# --- the data file ----------------------------------------------------------------------------------------


def test_every_row_is_sourced_and_explained():
    for row in csv_rows():
        assert row["source_url"].startswith("https://"), row["name"]
        assert len(row["notes"]) > 20, f"{row['name']} ({row['preset']}) needs notes"
        assert row["preset"] in hw.PRESETS
        assert row["kind"] in hw.KINDS


def test_no_duplicate_rows_and_aliases_resolve_to_their_row():
    seen = set()
    for row in csv_rows():
        key = (row["name"], row["preset"])
        assert key not in seen, f"duplicate row {key}"
        seen.add(key)
        for alias in filter(None, row["aliases"].split(";")):
            assert uv.get_device(alias, row["preset"]).name == row["name"], alias


REQUIRED_DATASHEET = ["a6000", "v100", "a100-40gb", "a100-80gb", "a40", "h100-sxm", "h100-pcie", "l40", "i9-13900k",
                      "h200", "b200", "l4", "l40s", "rtx-4090", "mi300x", "tpu-v5e", "tpu-v6e", "m2-ultra",
                      "jetson-agx-orin"]


def test_the_issue_devices_are_all_in_the_datasheet_preset():
    assert set(REQUIRED_DATASHEET) <= set(uv.device_names("datasheet"))


# LLM-Viewer's hardwares/hardware_params.py (commit 472f71f), as transcribed in the research notes:
# name -> (bandwidth B/s, FP16 ops/s, INT8 ops/s or None, onchip_buffer bytes).
LLM_VIEWER = {
    "v100": (900e9, 112e12, 62e12, 20480e3),
    "a6000": (768e9, 309.677e12 / 2, 309.7e12, 21504e3),
    "a100-40gb": (1555e9, 312e12, 624e12, 27648e3),
    "a100-80gb": (2039e9, 312e12, 624e12, 27648e3),
    "a800-80gb": (2039e9, 312e12, 624e12, 27648e3),
    "a40": (696e9, 149.7e12, 299.3e12, 21504e3),
    "h100-sxm": (3072e9, 1979e12 / 2, 3958e12 / 2, 33792e3),
    "h100-pcie": (2048e9, 1513e12 / 2, 3026e12 / 2, 29184e3),
    "l40": (864e9, 181e12, 362e12, 36352e3),
    "i9-13900k": (89.6e9, 8 * 5.4e9 * 32, None, 36e6),
}


def test_llm_viewer_preset_matches_its_source_exactly():
    assert set(uv.device_names("llm-viewer")) == set(LLM_VIEWER)
    for name, (bw, fp16, int8, onchip) in LLM_VIEWER.items():
        dev = uv.get_device(name, preset="llm-viewer")
        assert dev.bandwidth == pytest.approx(bw, rel=1e-12), name
        assert dev.peak("fp16") == pytest.approx(fp16, rel=1e-6), name
        if int8 is None:
            assert not dev.has("int8")
        else:
            assert dev.peak("int8") == pytest.approx(int8, rel=1e-6), name
        assert dev.onchip_bytes == pytest.approx(onchip, rel=1e-9), name
        assert set(dev.dtypes) <= {"fp16", "int8"}, f"LLM-Viewer gives only FP16 and INT8 ({name})"


def test_the_survey_a6000():
    for preset in hw.PRESETS:
        dev = uv.get_device("a6000", preset)
        assert dev.bandwidth == 768e9
        assert dev.peak("fp16") == pytest.approx(154.8e12, rel=1e-3)
        assert dev.peak("int8") == pytest.approx(309.7e12, rel=1e-9)
        assert dev.ridge_point("fp16") == pytest.approx(201.6, abs=0.1)  # the survey's turning point


def test_peaks_are_dense_not_sparse():
    # Vendors print 2:4-sparsity figures at twice the dense rate; these are the dense ones.
    assert uv.get_device("h100-sxm").peak("fp16") == pytest.approx(989.4e12)
    assert uv.get_device("a100-80gb").peak("bf16") == pytest.approx(312e12)
    assert uv.get_device("l4").peak("fp8") == pytest.approx(242.5e12)
    assert uv.get_device("b200").peak("fp4") == pytest.approx(9000e12)
    for row in csv_rows():
        if row["preset"] == "datasheet" and row["vendor"] in ("NVIDIA", "AMD") and row["peak_fp16_t"]:
            assert "sparsity" in row["notes"].lower() or "sparse" in row["notes"].lower() \
                or "dense" in row["notes"].lower(), f"{row['name']}: say whether the vendor's figure was sparse"


def test_missing_units_are_missing_not_guessed():
    for name in ("h100-sxm", "h100-pcie", "h200"):
        assert not uv.get_device(name).has("int4"), "Hopper has no INT4 tensor cores (survey §3.1.1)"
    assert not uv.get_device("a6000").has("fp8")
    assert not uv.get_device("v100").has("bf16")
    with pytest.raises(ValueError, match=r"no int4 peak.*available"):
        uv.get_device("h100").peak("int4")


def test_nvidia_gpus_have_sm_count_and_shared_memory():
    for dev in (uv.get_device(n) for n in uv.device_names()):
        if dev.vendor == "NVIDIA":
            assert dev.sm_count and dev.sm_count >= 16, dev.name
            assert 48e3 <= dev.smem_per_sm_bytes <= 256e3, dev.name
    assert uv.get_device("h100-sxm").sm_count == 132
    assert uv.get_device("h100-sxm").smem_per_sm_bytes == 228e3
    assert uv.get_device("a100-40gb").smem_per_sm_bytes == 164e3


def test_memory_capacity_is_read_in_the_vendors_unit():
    # An "80 GB" A100 has 80 GiB of HBM; the table says so and the bytes are exact.
    assert uv.get_device("a100-80gb").memory_bytes == 80 * 2**30
    assert uv.get_device("h200").memory_bytes == 141 * 2**30
    table = uv.hardware_table()
    row = table[table["name"] == "a100-80gb"].iloc[0]
    assert row["memory_GiB"] == 80 and row["memory_GB"] == pytest.approx(85.9, abs=0.1)


def test_hardware_table_units_and_ridge():
    table = uv.hardware_table()
    assert {"bandwidth_GB_s", "memory_GB", "fp16_TFLOP_s", "ridge_fp16_or_bf16", "source", "notes"} <= set(table)
    assert sorted(table["name"]) == uv.device_names()
    row = table[table["name"] == "h100-sxm"].iloc[0]
    assert row["ridge_fp16_or_bf16"] == pytest.approx(989.4e12 / 3350e9)
    tpu = table[table["name"] == "tpu-v6e"].iloc[0]
    assert tpu["ridge_fp16_or_bf16"] == pytest.approx(918e12 / 1638e9)  # BF16 where there is no FP16
    assert math.isnan(table[table["name"] == "m2-ultra"].iloc[0]["ridge_fp16_or_bf16"])
    both = uv.hardware_table(None)
    assert set(both["preset"]) == set(hw.PRESETS)


# --- look-ups ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spelling", ["h100", "H100", "h100-sxm", "H100_SXM", "h100 sxm", "NVIDIA H100 SXM",
                                      " nvidia-h100 "])
def test_lookup_is_case_insensitive_with_aliases(spelling):
    assert uv.get_device(spelling).name == "h100-sxm"


def test_lookup_returns_a_device_unchanged():
    dev = uv.get_device("a6000")
    assert uv.get_device(dev) is dev


@pytest.mark.parametrize(("typo", "suggestion"), [("a600", "a6000"), ("h10", "h100-sxm"), ("rtx4900", "rtx-4090"),
                                                  ("mi300", "mi300x"), ("tpuv5e", "tpu-v5e")])
def test_typos_get_close_matches(typo, suggestion):
    with pytest.raises(ValueError, match="unknown device") as err:
        uv.get_device(typo)
    assert suggestion in str(err.value)
    assert "Known devices" in str(err.value)


def test_a_device_in_the_other_preset_is_pointed_to():
    with pytest.raises(ValueError, match="preset='llm-viewer'"):
        uv.get_device("a800")


@pytest.mark.parametrize("bad", [123, None, 4.5, ["a6000"]])
def test_non_string_names_are_type_errors(bad):
    with pytest.raises(TypeError, match="device name must be a str"):
        uv.get_device(bad)


def test_unknown_preset():
    with pytest.raises(ValueError, match="preset must be one of"):
        uv.get_device("a6000", preset="marketing")
    with pytest.raises(ValueError, match="preset must be one of"):
        uv.device_names("nope")


# --- data types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("given", "want"), [("fp16", "fp16"), ("FP16", "fp16"), ("float16", "fp16"), ("half", "fp16"),
                                             ("bfloat16", "bf16"), ("float32", "fp32"), ("e4m3", "fp8")])
def test_dtype_spellings(given, want):
    assert uv.canonical_dtype(given) == want


def test_torch_dtypes_are_accepted():
    torch = pytest.importorskip("torch")
    assert uv.canonical_dtype(torch.bfloat16) == "bf16"
    assert uv.get_device("h100").peak(torch.float16) == uv.get_device("h100").peak("fp16")


def test_bad_dtypes():
    with pytest.raises(ValueError, match=r"unknown data type 'fp12'.*Accepted"):
        uv.get_device("a6000").peak("fp12")
    with pytest.raises(TypeError, match="dtype must be a str"):
        uv.get_device("a6000").peak(16)


# --- user devices ---------------------------------------------------------------------------------------


def test_define_device_in_one_call(clean_registry):
    dev = uv.define_device("My Accelerator", bandwidth_gb_s=2000, peaks_tflops={"fp16": 400, "int8": 800},
                           memory_gb=64, vendor="Acme")
    assert dev.bandwidth == 2e12 and dev.peak("int8") == 8e14 and dev.memory_bytes == 64e9
    assert dev.ridge_point("fp16") == pytest.approx(200.0)
    assert uv.get_device("my accelerator") is dev
    assert uv.get_device("MY_ACCELERATOR") is dev
    with pytest.raises(ValueError, match="already exists"):
        uv.define_device("my-accelerator", bandwidth_gb_s=1, peaks_tflops={"fp16": 1})
    again = uv.define_device("my-accelerator", bandwidth_gb_s=1, peaks_tflops={"fp16": 1}, overwrite=True)
    assert uv.get_device("my-accelerator") is again


def test_define_device_without_registering(clean_registry):
    uv.define_device("scratch", bandwidth_gb_s=10, peaks_tflops={"fp32": 1}, register=False)
    with pytest.raises(ValueError, match="unknown device"):
        uv.get_device("scratch")


def test_a_new_device_cannot_take_an_alias(clean_registry):
    with pytest.raises(ValueError, match="alias"):
        uv.define_device("h100", bandwidth_gb_s=1, peaks_tflops={"fp16": 1})


@pytest.mark.parametrize(("kwargs", "error", "match"), [
    ({"bandwidth_gb_s": 0}, ValueError, "bandwidth_gb_s must be > 0"),
    ({"bandwidth_gb_s": -768}, ValueError, "bandwidth_gb_s must be > 0"),
    ({"bandwidth_gb_s": float("nan")}, ValueError, "finite"),
    ({"bandwidth_gb_s": float("inf")}, ValueError, "finite"),
    ({"bandwidth_gb_s": "fast"}, TypeError, "real number"),
    ({"peaks_tflops": {"fp16": 0}}, ValueError, "must be > 0"),
    ({"peaks_tflops": {"fp16": -1}}, ValueError, "must be > 0"),
    ({"peaks_tflops": {"fp17": 100}}, ValueError, "unknown data type"),
    ({"peaks_tflops": {}}, ValueError, "at least one peak"),
    ({"peaks_tflops": [100]}, TypeError, "peaks_tflops must be a dict"),
    ({"memory_gb": 0}, ValueError, "memory_gb must be > 0"),
    ({"kind": "quantum"}, ValueError, "kind must be one of"),
    ({"colour": "green"}, TypeError, "unexpected keyword"),
])
def test_define_device_rejects_bad_input(clean_registry, kwargs, error, match):
    args = {"bandwidth_gb_s": 100, "peaks_tflops": {"fp16": 10}} | kwargs
    with pytest.raises(error, match=match):
        uv.define_device("bad-device", register=False, **args)


def test_define_device_name_must_be_a_string():
    with pytest.raises(TypeError, match="name must be a non-empty str"):
        uv.define_device(42, bandwidth_gb_s=1, peaks_tflops={"fp16": 1}, register=False)


def test_with_makes_what_if_variants():
    dev = uv.get_device("a6000")
    fast = dev.with_(bandwidth=3 * dev.bandwidth)
    assert fast.ridge_point("fp16") == pytest.approx(dev.ridge_point("fp16") / 3)
    assert dev.bandwidth == 768e9  # the original is unchanged (frozen)
    with pytest.raises(TypeError, match="no field"):
        dev.with_(bandwith=1e12)
    with pytest.raises(ValueError, match="must be > 0"):
        dev.with_(bandwidth=0)


@settings(max_examples=60, deadline=None)
@given(bw=st.floats(1e-3, 1e5), peak=st.floats(1e-4, 1e5))
def test_user_devices_roundtrip_their_units(bw, peak):
    dev = uv.define_device("prop", bandwidth_gb_s=bw, peaks_tflops={"bf16": peak}, register=False)
    assert dev.bandwidth == pytest.approx(bw * 1e9)
    assert dev.peak("bf16") == pytest.approx(peak * 1e12)
    assert dev.ridge_point("bf16") == pytest.approx(peak * 1e12 / (bw * 1e9))


def test_device_features_are_sourced_and_queried_by_canonical_name(monkeypatch):
    table = hw.device_features()
    assert list(table.columns) == ["device", "feature", "support", "source_url", "notes"]
    assert set(table["feature"]) <= set(hw.FEATURES) and set(table["support"]) <= set(hw.SUPPORT_LEVELS)
    assert hw.supports("a6000", "fp4_e2m1") in {None, *hw.SUPPORT_LEVELS}
    with pytest.raises(ValueError, match="Did you mean 'sparse_2_4'"):
        hw.supports("a6000", "sparse24")
    # A row is found by any alias of its device, and a bad row is refused with its line number.
    fake = "device,feature,support,source_url,notes\nrtx-a6000,sparse_2_4,native,https://example.org,x\n"
    monkeypatch.setattr(hw, "data_file", lambda name: _Text(fake) if name == "device_features.csv" else _orig(name))
    assert hw.supports("a6000", "sparse_2_4") == "native"
    monkeypatch.setattr(hw, "data_file", lambda name: _Text(fake.replace("native", "fast"))
                        if name == "device_features.csv" else _orig(name))
    with pytest.raises(ValueError, match="line 2: support must be one of"):
        hw.device_features()


class _Text:
    def __init__(self, text: str):
        self.text = text

    def read_text(self, encoding: str = "utf-8") -> str:
        return self.text


def _orig(name: str):
    from unveiled.datafiles import data_file

    return data_file(name)
