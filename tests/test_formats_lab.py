"""The Chapter 10 lab checks: the book's solutions pass bit for bit, the classic mistakes fail with their message."""

from __future__ import annotations

import pandas as pd
import pytest
import torch

from unveiled.labs import LabCheckFailed
from unveiled.labs import formats as lab

pytestmark = pytest.mark.lab_formats


# The book's reference solutions (the `solution` cells of chapters/10_hardware.ipynb)
def e2m1_round(x):
    a = x.abs().clamp(max=6.0)
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.copysign(torch.round(a / step) * step, x)


def mxfp4_quantize(x):
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    exponent = torch.frexp(amax)[1] - 1 - 2  # floor(log2 amax) - emax(E2M1)
    scale = torch.where(amax > 0, torch.exp2(exponent.float()), torch.ones_like(amax))
    return (e2m1_round(blocks / scale) * scale).reshape(x.shape)


def choose_formats(errors, budget):
    fits = errors[errors["rel_error"] <= budget].sort_values(["bits_per_weight", "rel_error"], kind="stable")
    best = fits.drop_duplicates("layer").set_index("layer")["format"]
    layers = list(dict.fromkeys(errors["layer"]))
    return pd.DataFrame({"layer": layers, "format": [best.get(layer, "BF16") for layer in layers]})


def test_the_books_solutions_pass():
    assert lab.check_e2m1_round(e2m1_round, show=False).passed
    assert lab.check_mxfp4_quantize(mxfp4_quantize, show=False).passed
    assert lab.check_choose_formats(choose_formats, show=False).passed
    assert set(lab.CHECKS) == {"e2m1_round", "mxfp4_quantize", "choose_formats"}


def test_choice_on_the_cached_smollm2_errors():
    import unveiled as uv

    errors = uv.results.cached("quant.smollm2_format_layers")
    assert lab.check_choose_formats(choose_formats, errors, show=False).passed


def _ties_away(x):
    a = x.abs().clamp(max=6.0)
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.copysign(torch.floor(a / step + 0.5) * step, x)


def _no_saturation(x):
    a = x.abs()
    step = torch.where(a < 2, 0.5, torch.where(a < 4, 1.0, 2.0))
    return torch.copysign(torch.round(a / step) * step, x)


def _grid_search_no_sign(x):  # nearest grid value of |x| but the sign dropped
    grid = torch.tensor([0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0])
    return grid[(x.abs().clamp(max=6)[..., None] - grid).abs().argmin(-1)]


@pytest.mark.parametrize(("wrong", "message"), [
    (_ties_away, "Ties go to the value with an even code"),
    (_no_saturation, "must saturate to ±6"),
    (_grid_search_no_sign, "values differ"),
    (lambda x: x, "values differ"),
])
def test_wrong_e2m1_fails_with_its_message(wrong, message):
    with pytest.raises(LabCheckFailed, match=message):
        lab.check_e2m1_round(wrong, show=False)


def _mx(x, scale_of):
    blocks = x.reshape(*x.shape[:-1], -1, 32)
    amax = blocks.abs().amax(-1, keepdim=True)
    scale = scale_of(amax)
    return (e2m1_round(blocks / scale) * scale).reshape(x.shape)


def _rows(x):  # blocks down the columns
    return _mx(x.T.contiguous(), lambda a: torch.where(a > 0, torch.exp2(torch.frexp(a)[1] - 3.0), 1.0)).T


@pytest.mark.parametrize(("wrong", "message"), [
    (lambda x: _mx(x, lambda a: torch.where(a > 0, a / 6, 1.0)), "power of two"),
    (lambda x: _mx(x, lambda a: torch.where(a > 0, torch.exp2(torch.floor(torch.log2(a)) - 2), 1.0)),
     "just below a power of two"),
    (lambda x: _mx(x, lambda a: torch.where(a > 0, torch.exp2(torch.ceil(torch.log2(a)) - 2), 1.0)), "rounded up"),
    (lambda x: _mx(x, lambda a: torch.exp2(torch.floor(torch.log2(a)) - 2)), "NaN or inf"),
    (lambda x: _mx(x, lambda a: torch.where(a > 0, torch.exp2(torch.frexp(a)[1] - 3.0), 1.0) * 0 + 1), "differ"),
])
def test_wrong_mxfp4_fails_with_its_message(wrong, message):
    with pytest.raises(LabCheckFailed, match=message):
        lab.check_mxfp4_quantize(wrong, show=False)


def test_blocks_along_the_wrong_axis_fail():
    def wrong(t):
        return _rows(t) if t.dim() == 2 and t.shape[0] % 32 == 0 else mxfp4_quantize(t)

    with pytest.raises(LabCheckFailed, match="Blocks run along the last dimension"):
        lab.check_mxfp4_quantize(wrong, show=False)


def _most_accurate(errors, budget):
    best = errors.sort_values("rel_error").drop_duplicates("layer").set_index("layer")["format"]
    layers = list(dict.fromkeys(errors["layer"]))
    return pd.DataFrame({"layer": layers, "format": [best[layer] for layer in layers]})


def _strict(errors, budget):
    fits = errors[errors["rel_error"] < budget].sort_values(["bits_per_weight", "rel_error"], kind="stable")
    best = fits.drop_duplicates("layer").set_index("layer")["format"]
    layers = list(dict.fromkeys(errors["layer"]))
    return pd.DataFrame({"layer": layers, "format": [best.get(layer, "BF16") for layer in layers]})


def _no_fallback(errors, budget):
    out = choose_formats(errors, budget)
    return out.assign(format=out["format"].replace("BF16", None))


@pytest.mark.parametrize(("wrong", "message"), [
    (_most_accurate, "FEWEST bits"),
    (_strict, "yours excludes it"),
    (_no_fallback, "keeps 'BF16'"),
    (lambda e, b: e, "one row per layer"),
    (lambda e, b: 3, "expected a DataFrame"),
])
def test_wrong_choice_fails_with_its_message(wrong, message):
    with pytest.raises(LabCheckFailed, match=message):
        lab.check_choose_formats(wrong, show=False)
