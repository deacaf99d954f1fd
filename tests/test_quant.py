"""Invariants of the quantizers (unveiled.quant): error bounds, exact packing, GPTQ identities, FP equivalence."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from unveiled.models import Decoder, DecoderConfig
from unveiled.quant import (
    QuantSpec,
    awq_model,
    awq_search,
    bits_per_weight,
    compute_params,
    dequantize,
    fake_quantize,
    gptq_model,
    gptq_quantize,
    hadamard,
    hessian_from_inputs,
    int8_matmul,
    layer_error,
    llm_int8_matmul,
    llm_int8_model,
    model_size,
    outlier_columns,
    pack_codes,
    quantize,
    quantize_model,
    quantize_values,
    quantized_state_dict,
    rotate_model,
    rotation_matrix,
    rtn_error,
    smooth_model,
    smooth_scales,
    state_dict_nbytes,
    storage_bytes,
    unpack_codes,
)
from unveiled.quant.uniform import _grouped

TINY = DecoderConfig(vocab_size=65, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
                     intermediate_size=352, name="test-tiny")

SPECS = [
    QuantSpec(bits, symmetric=sym, granularity=gran, group_size=gs, zero_point=zp)
    for bits in (2, 3, 4, 8)
    for sym in (True, False)
    for gran, gs in (("tensor", None), ("channel", None), ("group", 16), ("group", 32))
    for zp in (("integer",) if sym else ("integer", "float"))
]


def _tiny_model(seed: int = 1) -> Decoder:
    m = Decoder(TINY, seed=seed).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # non-trivial norm gains, so folding them is really tested
        for p in m.parameters():
            if p.dim() == 1:
                p.copy_(0.5 + torch.rand(p.shape, generator=gen))
    return m


def _correlated_inputs(n: int, d: int, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    mix = torch.eye(d, dtype=dtype) + torch.randn(d, d, generator=gen, dtype=dtype) / math.sqrt(d)
    x = torch.randn(n, d, generator=gen, dtype=dtype) @ mix
    x[:, : max(1, d // 64)] *= 10.0  # a few outlier channels, as in real LLM activations
    return x


# ---------------------------------------------------------------------------------------------------
# Uniform quantizers
# ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("spec", SPECS, ids=[s.label for s in SPECS])
def test_round_trip_error_at_most_half_a_step(spec):
    x = torch.randn(8, 64, dtype=torch.float64) * torch.linspace(0.1, 3, 64, dtype=torch.float64)
    qt = quantize(x, spec)
    err = (dequantize(qt, torch.float64) - x).abs()
    step = _grouped(torch.ones_like(x), spec) * qt.scale  # the step of each element's group
    assert torch.all(err <= step.reshape(x.shape) / 2 + 1e-12)
    assert int(qt.codes.min()) >= spec.qmin and int(qt.codes.max()) <= spec.qmax


@settings(max_examples=60, deadline=None)
@given(bits=st.integers(2, 8), sym=st.booleans(), rows=st.integers(1, 6), groups=st.integers(1, 4),
       g=st.sampled_from([4, 8, 32]), scale=st.floats(1e-3, 1e3), seed=st.integers(0, 10_000))
def test_round_trip_bound_property(bits, sym, rows, groups, g, scale, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, groups * g, generator=gen, dtype=torch.float64) * scale
    spec = QuantSpec(bits, symmetric=sym, granularity="group", group_size=g)
    qt = quantize(x, spec)
    err = (dequantize(qt, torch.float64) - x).abs().reshape(rows, groups, g)
    assert torch.all(err <= qt.scale / 2 * (1 + 1e-9))


def test_requantizing_is_a_fixed_point_and_zero_is_exact():
    x = torch.randn(16, 64, dtype=torch.float64)
    x[:, 5] = 0.0
    for spec in (QuantSpec(4, granularity="group", group_size=16), QuantSpec(3, symmetric=True),
                 QuantSpec(4, granularity="group", group_size=16, zero_point="float")):
        qt = quantize(x, spec)
        again = quantize_values(_grouped(qt.dequantize(torch.float64), spec), qt.scale, qt.zero, spec)
        assert torch.equal(again, _grouped(qt.codes.double(), spec))  # same grid -> same codes
    once = fake_quantize(x, QuantSpec(4, granularity="group", group_size=16))
    assert torch.all(once[:, 5] == 0.0)  # an integer zero point represents 0 exactly


def test_more_bits_and_finer_groups_lower_the_error():
    x = torch.randn(64, 256, dtype=torch.float64)
    x[:, :3] *= 20
    mse = {b: float(((fake_quantize(x, QuantSpec(b)) - x) ** 2).mean()) for b in range(2, 9)}
    assert all(mse[b + 1] < mse[b] for b in range(2, 8))
    per_channel = float(((fake_quantize(x, QuantSpec(4)) - x) ** 2).mean())
    g32 = float(((fake_quantize(x, QuantSpec(4, granularity="group", group_size=32)) - x) ** 2).mean())
    per_tensor = float(((fake_quantize(x, QuantSpec(4, granularity="tensor")) - x) ** 2).mean())
    assert g32 < per_channel < per_tensor


def test_float_minimum_reproduces_a_q4_1_grid_exactly():
    # Values already on a Q4_1 grid (min + k·scale per group of 32) survive re-quantization bit for bit.
    gen = torch.Generator().manual_seed(0)
    lo = torch.randn(10, 4, 1, generator=gen)
    step = torch.rand(10, 4, 1, generator=gen) + 0.1
    k = torch.randint(0, 16, (10, 4, 32), generator=gen)
    k[..., 0], k[..., 1] = 0, 15  # each group spans its full range
    x = (lo + k * step).reshape(10, 128)
    spec = QuantSpec(4, granularity="group", group_size=32, zero_point="float")
    assert torch.allclose(fake_quantize(x, spec), x, atol=1e-5)
    # An integer zero point cannot represent that grid (the range must contain 0): same bits, more error.
    assert (fake_quantize(x, spec.with_(zero_point="integer")) - x).abs().max() > 1e-3


@pytest.mark.parametrize("bits", [0, 1, 9, 33, -4])
def test_bad_bit_widths_are_rejected(bits):
    with pytest.raises(ValueError, match="bits must be between 2 and 8"):
        QuantSpec(bits)


def test_bad_arguments_are_rejected_with_clear_messages():
    with pytest.raises(TypeError, match="bits must be an int"):
        QuantSpec(4.0)
    with pytest.raises(ValueError, match="granularity must be one of"):
        QuantSpec(4, granularity="block")
    with pytest.raises(ValueError, match="needs group_size"):
        QuantSpec(4, granularity="group")
    with pytest.raises(ValueError, match="only used with granularity='group'"):
        QuantSpec(4, group_size=32)
    with pytest.raises(ValueError, match="group_size must be >= 1"):
        QuantSpec(4, granularity="group", group_size=0)
    with pytest.raises(ValueError, match="does not divide the last dimension 100"):
        quantize(torch.randn(4, 100), QuantSpec(4, granularity="group", group_size=32))
    with pytest.raises(TypeError, match="spec must be a QuantSpec"):
        quantize(torch.randn(4, 4), 4)
    with pytest.raises(TypeError, match="floating-point"):
        quantize(torch.ones(4, 4, dtype=torch.int32), QuantSpec(4))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_every_quantizer_rejects_nan_and_inf(bad):
    w = torch.randn(8, 32)
    w[3, 7] = bad
    spec = QuantSpec(4)
    with pytest.raises(ValueError, match="NaN"):
        quantize(w, spec)
    with pytest.raises(ValueError, match="NaN"):
        fake_quantize(w, spec)
    with pytest.raises(ValueError, match="NaN"):
        gptq_quantize(w, torch.eye(32), spec)
    with pytest.raises(ValueError, match="NaN"):
        awq_search([w], torch.ones(32), torch.eye(32), spec)
    with pytest.raises(ValueError, match="NaN"):
        llm_int8_matmul(torch.randn(2, 32), w)


def test_gptq_and_awq_reject_group_sizes_that_do_not_divide():
    spec = QuantSpec(4, granularity="group", group_size=24)
    with pytest.raises(ValueError, match="does not divide"):
        gptq_quantize(torch.randn(4, 64), torch.eye(64), spec)
    with pytest.raises(ValueError, match="does not divide"):
        awq_search([torch.randn(4, 64)], torch.ones(64), torch.eye(64), spec)


# ---------------------------------------------------------------------------------------------------
# Packing and sizes
# ---------------------------------------------------------------------------------------------------


@settings(max_examples=80, deadline=None)
@given(bits=st.integers(1, 8), n=st.integers(1, 70), rows=st.integers(1, 4), signed=st.booleans(),
       seed=st.integers(0, 10_000))
def test_pack_unpack_round_trip_is_exact(bits, n, rows, signed, seed):
    gen = torch.Generator().manual_seed(seed)
    lo, hi = (-(2 ** (bits - 1)), 2 ** (bits - 1)) if signed else (0, 2**bits)
    codes = torch.randint(lo, hi, (rows, n), generator=gen)
    packed = pack_codes(codes, bits, signed=signed)
    assert packed.dtype == torch.uint8
    assert packed.shape == (rows, math.ceil(n * bits / 8))
    assert torch.equal(unpack_codes(packed, bits, n, signed=signed).long(), codes)


def test_pack_edge_cases_and_nibble_layout():
    for bits in (2, 4):
        for fill in (0, 2**bits - 1):
            codes = torch.full((3, 9), fill)
            assert torch.equal(unpack_codes(pack_codes(codes, bits), bits, 9).long(), codes)
    # low nibble first: codes (1, 2) -> byte 0x21
    assert pack_codes(torch.tensor([1, 2]), 4).tolist() == [0x21]
    assert pack_codes(torch.tensor([1, 2, 3, 0]), 2).tolist() == [0b00111001]
    with pytest.raises(ValueError, match=r"must lie in \[0, 15\]"):
        pack_codes(torch.tensor([16]), 4)
    with pytest.raises(TypeError, match="integer tensor"):
        pack_codes(torch.tensor([1.0]), 4)


def test_storage_bytes_and_bits_per_weight():
    assert storage_bytes((4096, 4096), None) == 2 * 4096 * 4096
    spec = QuantSpec(4, symmetric=True, granularity="group", group_size=128)
    assert storage_bytes((4096, 4096), spec) == 4096 * 4096 // 2 + 4096 * 32 * 2
    assert bits_per_weight(spec) == pytest.approx(4.125)
    assert bits_per_weight(QuantSpec(4, granularity="group", group_size=32, zero_point="float")) == 5.0  # Q4_1
    assert bits_per_weight(QuantSpec(8, symmetric=True), group_size=4096) == pytest.approx(8 + 16 / 4096)


def test_quantized_checkpoint_round_trip_and_size():
    m = _tiny_model()
    spec = QuantSpec(3, granularity="group", group_size=32)
    q = quantize_model(m, spec)
    state = quantized_state_dict(q)
    name = "layers.0.mlp.down_proj"
    lin = q.get_submodule(name)
    codes = unpack_codes(state[f"{name}.codes"], 3, lin.in_features).float()
    zero = unpack_codes(state[f"{name}.zero"], 3, lin.in_features // 32).float()
    scale = state[f"{name}.scale"].float()
    rebuilt = ((codes.reshape(-1, lin.in_features // 32, 32) - zero[..., None]) * scale[..., None]).reshape(lin.weight.shape)
    # scales are stored in fp16: the rebuilt weight matches to fp16 precision of the scale
    assert torch.allclose(rebuilt, lin.weight, rtol=1e-3, atol=1e-6)
    # the safetensors file is the counted bytes plus its header and per-row byte padding
    counted = int(model_size(q)["bytes"].sum())
    on_disk = state_dict_nbytes(state)
    assert counted <= on_disk <= counted * 1.05 + 8192
    assert on_disk < state_dict_nbytes(quantized_state_dict(m)) / 3


def test_model_size_counts_a_tied_embedding_once():
    m = _tiny_model()
    sizes = model_size(m)
    assert int(sizes["params"].sum()) == m.num_parameters()
    q = quantize_model(m, QuantSpec(4), embeddings=True)
    qs = model_size(q)
    assert int(qs["params"].sum()) == m.num_parameters()
    assert qs.set_index("kind").loc["embed_tokens", "bits_per_param"] < 5


# ---------------------------------------------------------------------------------------------------
# GPTQ
# ---------------------------------------------------------------------------------------------------

GPTQ_SPECS = [QuantSpec(4), QuantSpec(3, granularity="group", group_size=32),
              QuantSpec(4, symmetric=True, granularity="tensor"),
              QuantSpec(3, granularity="group", group_size=64, zero_point="float")]


@pytest.mark.parametrize("spec", GPTQ_SPECS, ids=[s.label for s in GPTQ_SPECS])
def test_gptq_equals_rtn_when_the_hessian_is_the_identity(spec):
    w = torch.randn(32, 128, dtype=torch.float64)
    res = gptq_quantize(w, torch.eye(128, dtype=torch.float64), spec)
    assert torch.equal(res.weight, fake_quantize(w, spec))


@pytest.mark.parametrize("spec", GPTQ_SPECS, ids=[s.label for s in GPTQ_SPECS])
def test_gptq_does_not_depend_on_block_size(spec):
    w = torch.randn(32, 128, dtype=torch.float64)
    h = hessian_from_inputs(_correlated_inputs(1024, 128))
    ref = gptq_quantize(w, h, spec, block_size=128)
    for b in (1, 7, 32, 1000):
        other = gptq_quantize(w, h, spec, block_size=b)
        assert torch.equal(other.qweight.codes, ref.qweight.codes), b
        assert torch.allclose(other.weight, ref.weight, atol=1e-12)


@pytest.mark.parametrize("spec", GPTQ_SPECS, ids=[s.label for s in GPTQ_SPECS])
def test_gptq_loss_identity_and_grid(spec):
    w = torch.randn(32, 128, dtype=torch.float64)
    h = hessian_from_inputs(_correlated_inputs(1024, 128))
    res = gptq_quantize(w, h, spec, damp=0.01)
    damped = h + 0.01 * torch.diag(h).mean() * torch.eye(128, dtype=torch.float64)
    # Σ of per-column OBS losses = ½ tr(ΔW H_damped ΔWᵀ): the Cholesky bookkeeping is right.
    assert res.loss == pytest.approx(layer_error(w, res.weight, damped), rel=1e-9)
    # every weight lies on its group's grid: the stored codes dequantize to the returned weight
    assert torch.allclose(res.qweight.dequantize(torch.float64), res.weight, atol=1e-12)


@pytest.mark.parametrize("spec", [QuantSpec(4), QuantSpec(3, granularity="group", group_size=32)],
                         ids=["int4 channel", "int3 g32"])
def test_gptq_beats_rtn_on_correlated_inputs(spec):
    w = torch.randn(64, 256, dtype=torch.float64)
    h = hessian_from_inputs(_correlated_inputs(4096, 256))
    gptq = layer_error(w, gptq_quantize(w, h, spec).weight, h)
    rtn = rtn_error(w, h, spec)
    assert gptq < 0.5 * rtn
    act = layer_error(w, gptq_quantize(w, h, spec, act_order=True).weight, h)
    assert act < 0.5 * rtn


def test_gptq_dead_inputs_and_bad_arguments():
    w = torch.randn(8, 16, dtype=torch.float64)
    h = torch.eye(16, dtype=torch.float64)
    h[3, 3] = 0.0
    assert torch.all(gptq_quantize(w, h, QuantSpec(4)).weight[:, 3] == 0)
    with pytest.raises(ValueError, match="hessian must be"):
        gptq_quantize(w, torch.eye(8), QuantSpec(4))
    with pytest.raises(ValueError, match="damp must be >= 0"):
        gptq_quantize(w, torch.eye(16), QuantSpec(4), damp=-1)
    with pytest.raises(ValueError, match="not positive definite"):
        gptq_quantize(w, -torch.eye(16, dtype=torch.float64), QuantSpec(4), damp=0.0)


def test_gptq_model_improves_every_layer_over_rtn():
    m = _tiny_model()
    calib = torch.randint(0, 65, (4, 64), generator=torch.Generator().manual_seed(0))
    spec = QuantSpec(3, granularity="group", group_size=32)
    q, report = gptq_model(m, calib, spec, progress=False)
    assert len(report) == 14
    assert (report["gptq_error"] <= report["rtn_error"] * 1.0001).all()
    assert report["gptq_error"].sum() < report["rtn_error"].sum()
    assert all(type(q.get_submodule(n)).__name__ == "QuantLinear" for n in report["name"])


# ---------------------------------------------------------------------------------------------------
# Function-preserving transforms: SmoothQuant, AWQ folding, rotations
# ---------------------------------------------------------------------------------------------------


def test_smoothquant_leaves_the_unquantized_model_unchanged():
    m = _tiny_model()
    tok = torch.randint(0, 65, (2, 40), generator=torch.Generator().manual_seed(1))
    calib = torch.randint(0, 65, (4, 64), generator=torch.Generator().manual_seed(2))
    ref = m(tok)
    for alpha in (0.0, 0.5, 0.85, 1.0):
        s = smooth_model(m, calib, alpha, kinds=("attn_in", "mlp_in", "mlp_down"))
        assert torch.allclose(s(tok), ref, atol=2e-5, rtol=1e-4), alpha


def test_smooth_scales_balance_maxima_at_one_half():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(256, 32, generator=gen, dtype=torch.float64)
    x[:, 4] *= 50
    w = torch.randn(16, 32, generator=gen, dtype=torch.float64)
    s = smooth_scales(x.abs().amax(0), w.abs().amax(0), 0.5).double()
    assert torch.allclose((x / s).abs().amax(0), (w * s).abs().amax(0), rtol=1e-5)
    assert torch.allclose((x / s) @ (w * s).T, x @ w.T, atol=1e-10)  # the product is unchanged
    ratio = lambda a: float(a.abs().amax(0).max() / a.abs().amax(0).median())  # noqa: E731
    assert ratio(x / s) < ratio(x) / 4
    with pytest.raises(ValueError, match=r"alpha must be in \[0, 1\]"):
        smooth_scales(torch.ones(3), torch.ones(3), 1.5)


def test_smoothquant_w8a8_helps_on_activation_outliers():
    from unveiled.quant import QuantLinear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(512, 64, generator=gen)
    x[:, [3, 17]] *= 60
    w = torch.randn(32, 64, generator=gen) * 0.05
    lin = torch.nn.Linear(64, 32, bias=False)
    with torch.no_grad():
        lin.weight.copy_(w)
    w8 = QuantSpec(8, symmetric=True)
    a8 = QuantSpec(8, symmetric=True, granularity="tensor")
    naive = QuantLinear.from_linear(lin, w8, a8)(x)
    s = smooth_scales(x.abs().amax(0), w.abs().amax(0), 0.5)
    with torch.no_grad():
        lin.weight.copy_(w * s)
    smoothed = QuantLinear.from_linear(lin, w8, a8)(x / s)
    ref = x @ w.T
    assert float(((smoothed - ref) ** 2).mean()) < 0.25 * float(((naive - ref) ** 2).mean())


def test_awq_never_worse_than_rtn_on_its_calibration_data():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2048, 128, generator=gen, dtype=torch.float64)
    x[:, :2] *= 30  # salient input channels
    w = torch.randn(64, 128, generator=gen, dtype=torch.float64)
    spec = QuantSpec(3, granularity="group", group_size=32)
    s, grid = awq_search([w], x.abs().mean(0), x.T @ x / len(x), spec)
    assert grid["alpha"].iloc[0] == 0.0  # plain RTN is on the grid
    assert grid["output_error"].min() <= grid["output_error"].iloc[0]
    assert grid["output_error"].min() < 0.9 * grid["output_error"].iloc[0]
    h = 2 * x.T @ x / len(x)
    awq_w = fake_quantize(w * s.double(), spec) / s.double()
    assert layer_error(w, awq_w, h) < rtn_error(w, h, spec)


def test_awq_model_quantizes_every_projection_and_never_loses_to_rtn_per_group():
    m = _tiny_model()
    calib = torch.randint(0, 65, (4, 64), generator=torch.Generator().manual_seed(0))
    q, report = awq_model(m, calib, QuantSpec(3, granularity="group", group_size=32), progress=False)
    assert len(report) == 6
    assert (report["awq_error"] <= report["rtn_error"] * (1 + 1e-9)).all()
    kinds = {type(mod).__name__ for n, mod in q.named_modules() if n.endswith("_proj")}
    assert kinds == {"QuantLinear"}


@pytest.mark.parametrize("n", [2, 4, 12, 20, 24, 44, 72, 128, 192, 352, 576, 1536])
def test_hadamard_matrices_are_orthogonal_with_entries_of_equal_size(n):
    h = hadamard(n)
    assert torch.allclose(h @ h.T, torch.eye(n, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(h.abs(), torch.full_like(h, 1 / math.sqrt(n)))


def test_hadamard_refuses_unsupported_orders_and_random_rotations_are_orthogonal():
    with pytest.raises(ValueError, match="kind='random'"):
        hadamard(6)
    r = rotation_matrix(6, "random", seed=3)
    assert torch.allclose(r @ r.T, torch.eye(6, dtype=torch.float64), atol=1e-12)
    with pytest.raises(ValueError, match="kind must be one of"):
        rotation_matrix(8, "givens")


@pytest.mark.parametrize("kind", ["hadamard", "random"])
def test_rotation_leaves_the_unquantized_model_unchanged(kind):
    m = _tiny_model()
    tok = torch.randint(0, 65, (2, 40), generator=torch.Generator().manual_seed(1))
    ref = m(tok)
    r = rotate_model(m, kind)
    assert torch.allclose(r(tok), ref, atol=2e-5, rtol=1e-4)


def test_hadamard_spreads_an_outlier_channel():
    x = torch.randn(256, 256, dtype=torch.float64)
    x[:, 7] *= 50
    xr = x @ hadamard(256)
    assert xr.abs().max() < x.abs().max() / 4
    assert torch.allclose(xr.norm(dim=1), x.norm(dim=1))
    spec = QuantSpec(4, symmetric=True, granularity="token")
    err_plain = float(((fake_quantize(x, spec) - x) ** 2).mean())
    err_rot = float(((fake_quantize(xr, spec) - xr) ** 2).mean())  # same error in either basis (orthogonal)
    assert err_rot < err_plain / 10


# ---------------------------------------------------------------------------------------------------
# LLM.int8()
# ---------------------------------------------------------------------------------------------------


def test_int8_integer_path_equals_fake_quantization():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(10, 256, generator=gen, dtype=torch.float64)
    w = torch.randn(32, 256, generator=gen, dtype=torch.float64)
    assert torch.allclose(int8_matmul(x, w, integer=True), int8_matmul(x, w, integer=False), atol=1e-10)


def test_llm_int8_decomposition():
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 128, generator=gen)
    x[:, [5, 77]] *= 40
    w = torch.randn(32, 128, generator=gen) * 0.1
    ref = x @ w.T
    assert outlier_columns(x, 6.0)[[5, 77]].all()
    # threshold = inf is pure vector-wise int8
    assert torch.allclose(llm_int8_matmul(x, w, float("inf")), int8_matmul(x, w), atol=1e-5)
    naive = (int8_matmul(x, w) - ref).abs().max()
    mixed = (llm_int8_matmul(x, w, 6.0) - ref).abs().max()
    assert mixed < naive / 3
    m = _tiny_model()
    tok = torch.randint(0, 65, (1, 20))
    assert torch.allclose(llm_int8_model(m, threshold=0.0)(tok), _quantized_weights_only(m)(tok), atol=1e-4)


def _quantized_weights_only(m):
    """Threshold 0 sends every column to floating point: only the int8 weights remain."""
    return quantize_model(m, QuantSpec(8, symmetric=True), None)


# ---------------------------------------------------------------------------------------------------
# Model-level application
# ---------------------------------------------------------------------------------------------------


def test_quantize_model_scope_and_copy():
    m = _tiny_model()
    tok = torch.randint(0, 65, (1, 16))
    ref = m(tok)
    q = quantize_model(m, QuantSpec(4))
    assert torch.equal(m(tok), ref)  # the original is untouched
    names = [n for n, mod in q.named_modules() if type(mod).__name__ == "QuantLinear"]
    assert len(names) == 14 and "lm_head" not in names
    w8a8 = quantize_model(m, QuantSpec(8, symmetric=True), QuantSpec(8, symmetric=True, granularity="token"))
    assert (w8a8(tok) - ref).abs().max() < 0.05 * ref.abs().max()
    with pytest.raises(TypeError, match="Decoder"):
        quantize_model(torch.nn.Linear(2, 2), QuantSpec(4))
    with pytest.raises(ValueError, match="does not divide"):
        quantize_model(m, QuantSpec(4, granularity="group", group_size=100))


def test_compute_params_guard_all_zero_groups():
    s, z = compute_params(torch.zeros(3, 8), QuantSpec(4))
    assert torch.all(s == 1) and torch.all(z == 0)
    assert torch.equal(fake_quantize(torch.zeros(3, 8), QuantSpec(4)), torch.zeros(3, 8))


def test_spec_labels_and_unquantized_bits():
    assert QuantSpec(4, granularity="group", group_size=128).label == "int4 g128 asym"
    assert QuantSpec(8, symmetric=True).label == "int8 channel sym"
    assert np.isclose(bits_per_weight(None), 16)


def test_int8_products_are_exact_on_every_cpu():
    # torch._int_mm saturates 16-bit intermediates on CPUs without AVX-512 VNNI (large codes come out wrong);
    # the library checks the kernel once and falls back to an exact product where it is not exact.
    from unveiled.quant.outliers import _int_matmul, int_mm_is_exact

    g = torch.Generator().manual_seed(1)
    a = (torch.randint(0, 2, (48, 96), generator=g) * 254 - 127).to(torch.int8)
    b = (torch.randint(0, 2, (40, 96), generator=g) * 254 - 127).to(torch.int8)
    exact = a.to(torch.int64) @ b.to(torch.int64).T
    assert torch.equal(_int_matmul(a, b).to(torch.int64), exact)
    assert isinstance(int_mm_is_exact(), bool)
