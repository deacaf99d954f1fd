"""LLM.int8(): 8-bit matrix multiplication with the outlier features kept in floating point [Dettmers et al. 2022].

*Vector-wise* int8 quantization gives each row of the activations (each token) and each output channel of the
weight its own absmax scale. Because the scales factor out of the dot product, an integer GEMM with int32
accumulation followed by one rescaling by the outer product of the scales is *exactly* the fake-quantized
product: :func:`int8_matmul` shows both. Large models have a few feature dimensions whose activations reach
values of 6 and more; a per-token scale stretched by one such value wastes the int8 grid for every other
feature. LLM.int8() finds those columns (any ``|x| ≥ threshold`` in the batch), multiplies them in floating
point and everything else in int8. Introduced in Chapter 3.
"""

from __future__ import annotations

import copy
import functools

import torch
import torch.nn.functional as F
from torch import nn

from .._validate import check_number
from ..models import Decoder, replace_linears
from .layers import _check_model
from .uniform import check_tensor

__all__ = ["LLMInt8Linear", "absmax_int8", "int8_matmul", "llm_int8_matmul", "llm_int8_model", "outlier_columns"]


def absmax_int8(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Row-wise symmetric int8 codes ``round(127·x/max|x_row|)`` and the scales ``max|x_row|/127``.

    Introduced in Chapter 3.
    """
    x = check_tensor("x", x)
    amax = x.abs().amax(dim=-1, keepdim=True)
    scale = torch.where(amax > 0, amax, torch.ones_like(amax)) / 127.0
    return torch.round(x / scale).clamp(-127, 127).to(torch.int8), scale


@functools.cache
def int_mm_is_exact() -> bool:
    """Whether this CPU's ``torch._int_mm`` returns the exact int32 product of int8 codes.

    On CPUs without AVX-512 VNNI the int8 kernel multiplies through 16-bit intermediates that saturate, so
    products of large codes come out wrong (the book's AVX2 check found it). One small worst-case product,
    compared with an exact int64 one, decides once per process. Introduced in Chapter 3.
    """
    int_mm = getattr(torch, "_int_mm", None)
    if int_mm is None:
        return False
    g = torch.Generator().manual_seed(0)
    a = (torch.randint(0, 2, (32, 64), generator=g) * 254 - 127).to(torch.int8)  # codes of ±127 only
    b = (torch.randint(0, 2, (64, 32), generator=g) * 254 - 127).to(torch.int8)
    try:
        fast = int_mm(a, b)
    except RuntimeError:  # shape or platform limits of the private kernel
        return False
    return bool(torch.equal(fast.to(torch.int64), a.to(torch.int64) @ b.to(torch.int64)))


def _int_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``a @ bᵀ`` for int8 matrices with int32 accumulation (torch._int_mm where it is exact on this CPU)."""
    if int_mm_is_exact():
        try:
            return torch._int_mm(a.contiguous(), b.T.contiguous())
        except RuntimeError:  # shape limits of the private kernel: fall back below
            pass
    return (a.to(torch.int64) @ b.to(torch.int64).T).to(torch.int32)


def int8_matmul(x: torch.Tensor, weight: torch.Tensor, integer: bool = True) -> torch.Tensor:
    """Vector-wise int8 product ``x Wᵀ`` (per-token activation scales, per-output-channel weight scales).

    ``integer=True`` multiplies the int8 codes with int32 accumulation and rescales once; ``False`` multiplies
    the dequantized values (fake quantization). The two agree to float rounding: the scales factor out.
    int32 cannot overflow while ``in_features ≤ 2³¹/127² ≈ 133,000``. Introduced in Chapter 3.
    """
    x2 = x.reshape(-1, x.shape[-1])
    qx, sx = absmax_int8(x2)
    qw, sw = absmax_int8(weight)
    if integer:
        y = _int_matmul(qx, qw).to(torch.float64) * (sx.double() * sw.double().T)
    else:
        y = (qx.double() * sx.double()) @ (qw.double() * sw.double()).T
    return y.to(x.dtype).reshape(*x.shape[:-1], weight.shape[0])


def _check_threshold(threshold: object) -> float:
    if isinstance(threshold, (int, float)) and not isinstance(threshold, bool) and threshold == float("inf"):
        return float("inf")
    threshold = check_number("threshold", threshold)
    if threshold < 0:
        raise ValueError(f"threshold must be >= 0 (or inf for pure int8), got {threshold}")
    return threshold


def outlier_columns(x: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """Boolean mask of the feature columns where any token has ``|x| ≥ threshold`` (over the whole batch).

    Introduced in Chapter 3.
    """
    threshold = _check_threshold(threshold)
    return (x.reshape(-1, x.shape[-1]).abs() >= threshold).any(dim=0)


def llm_int8_matmul(x: torch.Tensor, weight: torch.Tensor, threshold: float = 6.0) -> torch.Tensor:
    """LLM.int8()'s mixed-precision decomposition of ``x Wᵀ`` [Dettmers et al. 2022].

    Outlier columns (:func:`outlier_columns`) are multiplied in floating point with the weight dequantized
    from its int8 codes (as bitsandbytes does when weights are stored in int8); the rest goes through
    :func:`int8_matmul`. ``threshold=inf`` is pure vector-wise int8. Introduced in Chapter 3.
    """
    x = check_tensor("x", x)
    mask = outlier_columns(x, threshold)
    qw, sw = absmax_int8(weight)
    w_deq = (qw.to(x.dtype) * sw.to(x.dtype))
    if not mask.any():
        return int8_matmul(x, weight)
    regular = ~mask
    y = F.linear(x[..., mask], w_deq[:, mask])
    if regular.any():
        x_reg = x[..., regular].reshape(-1, int(regular.sum()))
        qx, sx = absmax_int8(x_reg)
        acc = _int_matmul(qx, qw[:, regular]).to(torch.float64) * (sx.double() * sw.double().T)
        y = y + acc.to(x.dtype).reshape(y.shape)
    return y


class LLMInt8Linear(nn.Module):
    """A linear layer that runs :func:`llm_int8_matmul` (int8 weights, outliers in floating point).

    ``outlier_fraction`` records the share of feature columns routed to floating point so far.
    Introduced in Chapter 3.
    """

    def __init__(self, linear: nn.Linear, threshold: float = 6.0):
        super().__init__()
        if not isinstance(linear, nn.Linear) or linear.bias is not None:
            raise TypeError("LLMInt8Linear wraps a bias-free nn.Linear")
        self.register_buffer("weight", linear.weight.detach().clone())
        self.threshold = _check_threshold(threshold)
        self.columns_seen = 0
        self.outliers_seen = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = outlier_columns(x, self.threshold)
        self.columns_seen += mask.numel()
        self.outliers_seen += int(mask.sum())
        return llm_int8_matmul(x, self.weight, self.threshold)

    def packed_state(self) -> dict[str, torch.Tensor]:
        """What a checkpoint stores: int8 codes and one fp16 scale per output channel."""
        codes, scale = absmax_int8(self.weight)
        return {"codes": codes.contiguous(), "scale": scale.to(torch.float16).contiguous()}

    @property
    def nbytes(self) -> int:
        return self.weight.numel() + 2 * self.weight.shape[0]

    @property
    def outlier_fraction(self) -> float:
        return self.outliers_seen / max(self.columns_seen, 1)


def llm_int8_model(model: Decoder, threshold: float = 6.0, inplace: bool = False) -> Decoder:
    """Replace every block projection by :class:`LLMInt8Linear` (the head stays in floating point).

    Introduced in Chapter 3.
    """
    model = _check_model(model)
    out = model if inplace else copy.deepcopy(model)
    replace_linears(out, lambda name, lin: LLMInt8Linear(lin, threshold))
    return out
