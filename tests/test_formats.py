"""Number formats (unveiled.quant.formats): bit-exact against PyTorch's FP8 casts, MX/NVFP4 on their grids,
encode/decode round trips, bits per element, and the formats inside the quantizer framework."""

from __future__ import annotations

import math

import pytest
import torch

import unveiled.quant as uq
from unveiled.quant import formats as F

TORCH_FP8 = {name: getattr(torch, e.torch_dtype) for name, e in F.ELEMENTS.items() if e.torch_dtype}
# Where PyTorch's cast saturates (E4M3 "fn": finite values never become NaN) and where it overflows.
TORCH_SATURATES = {"fp8_e4m3": True, "fp8_e5m2": False, "fp8_e4m3fnuz": False, "fp8_e5m2fnuz": False}


def bits32(t: torch.Tensor) -> torch.Tensor:
    """float32 bit patterns with every NaN mapped to one pattern (NaN payloads are not part of a format)."""
    t = t.to(torch.float32)
    return torch.where(torch.isnan(t), torch.full_like(t, math.nan), t).view(torch.int32)


def torch_reference(x: torch.Tensor, name: str, saturate: bool) -> torch.Tensor:
    """PyTorch's own cast, made saturating (clamp first) or overflowing (NaN for the formats without inf)."""
    fmt = F.ELEMENTS[name]
    dtype = TORCH_FP8[name]
    if saturate and not TORCH_SATURATES[name]:
        return x.clamp(-fmt.max_finite, fmt.max_finite).to(dtype).float()
    ref = x.to(dtype).float()
    if not saturate and TORCH_SATURATES[name]:
        # The non-saturating E4M3 conversion: beyond 464 (= 448 + half a step; 464 itself is a tie that rounds to
        # the even 448) the rounded value would be 480, which is the NaN pattern S.1111.111.
        ref = torch.where(x.abs().float() > 464, torch.full_like(ref, math.nan), ref)
    return ref


def boundary_inputs(name: str) -> torch.Tensor:
    """Every grid value, every midpoint between neighbours (the ties), and their float32 neighbours, both signs,
    plus the same beyond the largest value and below the smallest subnormal."""
    fmt = F.ELEMENTS[name]
    g = fmt.grid().to(torch.float64)
    g = g[g >= 0]
    nxt = 2 * g[-1] - g[-2]  # the value the format would have next (the overflow threshold is its midpoint)
    pts = torch.cat([g, torch.tensor([nxt])])
    mids = (pts[1:] + pts[:-1]) / 2
    base = torch.cat([pts, mids, mids / 2**20, torch.tensor([fmt.min_subnormal / 4, 1e-30, 3e38])]).float()
    neighbours = [base, torch.nextafter(base, torch.full_like(base, math.inf)),
                  torch.nextafter(base, torch.full_like(base, -math.inf))]
    x = torch.cat(neighbours)
    x = x[torch.isfinite(x)]
    return torch.cat([x, -x])


def all_16bit(dtype: torch.dtype) -> torch.Tensor:
    x = torch.arange(-(2**15), 2**15, dtype=torch.int32).to(torch.int16).view(dtype)
    return x[torch.isfinite(x)]


# --- element formats against PyTorch ---------------------------------------------------------------------


@pytest.mark.parametrize("name", list(TORCH_FP8))
def test_code_tables_equal_pytorchs_fp8_dtypes(name):
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ref = codes.view(TORCH_FP8[name]).float()
    assert torch.equal(bits32(F.ELEMENTS[name].values()), bits32(ref))
    assert F.ELEMENTS[name].max_finite == torch.finfo(TORCH_FP8[name]).max


@pytest.mark.parametrize("name", list(TORCH_FP8))
@pytest.mark.parametrize("saturate", [True, False])
@pytest.mark.parametrize("source", ["boundaries", "bf16", "fp16", "random"])
def test_rounding_equals_pytorchs_cast_bit_for_bit(name, saturate, source):
    if source == "boundaries":
        x = boundary_inputs(name)
    elif source == "random":  # float32 spread over every binade the formats touch, both signs
        gen = torch.Generator().manual_seed(0)
        mant = torch.rand(1 << 18, generator=gen) + 1
        x = (mant * torch.exp2(torch.randint(-40, 40, (1 << 18,), generator=gen).float()))
        x = torch.where(torch.rand(1 << 18, generator=gen) < 0.5, -x, x)
    else:
        x = all_16bit(torch.bfloat16 if source == "bf16" else torch.float16).float()
    ours = F.round_to_element(x, name, saturate=saturate)
    assert torch.equal(bits32(ours), bits32(torch_reference(x, name, saturate)))


@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_fake_quantization_entry_point_equals_the_cast_on_16_bit_inputs(name):
    """quantize_dequantize(x, "fp8_e4m3") is PyTorch's float8_e4m3fn cast; "fp8_e5m2" its saturating twin."""
    for dtype in (torch.bfloat16, torch.float16):
        x = all_16bit(dtype)
        y = F.quantize_dequantize(x, name)
        assert y.dtype == dtype
        assert torch.equal(bits32(y.float()), bits32(torch_reference(x.float(), name, saturate=True)))
    x = boundary_inputs(name)
    unsat = F.quantize_dequantize(x, F.get_format(name, saturate=False))
    assert torch.equal(bits32(unsat), bits32(torch_reference(x, name, saturate=False)))


@pytest.mark.slow
@pytest.mark.parametrize("name", ["fp8_e4m3", "fp8_e5m2"])
def test_rounding_equals_the_cast_on_every_float32_of_the_formats_range(name):
    """Every positive float32 from a quarter of the smallest subnormal to four times the largest value (all 2^23
    mantissas of each binade: 21 binades for E4M3, 35 for E5M2; a few minutes on one core), and 4,096
    mantissas of every other binade; the signs are covered by the 16-bit tests above."""
    fmt = F.ELEMENTS[name]
    lo, hi = fmt.emin - fmt.man_bits - 2, fmt.emax + 2
    mantissas = torch.arange(1 << 23, dtype=torch.int32)
    sample = torch.cat([torch.arange(2048, dtype=torch.int32), (1 << 23) - 1 - torch.arange(2048, dtype=torch.int32)])
    for biased in range(0, 255):
        exhaustive = lo <= biased - 127 < hi
        x = ((biased << 23) | (mantissas if exhaustive else sample)).view(torch.float32)
        for saturate in (True, False):
            ours = F.round_to_element(x, name, saturate=saturate)
            assert torch.equal(bits32(ours), bits32(torch_reference(x, name, saturate))), (biased, saturate)


def test_ties_go_to_the_even_code_and_e2m1_follows_the_spec():
    # E2M1 magnitudes 0, 0.5, 1, 1.5, 2, 3, 4, 6 (codes 0-7); midpoints go to the even code.
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 7.0, 100.0, -0.25, -5.0])
    expect = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, -0.0, -4.0])
    assert torch.equal(bits32(F.round_to_element(x, "fp4_e2m1")), bits32(expect))
    for name, fmt in F.ELEMENTS.items():
        g = fmt.grid().double()
        g = g[g >= 0]
        mids = ((g[1:] + g[:-1]) / 2).float()
        codes = F.encode_element(F.round_to_element(mids, name), name)
        assert torch.all((codes.int() & 1) == 0), name


def test_e8m0_codes_equal_pytorchs_float8_e8m0fnu():
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    ref = codes.view(torch.float8_e8m0fnu).float()
    assert torch.equal(bits32(F.decode_e8m0(codes)), bits32(ref))
    k = torch.arange(-127, 128)
    assert torch.equal(F.encode_e8m0(k), torch.exp2(k.double()).float().to(torch.float8_e8m0fnu).view(torch.uint8))
    with pytest.raises(ValueError, match="-127, 127"):
        F.encode_e8m0(torch.tensor([128]))


# --- encode / decode --------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(F.ELEMENTS))
def test_encode_decode_round_trips_every_code(name):
    fmt = F.ELEMENTS[name]
    codes = torch.arange(2**fmt.bits, dtype=torch.int32).to(torch.uint8)
    values = F.decode_element(codes, name, torch.float64)
    again = F.encode_element(values, name)
    keep = ~torch.isnan(values)
    assert torch.equal(again[keep], codes[keep])
    if name in TORCH_FP8:
        x = boundary_inputs(name)
        q = F.round_to_element(x, name)
        assert torch.equal(F.encode_element(q, name), q.to(TORCH_FP8[name]).view(torch.uint8))
        assert torch.equal(bits32(F.decode_element(F.encode_element(q, name), name)), bits32(q))


def test_encode_refuses_values_off_the_grid_and_decode_refuses_wide_codes():
    with pytest.raises(ValueError, match="not on the fp4_e2m1 grid"):
        F.encode_element(torch.tensor([0.7]), "fp4_e2m1")
    with pytest.raises(ValueError, match="4-bit"):
        F.decode_element(torch.tensor([16], dtype=torch.uint8), "fp4_e2m1")
    with pytest.raises(TypeError, match="uint8"):
        F.decode_element(torch.tensor([1]), "fp4_e2m1")


# --- block formats ----------------------------------------------------------------------------------------


def weights(shape=(64, 256), seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(shape, generator=gen) * 0.02
    w[3, 17] = 0.9  # an outlier
    w[5, :32] *= 1e-5  # a block of tiny values
    w[6, 32:64] = 0  # an all-zero block
    return w


@pytest.mark.parametrize("name", ["mxfp8", "mxfp6", "mxfp4", "mxfp8_e5m2", "mxfp6_e3m2"])
def test_mx_values_are_grid_values_times_the_blocks_power_of_two(name):
    spec = F.get_format(name)
    elem = spec.element_format
    w = weights()
    qt = F.quantize(w, spec)
    y = F.quantize_dequantize(w, spec)
    assert torch.equal(qt.dequantize(), y)  # encode -> decode round trip, bit for bit
    blocks = w.reshape(64, -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    # OCP MX v1.0 §6.3: shared exponent floor(log2 amax) - emax_elem, as an E8M0 code
    k = torch.where(amax > 0, torch.floor(torch.log2(amax.double())).int() - elem.emax, -127)
    assert torch.equal(qt.scale_codes, (k + 127).to(torch.uint8))
    assert torch.equal(qt.scale, torch.exp2(k.double()).float())
    on_grid = (y.reshape(64, -1, 32) / qt.scale).double()
    assert bool(torch.isin(on_grid, elem.grid()).all())
    # the elements are the rounded, saturated values of x / 2^k
    assert torch.equal(on_grid.float(), F.round_to_element(blocks / qt.scale, elem, saturate=True))
    assert torch.count_nonzero(y[6, 32:64]) == 0


def test_mx_scale_follows_the_spec_on_a_hand_example():
    # amax 6 -> 2^(2 - 2) = 1 (fits exactly); amax 7.9 -> also 2^0, and 7.9 saturates to 6 (the floor rule's clipping)
    x = torch.zeros(2, 32)
    x[0, 0], x[0, 1], x[1, 0], x[1, 1] = 6.0, 0.3, 7.9, -2.6
    qt = F.quantize(x, "mxfp4")
    assert qt.scale.flatten().tolist() == [1.0, 1.0]
    assert F.quantize_dequantize(x, "mxfp4")[:, :2].tolist() == [[6.0, 0.5], [6.0, -3.0]]
    tiny = torch.full((1, 32), 3e-3)  # floor(log2 3e-3) = -9 -> scale 2^-11, 3e-3 / 2^-11 = 6.14 -> 6
    assert float(F.quantize(tiny, "mxfp4").scale) == 2.0**-11


def test_mx_ceil_scale_rounding_never_clips_the_block_maximum():
    w = weights()
    for name in ("mxfp4", "mxfp8"):
        floor, ceil = F.get_format(name), F.get_format(name, scale_rounding="ceil")
        elem = floor.element_format
        blocks = w.reshape(64, -1, 32).double()
        amax = blocks.abs().amax(-1, keepdim=True)
        k = torch.where(amax > 0, torch.ceil(torch.log2(amax / elem.max_finite)), -127)  # no value sits on an edge
        qt = F.quantize(w, ceil)
        assert torch.equal(qt.scale.double(), torch.exp2(k))
        assert bool((amax / qt.scale.double() <= elem.max_finite).all())  # nothing saturates
        clipped = (amax / F.quantize(w, floor).scale.double() > elem.max_finite).float().mean()
        assert clipped > 0  # the OCP floor rule does clip some block maxima of real-looking weights
        assert "ceil" in ceil.label and F.get_format(name, scale_rounding="ceil").scale_rounding == "ceil"
    with pytest.raises(ValueError, match="E8M0"):
        F.FormatSpec("fp4_e2m1", "group", 16, "fp8_e4m3", scale_rounding="ceil")


def test_nvfp4_two_level_scales():
    w = weights()
    qt = F.quantize(w, "nvfp4")
    y = F.quantize_dequantize(w, "nvfp4")
    assert torch.equal(qt.dequantize(), y)
    t = qt.tensor_scale
    assert t == pytest.approx(float(w.abs().max()) / (6 * 448), rel=1e-7)
    s = qt.scale
    assert bool(torch.isin(s.double(), F.ELEMENTS["fp8_e4m3"].grid()).all())  # block scales are E4M3 values
    assert float(s.max()) == 448.0  # the block holding the tensor's max uses the top of the E4M3 range
    assert torch.equal(F.decode_element(qt.scale_codes, "fp8_e4m3"), s)
    elems = F.decode_element(qt.codes, "fp4_e2m1").reshape(64, -1, 16)
    assert torch.equal(((elems * s) * t).reshape(w.shape), y)  # decode order: (element * block scale) * tensor
    # finer blocks and finer scales: less error than MXFP4 on the same weights
    err = {n: float((F.quantize_dequantize(w, n) - w).pow(2).mean()) for n in ("nvfp4", "mxfp4")}
    assert err["nvfp4"] < err["mxfp4"]


def test_scaled_element_formats_and_bits_per_element():
    w = weights()
    for scale in ("fp32", "fp16", "bf16", "e8m0", "fp8_e4m3"):
        spec = F.FormatSpec("fp8_e4m3", "channel", scale=scale)
        y = uq.fake_quantize(w, spec)  # the shared entry point dispatches to the format
        assert float((y - w).abs().max()) < 0.1 * float(w.abs().max())
        assert uq.storage_bytes(w.shape, spec) == w.numel() + 64 * F.SCALE_BITS[scale] // 8
    assert F.bits_per_element("mxfp4") == 4.25 and F.bits_per_element("nvfp4") == 4.5
    assert F.bits_per_element("mxfp8") == 8.25 and F.bits_per_element("mxfp6") == 6.25
    assert F.bits_per_element("nvfp4", numel=w.numel()) == 4.5 + 32 / w.numel()
    assert F.bits_per_element(F.FormatSpec("fp8_e4m3", "channel", scale="fp16"), group_size=576) == 8 + 16 / 576
    for name in F.FORMAT_NAMES:
        qt = F.quantize(w, name)
        assert qt.nbytes == math.ceil(F.bits_per_element(name, group_size=None, numel=w.numel()) * w.numel() / 8)
        packed = sum(v.numel() * v.element_size() for v in qt.packed_state().values())
        assert packed == qt.nbytes


def test_format_table_reads_range_against_precision():
    t = F.format_table().set_index("format")
    assert t.loc["fp8_e5m2", "range_binades"] > t.loc["fp8_e4m3", "range_binades"]
    assert t.loc["fp8_e5m2", "values_per_binade"] < t.loc["fp8_e4m3", "values_per_binade"]
    assert t.loc["fp4_e2m1", "max_value"] == 6.0 and t.loc["nvfp4", "bits_per_element"] == 4.5


# --- inside the quantizer framework -------------------------------------------------------------------------


def tiny_decoder():
    from unveiled.models import Decoder, DecoderConfig

    torch.manual_seed(0)
    cfg = DecoderConfig(vocab_size=32, hidden_size=64, intermediate_size=128, num_layers=2, num_heads=4,
                        num_kv_heads=2, max_seq_len=64)
    return Decoder(cfg).eval()


def test_quantize_model_accepts_formats_for_weights_and_activations():
    model = tiny_decoder()
    tokens = torch.randint(0, 32, (2, 16), generator=torch.Generator().manual_seed(1))
    ref = model(tokens)
    for w, a in (("mxfp4", None), ("nvfp4", "nvfp4"), ("fp8_e4m3", "mxfp8")):
        q = uq.quantize_model(model, F.get_format(w), None if a is None else F.get_format(a))
        out = q(tokens)
        assert torch.isfinite(out).all() and not torch.equal(out, ref)
        lin = q.get_submodule("layers.0.mlp.down_proj")
        assert torch.equal(lin.weight, F.quantize_dequantize(model.get_submodule("layers.0.mlp.down_proj").weight, w))
        sizes = uq.model_size(q)
        down = sizes.set_index("kind").loc["down_proj"]
        assert down.bits_per_param == pytest.approx(F.bits_per_element(w, numel=64 * 128)
                                                    if w != "fp8_e4m3" else 8.0)
        state = uq.quantized_state_dict(q)
        assert state["layers.0.mlp.down_proj.codes"].dtype == torch.uint8
        assert "mxfp" in repr(lin) or "nvfp4" in repr(lin) or "fp8" in repr(lin)
    table = uq.error_table(model.get_submodule("layers.0.mlp.down_proj").weight.detach(),
                           [uq.QuantSpec(4, symmetric=True, granularity="group", group_size=32), F.get_format("mxfp4")])
    assert list(table.label) == ["int4 g32 sym", "mxfp4"]
    assert table.bits_per_weight.tolist() == [4.5, 4.25]


def test_bad_input_is_refused_clearly():
    with pytest.raises(ValueError, match=r"Did you mean .*'mxfp4'"):
        F.quantize_dequantize(torch.ones(32), "mxfp5")
    with pytest.raises(ValueError, match="block size 32 does not divide the last dimension 48"):
        F.quantize_dequantize(torch.ones(2, 48), "mxfp4")
    with pytest.raises(ValueError, match="NaN"):
        F.quantize_dequantize(torch.tensor([1.0, math.nan]), "fp8_e4m3")
    with pytest.raises(TypeError, match="format name"):
        F.quantize_dequantize(torch.ones(4), 8)
    with pytest.raises(ValueError, match="needs group_size"):
        F.FormatSpec("fp4_e2m1", "group")
    with pytest.raises(ValueError, match="tensor_scale"):
        F.FormatSpec("fp4_e2m1", "group", 16, "e8m0", tensor_scale=True)
    with pytest.raises(ValueError, match="unknown element format"):
        F.FormatSpec("fp5_e2m2")
