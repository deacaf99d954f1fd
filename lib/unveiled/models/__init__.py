"""The one decoder every chapter runs: a plain-PyTorch LLaMA-style transformer with clean seams.

The architecture is LLaMA's [Touvron et al. 2023]: token embedding, ``num_layers`` pre-norm blocks of
RMSNorm [Zhang & Sennrich 2019] → grouped-query attention [Ainslie et al. 2023] with rotary position
embeddings [Su et al. 2021] → RMSNorm → SwiGLU MLP [Shazeer 2020], a final RMSNorm and a linear head
(optionally tied to the embedding). The tiny character models of :mod:`unveiled.zoo` and SmolLM2-135M
(:mod:`unveiled.smollm2`) are both instances of :class:`Decoder`; only :class:`DecoderConfig` differs.
Everything runs in fp32 on the CPU by default; weights are stored as fp16 safetensors (no pickle).

Seams for later chapters (stable API; change them only with care)
-----------------------------------------------------------------
**Module names (quantized linears, Chapter 3).** Every projection is an ``nn.Linear`` without bias, reachable
by a Hugging Face-style dotted name::

    embed_tokens                                   nn.Embedding [V, h]
    layers.{i}.input_layernorm                     RMSNorm
    layers.{i}.self_attn.{q_proj,k_proj,v_proj,o_proj}
    layers.{i}.post_attention_layernorm            RMSNorm
    layers.{i}.mlp.{gate_proj,up_proj,down_proj}
    norm                                           final RMSNorm
    lm_head                                        nn.Linear [V, h] (shares embed_tokens.weight when tied)

The blocks call these modules only through ``module(x)``, so any ``nn.Module`` mapping ``[..., in]`` to
``[..., out]`` can replace them: :func:`replace_linears` swaps them by a function and a name filter,
:func:`linear_names` lists them. Replacing ``lm_head`` of a tied model unties it (the embedding is kept).

**KV cache (Chapter 6; rollback for Chapter 7).** ``forward(tokens, cache=...)`` accepts any object with
the :class:`CacheProtocol` interface:

* ``update(layer, k, v) -> (keys, values)``: called once per layer and forward with the new keys and
  values ``[B, K, T, d]`` (``K`` = key/value heads, ``d`` = head_dim; keys already rotated by RoPE unless
  ``keys_before_rope`` is set); returns every key/value this layer's queries attend over, ``[B, K, L', d]``,
  **with the ``T`` new entries last** (the causal mask is built from that rule, so evicting caches work);
* ``offset`` (int): the absolute position of the next token, i.e. how many tokens were ever appended. The
  model reads it *before* running the layers to place the new tokens; it may exceed ``len(cache)`` for caches
  that evict (StreamingLLM sinks + window), which typically advance it in ``update(0, ...)``;
* ``__len__``: tokens currently held (by layer 0);
* ``crop(n)``: keep the first ``n`` tokens (``offset`` becomes ``n``; a negative ``n`` drops ``-n`` from the
  end): the rollback speculative decoding needs;
* optional ``keys_before_rope`` (bool, default False): when True the model hands over un-rotated keys and
  rotates the returned keys by their *position in the cache* (0..L'-1) and the queries by L'-T..L'-1, as
  StreamingLLM does [Xiao et al. 2024];
* optional ``observe_attention(layer, weights)``: when present, attention is computed explicitly and the
  softmax weights ``[B, H, T, L']`` are passed to it (for H2O-style eviction [Zhang et al. 2023]).

:class:`KVCache` is the plain full-precision cache (preallocated, grows by doubling, exact crop).

**Positions.** ``forward(tokens, cache, positions=...)`` takes explicit positions (an int offset or a 1-D
tensor of length T); by default they are ``cache.offset + arange(T)`` (or ``arange(T)`` with no cache).

**Early exit and layer access (Chapter 7).** ``forward(tokens, num_layers=k)`` runs only the first ``k`` blocks
and then the final norm and head; :meth:`Decoder.hidden_states` returns the residual stream after the
embedding and after every block (before the final norm); :meth:`Decoder.head` applies norm + lm_head to any of
them. With a cache and ``num_layers=k``, only layers ``< k`` are appended to.

**Verifying several tokens (speculative decoding, Chapter 7).** :meth:`Decoder.verify` scores ``k`` new tokens
against a cache in one pass and returns the logits at all ``k`` positions; after accepting ``a`` of them, call
``cache.crop(n_before + a)`` to roll back the rest.

Introduced in the appendix "The models in this book".

The package, one idea per module: :mod:`.config` (the shape), :mod:`.cache` (the cache seam and the plain
cache), :mod:`.components` (norm, rotary positions, attention, MLP, block), :mod:`.decoder` (the model and
its linear-layer seam), :mod:`.checkpoints` (safetensors files).
"""

from .cache import CacheProtocol, KVCache
from .checkpoints import expected_shapes as expected_shapes
from .checkpoints import load_model, save_model
from .checkpoints import model_from_state as model_from_state
from .components import MLP as MLP
from .components import Attention as Attention
from .components import Block as Block
from .components import RMSNorm as RMSNorm
from .components import Rotary as Rotary
from .components import _causal_mask as _causal_mask
from .components import _rotate as _rotate
from .config import LINEAR_NAMES, DecoderConfig
from .decoder import Decoder, linear_names, replace_linears

__all__ = [
    "LINEAR_NAMES",
    "CacheProtocol",
    "Decoder",
    "DecoderConfig",
    "KVCache",
    "linear_names",
    "load_model",
    "replace_linears",
    "save_model",
]
