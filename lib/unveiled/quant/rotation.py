"""Rotations that remove activation outliers before 4-bit quantization (QuaRot-style) [Ashkboos et al. 2024].

In a pre-norm transformer, rotating the residual stream by an orthogonal ``Q`` changes nothing the model
computes: RMSNorm only divides by the vector's norm, which a rotation keeps, so once the norm gains are folded
into the next linears, every layer that reads the stream takes ``W Q`` and every layer that writes it takes
``Qᵀ W`` [Ashkboos et al. 2024 (SliceGPT)]. What changes is the *basis*: an outlier concentrated in a few
channels is spread over all of them by a Hadamard matrix (entries ``±1/√n``), so per-token 4-bit
quantization of activations stops being dominated by one huge channel. Inputs of ``o_proj`` and ``down_proj``
are not on the residual stream; QuaRot rotates them *online* (a Hadamard transform at run time, fused into the
weights on the other side). :func:`hadamard` builds Hadamard matrices of the sizes LLMs use from Sylvester's
doubling and Paley's construction [Paley 1933]. Introduced in Chapter 3.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from .._validate import check_choice, check_int
from ..models import Decoder
from .layers import _check_model

__all__ = ["OnlineRotation", "fuse_norms", "hadamard", "rotate_model", "rotation_matrix"]


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, math.isqrt(n) + 1))


def _paley(order: int) -> torch.Tensor:
    """Paley's construction I: a Hadamard matrix of order q + 1 for a prime q ≡ 3 (mod 4)."""
    q = order - 1
    squares = {(k * k) % q for k in range(1, q)}
    chi = torch.tensor([0] + [1 if k in squares else -1 for k in range(1, q)], dtype=torch.float64)
    idx = (torch.arange(q)[None, :] - torch.arange(q)[:, None]) % q
    jac = chi[idx]  # Jacobsthal matrix, antisymmetric because q ≡ 3 (mod 4)
    s = torch.zeros(order, order, dtype=torch.float64)
    s[0, 1:] = 1.0
    s[1:, 0] = -1.0
    s[1:, 1:] = jac
    return s + torch.eye(order, dtype=torch.float64)


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def hadamard(n: int, normalized: bool = True) -> torch.Tensor:
    """A Hadamard matrix of order ``n`` (entries ±1, ``H Hᵀ = n I``), divided by ``√n`` when ``normalized``.

    Built as ``Sylvester(2^k) ⊗ Paley(p)`` with ``n = 2^k·p`` and ``p − 1`` a prime ≡ 3 (mod 4) (``p = 1`` is
    pure Sylvester). That covers 2^k, 12·2^k (e.g. 768, 1536, 3072), 20·2^k, 24·2^k, 44·2^k, 72·2^k (576) and
    more. Other orders raise a ValueError suggesting ``rotation_matrix(n, "random")``. Float64.
    Introduced in Chapter 3.
    """
    n = check_int("n", n)
    k = (n & -n).bit_length() - 1  # largest power of two dividing n
    for j in range(k, -1, -1):
        p = n >> j
        if p == 1:
            h = _sylvester(n)
        elif p % 4 == 0 and _is_prime(p - 1) and (p - 1) % 4 == 3:
            h = torch.kron(_sylvester(2**j), _paley(p))
        else:
            continue
        return h / math.sqrt(n) if normalized else h
    raise ValueError(f"no Hadamard matrix of order {n} is built here (n must be 2^k·p with p−1 a prime ≡ 3 mod 4); "
                     "use rotation_matrix(n, kind='random') for a random orthogonal matrix instead")


def rotation_matrix(n: int, kind: str = "hadamard", seed: int = 0) -> torch.Tensor:
    """An orthogonal ``[n, n]`` float64 matrix: a randomised Hadamard ``diag(±1)·H/√n`` (QuaRot) or a
    uniformly random orthogonal matrix (QR of a Gaussian, as in QuIP and SpinQuant's initialisation).

    Introduced in Chapter 3.
    """
    n = check_int("n", n)
    check_choice("kind", kind, ("hadamard", "random"))
    gen = torch.Generator().manual_seed(int(seed))
    if kind == "random":
        q, r = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))[None, :]
    signs = torch.randint(0, 2, (n,), generator=gen).double() * 2 - 1
    return signs[:, None] * hadamard(n)


class OnlineRotation(nn.Module):
    """Rotate the input by ``R`` at run time, then apply ``linear`` (whose weight already holds ``W R``).

    ``linear((x R)) = x R (W R)ᵀ = x Wᵀ``: exact in floating point, and the quantizer inside ``linear`` sees
    the rotated, outlier-free activations. A dense matmul here; QuaRot uses a fast Walsh–Hadamard transform.
    Introduced in Chapter 3.
    """

    def __init__(self, linear: nn.Module, rotation: torch.Tensor):
        super().__init__()
        self.linear = linear
        self.register_buffer("rotation", rotation.to(torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x @ self.rotation.to(x.dtype))


def _mul_(lin: nn.Linear, left: torch.Tensor | None = None, right: torch.Tensor | None = None) -> None:
    w = lin.weight.detach().double()
    if left is not None:
        w = left @ w
    if right is not None:
        w = w @ right
    with torch.no_grad():
        lin.weight.copy_(w.to(lin.weight.dtype))


@torch.no_grad()
def fuse_norms(model: Decoder) -> Decoder:
    """Fold every RMSNorm gain into the linears that read the norm's output, leaving unit gains (in place).

    ``W·diag(g)`` replaces ``W`` for q/k/v, gate/up and the head; the function is unchanged. A tied head is
    untied (the embedding keeps its values). Introduced in Chapter 3.
    """
    model = _check_model(model)
    for layer in model.layers:
        for norm, names in ((layer.input_layernorm, ("q_proj", "k_proj", "v_proj")),
                            (layer.post_attention_layernorm, ("gate_proj", "up_proj"))):
            g = torch.diag(norm.weight.detach().double())
            owner = layer.self_attn if "q_proj" in names else layer.mlp
            for n in names:
                _mul_(getattr(owner, n), right=g)
            norm.weight.fill_(1.0)
    if model.tied:
        head = nn.Linear(model.config.hidden_size, model.config.vocab_size, bias=False)
        head.weight = nn.Parameter(model.embed_tokens.weight.detach().clone())
        model.lm_head = head
    if not isinstance(model.lm_head, nn.Linear):
        raise ValueError("rotate/fuse before quantizing the head")
    _mul_(model.lm_head, right=torch.diag(model.norm.weight.detach().double()))
    model.norm.weight.fill_(1.0)
    return model


@torch.no_grad()
def rotate_model(
    model: Decoder, kind: str = "hadamard", *, seed: int = 0, online: bool = True, inplace: bool = False
) -> Decoder:
    """QuaRot-style rotation of a decoder: same function, outlier-free activations for every linear.

    Folds the norm gains (:func:`fuse_norms`), rotates the residual stream by ``Q`` (embedding ``E Q``,
    readers ``W Q``, writers ``Qᵀ W``, head ``W Q``) and, with ``online``, wraps ``o_proj`` and ``down_proj``
    in :class:`OnlineRotation` with their own Hadamard. Quantize the result with ``quantize_model`` (W4A4:
    4-bit weights and per-token 4-bit activations); the attention products and KV cache stay in floating
    point here (Chapter 6 quantizes the cache). Introduced in Chapter 3.
    """
    model = _check_model(model)
    out = model if inplace else copy.deepcopy(model)
    fuse_norms(out)
    cfg = out.config
    q = rotation_matrix(cfg.hidden_size, kind, seed)
    out.embed_tokens.weight.copy_((out.embed_tokens.weight.double() @ q).float())
    _mul_(out.lm_head, right=q)
    r_attn = rotation_matrix(cfg.num_heads * cfg.head_dim, kind, seed + 1) if online else None
    r_mlp = rotation_matrix(cfg.intermediate_size, kind, seed + 2) if online else None
    for layer in out.layers:
        attn, mlp = layer.self_attn, layer.mlp
        for lin in (attn.q_proj, attn.k_proj, attn.v_proj, mlp.gate_proj, mlp.up_proj):
            _mul_(lin, right=q)
        for lin in (attn.o_proj, mlp.down_proj):
            _mul_(lin, left=q.T)
        if online:
            _mul_(attn.o_proj, right=r_attn)
            attn.o_proj = OnlineRotation(attn.o_proj, r_attn)
            _mul_(mlp.down_proj, right=r_mlp)
            mlp.down_proj = OnlineRotation(mlp.down_proj, r_mlp)
    return out
