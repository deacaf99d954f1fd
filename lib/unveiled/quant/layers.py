"""Quantized layers and whole-model quantization on the book's decoder.

:class:`QuantLinear` replaces an ``nn.Linear``: its weight is stored as integer codes plus scales (a
:class:`~unveiled.quant.uniform.QuantizedTensor`) and used in its dequantized form ("fake quantization",
exactly the numbers an integer kernel would multiply), and its input activations can be quantized on the
fly (per token, dynamic), which simulates W8A8 or W4A4 inference [Xiao et al. 2023; Ashkboos et al. 2024].
:func:`quantize_model` applies round-to-nearest to every block projection through the decoder's
``replace_linears`` seam, optionally also to the embedding and the output head, which are usually kept in
higher precision. :func:`model_size` and :func:`quantized_state_dict` count the bytes of the result, packed as it
would be stored on disk. Introduced in Chapter 3.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterable

import pandas as pd
import torch
import torch.nn.functional as F
from torch import nn

from ..models import Decoder, replace_linears
from .uniform import (
    QuantizedTensor,
    Quantizer,
    QuantSpec,
    _check_spec,
    check_tensor,
    fake_quantize,
    pack_codes,
    quantize,
    storage_bytes,
)

__all__ = [
    "QuantEmbedding",
    "QuantLinear",
    "collect_input_stats",
    "model_size",
    "quantize_model",
    "quantized_state_dict",
    "state_dict_nbytes",
]


class QuantLinear(nn.Module):
    """A linear layer with quantized weights and, optionally, quantized input activations.

    ``qweight`` holds the integer codes and scales (what is stored); ``weight`` is its dequantized form (what
    is multiplied). With ``act_spec`` the input is fake-quantized before the matmul, dynamically (its scales
    are computed from the current input), per token with ``granularity="token"``. Introduced in Chapter 3.
    """

    def __init__(self, qweight: QuantizedTensor | None, weight: torch.Tensor | None = None,
                 act_spec: QuantSpec | None = None, shares_storage_with: str | None = None):
        super().__init__()
        if qweight is None and weight is None:
            raise ValueError("QuantLinear needs a quantized weight (qweight) or a weight")
        w = qweight.dequantize() if weight is None else weight.detach().to(torch.float32)
        self.register_buffer("weight", w)
        self.qweight = qweight
        self.act_spec = None if act_spec is None else _check_spec(act_spec)
        self.shares_storage_with = shares_storage_with
        self.out_features, self.in_features = w.shape

    @classmethod
    def from_linear(cls, linear: nn.Linear, spec: QuantSpec | None, act_spec: QuantSpec | None = None) -> QuantLinear:
        """Round-to-nearest quantization of ``linear``'s weight with ``spec`` (None keeps it in fp32)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"expected an nn.Linear, got {type(linear).__name__}")
        if linear.bias is not None:
            raise ValueError("QuantLinear supports bias-free linears only (the book's decoder has no biases)")
        w = linear.weight.detach()
        if spec is None:
            return cls(None, w, act_spec)
        return cls(quantize(w, spec), None, act_spec)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.act_spec is not None:
            x = fake_quantize(x, self.act_spec)
        return F.linear(x, self.weight.to(x.dtype))

    @property
    def nbytes(self) -> int:
        """Storage of the weight: packed codes + scales (fp16 if not quantized); 0 if it shares another's."""
        if self.shares_storage_with is not None:
            return 0
        return self.qweight.nbytes if self.qweight is not None else storage_bytes(self.weight.shape, None)

    def extra_repr(self) -> str:
        w = self.qweight.spec.label if self.qweight is not None else "fp32"
        a = self.act_spec.label if self.act_spec is not None else "fp32"
        return f"in={self.in_features}, out={self.out_features}, weights={w}, activations={a}"


class QuantEmbedding(nn.Module):
    """An embedding table stored quantized (one scale per token row or per group). Introduced in Chapter 3."""

    def __init__(self, qweight: QuantizedTensor):
        super().__init__()
        self.qweight = qweight
        self.register_buffer("weight", qweight.dequantize())

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return F.embedding(tokens, self.weight)

    @property
    def nbytes(self) -> int:
        return self.qweight.nbytes


def _check_model(model: object) -> Decoder:
    if not isinstance(model, Decoder):
        raise TypeError(f"model must be an unveiled Decoder (see unveiled.models), got {type(model).__name__}")
    return model


def quantize_model(
    model: Decoder,
    weights: QuantSpec | None,
    activations: QuantSpec | None = None,
    *,
    include: Callable[[str], bool] | Iterable[str] | None = None,
    embeddings: QuantSpec | bool = False,
    inplace: bool = False,
) -> Decoder:
    """Round-to-nearest quantization of a decoder's linear layers (and optionally its embedding and head).

    ``weights`` quantizes every selected projection (``include`` as in ``replace_linears``: by default all
    block projections, not ``lm_head``); ``activations`` adds dynamic input quantization to the same layers
    (e.g. ``QuantSpec(8, symmetric=True, granularity="token")`` for W8A8). ``embeddings`` quantizes the
    embedding table and the output head too (``True`` reuses ``weights``; a tied head shares the codes and
    is counted once). Returns a quantized copy unless ``inplace``. Introduced in Chapter 3.
    """
    model = _check_model(model)
    if weights is not None:
        _check_spec(weights)
    if activations is not None:
        _check_spec(activations)
    if not isinstance(embeddings, (bool, QuantSpec, Quantizer)):
        raise TypeError(f"embeddings must be a bool or a QuantSpec, got {type(embeddings).__name__}")
    out = model if inplace else copy.deepcopy(model)
    replace_linears(out, lambda name, lin: QuantLinear.from_linear(lin, weights, activations), include)
    if embeddings is not False:
        espec = weights if embeddings is True else embeddings
        if espec is None:
            raise ValueError("embeddings=True needs a weights spec (or pass embeddings=QuantSpec(...))")
        quantize_embeddings(out, espec)
    return out


def quantize_embeddings(model: Decoder, spec: QuantSpec) -> None:
    """Quantize the embedding table and the output head in place (a tied pair shares one set of codes).

    The embedding ``[V, h]`` is quantized per row (per token) or per group along ``h``. Introduced in Chapter 3.
    """
    model = _check_model(model)
    spec = _check_spec(spec)
    emb = model.embed_tokens
    if not isinstance(emb, nn.Embedding):
        raise ValueError("the embedding is already quantized")
    tied = model.tied
    qt = quantize(emb.weight.detach(), spec)
    model.embed_tokens = QuantEmbedding(qt)
    if tied:
        model.lm_head = QuantLinear(qt, model.embed_tokens.weight, shares_storage_with="embed_tokens")
    elif isinstance(model.lm_head, nn.Linear):
        model.lm_head = QuantLinear.from_linear(model.lm_head, spec)


def model_size(model: nn.Module, dtype_bytes: float = 2.0) -> pd.DataFrame:
    """Bytes of every parameter group of a (possibly quantized) model, as stored: one row per kind.

    Quantized layers count their packed codes, scales and zero points; everything else counts ``dtype_bytes``
    per value (fp16 by default, how the book ships weights); a tied embedding/head is counted once. Columns:
    ``kind``, ``params``, ``bytes``, ``bits_per_param``. Introduced in Chapter 3.
    """
    rows: dict[str, list[float]] = {}
    seen: set[int] = set()

    def add(kind: str, params: int, nbytes: float) -> None:
        r = rows.setdefault(kind, [0, 0])
        r[0] += params
        r[1] += nbytes

    for name, mod in model.named_modules():
        parts = name.split(".")
        # a wrapper's inner linear (e.g. OnlineRotation(o_proj).linear) is named after the wrapper
        kind = parts[-2] if len(parts) > 1 and parts[-1] == "linear" else parts[-1]
        if isinstance(mod, (QuantLinear, QuantEmbedding)) or hasattr(mod, "packed_state"):
            if isinstance(mod, QuantLinear) and mod.shares_storage_with is not None:
                continue
            add(kind, mod.weight.numel(), mod.nbytes)
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            label = kind if pname == "weight" else f"{kind}.{pname}"
            if "norm" in label:
                label = "norms"
            add(label, p.numel(), storage_bytes(p.shape, None, dtype_bytes))
    df = pd.DataFrame([(k, int(v[0]), int(v[1])) for k, v in rows.items()], columns=["kind", "params", "bytes"])
    df["bits_per_param"] = 8 * df["bytes"] / df["params"]
    return df


def quantized_state_dict(model: nn.Module, dtype: torch.dtype = torch.float16) -> dict[str, torch.Tensor]:
    """The tensors a quantized checkpoint would store: packed codes, scales, zero points, and the rest in fp16.

    For each quantized layer ``name``: ``name.codes`` (``uint8``, ``bits`` per code packed by
    :func:`~unveiled.quant.uniform.pack_codes`, one packed row per weight row), ``name.scale`` and, when
    asymmetric, ``name.zero`` (packed integer zero points, or fp16 minimums for ``zero_point="float"``).
    Serialise it with ``safetensors.torch.save_file``; :func:`state_dict_nbytes` measures that size without
    writing. Introduced in Chapter 3.
    """
    state: dict[str, torch.Tensor] = {}
    seen: set[int] = set()
    for name, mod in model.named_modules():
        if hasattr(mod, "packed_state"):  # other stored formats (LLM.int8() layers) say what they store
            state |= {f"{name}.{k}": v for k, v in mod.packed_state().items()}
            continue
        if isinstance(mod, (QuantLinear, QuantEmbedding)):
            if isinstance(mod, QuantLinear) and mod.shares_storage_with is not None:
                continue
            qt = mod.qweight
            if qt is None:
                state[f"{name}.weight"] = mod.weight.to(dtype).contiguous()
                continue
            if hasattr(qt, "packed_state"):  # number formats (unveiled.quant.formats) say what they store
                state |= {f"{name}.{k}": v for k, v in qt.packed_state().items()}
                continue
            spec = qt.spec
            rows = qt.codes.reshape(-1, qt.shape[-1])
            offset = 2 ** (spec.bits - 1) if spec.symmetric else 0  # store unsigned codes
            state[f"{name}.codes"] = pack_codes(rows.to(torch.int32) + offset, spec.bits)
            sdt = torch.float16 if spec.scale_bits == 16 else torch.float32
            state[f"{name}.scale"] = qt.scale.reshape(qt.scale.shape[0], -1).to(sdt).contiguous()
            if not spec.symmetric:
                z = qt.zero.reshape(qt.zero.shape[0], -1)
                state[f"{name}.zero"] = (z.to(sdt).contiguous() if spec.zero_point == "float"
                                         else pack_codes(z.to(torch.int32), spec.bits))
            continue
        for pname, p in mod.named_parameters(recurse=False):
            if id(p) in seen:
                continue
            seen.add(id(p))
            state[f"{name}.{pname}" if name else pname] = p.detach().to(dtype).contiguous()
    return state


def state_dict_nbytes(state: dict[str, torch.Tensor]) -> int:
    """Size in bytes of ``state`` serialised as a safetensors file (header included). Introduced in Chapter 3."""
    from safetensors.torch import save

    return len(save(state))


@torch.inference_mode()
def collect_input_stats(
    model: Decoder,
    tokens: torch.Tensor,
    names: Iterable[str] | None = None,
    *,
    hessian: bool = False,
    batch_size: int = 8,
) -> dict[str, dict[str, torch.Tensor]]:
    """Calibration statistics of the inputs of linear layers, from a forward pass over ``tokens`` ``[N, T]``.

    For each layer (by default every block projection): ``absmax`` and ``absmean`` per input channel (what
    SmoothQuant and AWQ need), ``count`` (tokens seen) and, with ``hessian=True``, ``xtx`` = ``Σ x xᵀ`` (in
    float64; GPTQ's Hessian is ``2·xtx/count``). The head is never run, so it is cheap. Introduced in Chapter 3.
    """
    model = _check_model(model)
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2:
        raise ValueError(f"calibration tokens must be a LongTensor [num_sequences, seq_len], got "
                         f"{getattr(tokens, 'shape', type(tokens).__name__)}")
    wanted = list(names) if names is not None else [
        n for n, m in model.named_modules() if isinstance(m, (nn.Linear, QuantLinear)) and n != "lm_head"
    ]
    modules = dict(model.named_modules())
    missing = [n for n in wanted if n not in modules]
    if missing:
        raise ValueError(f"no module named {missing[0]!r} in the model")
    stats: dict[str, dict[str, torch.Tensor]] = {}

    def hook_for(name: str):
        def hook(_mod, args):
            x = args[0].detach().reshape(-1, args[0].shape[-1]).to(torch.float32)
            check_tensor(f"input of {name}", x)
            s = stats.get(name)
            if s is None:
                d = x.shape[1]
                s = stats[name] = {"absmax": torch.zeros(d), "abssum": torch.zeros(d, dtype=torch.float64),
                                   "count": torch.zeros((), dtype=torch.float64)}
                if hessian:
                    s["xtx"] = torch.zeros(d, d, dtype=torch.float64)
            s["absmax"] = torch.maximum(s["absmax"], x.abs().amax(0))
            s["abssum"] += x.abs().sum(0, dtype=torch.float64)
            s["count"] += x.shape[0]
            if hessian:
                s["xtx"] += (x.T @ x).double()  # fp32 product, fp64 running sum

        return hook

    handles = [modules[n].register_forward_pre_hook(hook_for(n)) for n in wanted]
    try:
        for i in range(0, tokens.shape[0], batch_size):
            model.hidden_states(tokens[i : i + batch_size])
    finally:
        for h in handles:
            h.remove()
    for s in stats.values():
        s["absmean"] = (s.pop("abssum") / s["count"]).float()
    return stats
