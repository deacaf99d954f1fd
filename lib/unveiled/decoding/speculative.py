"""Speculative decoding: a cheap draft proposes ``k`` tokens, the target checks them all in one pass.

Decoding one token at a time reads every weight of the target once per token; at batch 1 that pass is
memory-bound, so scoring ``k + 1`` positions costs about as much as scoring one. Speculative decoding
[Leviathan et al. 2023; Chen et al. 2023] exploits this: a *draft* guesses ``k`` tokens, the *target* scores
the last accepted token and the ``k`` guesses in a single forward pass, and a rejection step keeps a prefix of
the guesses. The rejection step accepts draft token ``x`` with probability ``min(1, p(x)/q(x))`` and, at the
first rejection, samples from the residual ``norm(max(0, p − q))``; the output then has exactly the target's
distribution, whatever the draft. At temperature 0 it reduces to "keep the guesses that equal the target's
arg-max", so greedy output is identical token for token.

After the verification pass the target's KV cache holds the ``k + 1`` scored positions; it is cropped back to
the accepted ones (``cache.crop``) and the draft rolls back the same way. Drafts here: a small model
(:class:`ModelDraft`), the target itself with layers skipped (:class:`LayerSkipDraft`, self-speculative
decoding [Zhang et al. 2024; Elhoushi et al. 2024]) and copying n-grams from the context
(:class:`PromptLookupDraft`, no model at all [Saxena 2023; Yang et al. 2023]). Introduced in Chapter 7.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import pandas as pd
import torch

from .._validate import check_int
from ..generation import check_sampling, decode_stream, draw, sampling_probs
from ..session import progress_bar

__all__ = [
    "Draft",
    "LayerSkipDraft",
    "ModelDraft",
    "PromptLookupDraft",
    "Proposal",
    "SpeculativeResult",
    "explain_round",
    "plain_generate",
    "residual_distribution",
    "speculative_accept",
    "speculative_generate",
]


def _probs(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """The warped distribution a decoder draws from (:func:`unveiled.generation.sampling_probs`), in fp32."""
    return sampling_probs(logits.float(), temperature, top_k, top_p)


def _temperature(temperature: float, top_k: int | None = None, top_p: float | None = None) -> float:
    return check_sampling(temperature, top_k, top_p)[0]


# --------------------------------------------------------------------------------------------------
# The accept/reject step
# --------------------------------------------------------------------------------------------------


def residual_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """``norm(max(0, p − q))``: what speculative sampling draws from after rejecting a draft token.

    It is the part of the target's distribution the draft under-covers. Where ``p == q`` exactly the residual
    is undefined, but then the draft token is always accepted and the residual never used; ``p`` is returned.
    Works on ``[..., V]``. Introduced in Chapter 7 [Leviathan et al. 2023].
    """
    r = torch.clamp(p - q, min=0)
    total = r.sum(-1, keepdim=True)
    return torch.where(total > 0, r / torch.where(total > 0, total, 1), p)


def _check_accept_args(p: torch.Tensor, q: torch.Tensor, draft_tokens) -> list[int]:
    if not isinstance(p, torch.Tensor) or not isinstance(q, torch.Tensor):
        raise TypeError("p and q must be torch tensors of probabilities, [k + 1, V] and [k, V]")
    tokens = [int(t) for t in (draft_tokens.tolist() if isinstance(draft_tokens, torch.Tensor) else draft_tokens)]
    k = len(tokens)
    if p.dim() != 2 or p.shape[0] != k + 1:
        raise ValueError(f"p must be [k + 1, V] = [{k + 1}, V] for {k} draft tokens, got {tuple(p.shape)}")
    if (q.dim() != 2 or q.shape[0] != k) and not (k == 0 and q.numel() == 0):
        raise ValueError(f"q must be [k, V] = [{k}, V] for {k} draft tokens, got {tuple(q.shape)}")
    if k and q.shape[1] != p.shape[1]:
        raise ValueError(f"mismatched vocabularies: p has {p.shape[1]} tokens, q has {q.shape[1]}; the draft "
                         "must share the target's vocabulary")
    if any(not 0 <= t < p.shape[1] for t in tokens):
        raise ValueError(f"draft tokens must be ids in [0, {p.shape[1]}), got {tokens}")
    return tokens


def speculative_accept(
    p: torch.Tensor,
    q: torch.Tensor,
    draft_tokens: Sequence[int] | torch.Tensor,
    generator: torch.Generator | None = None,
    trace: list | None = None,
) -> list[int]:
    """The accept/reject step of speculative sampling: the tokens one verification pass emits.

    ``p`` ``[k + 1, V]`` holds the target's next-token probabilities after the context and after each draft
    token; ``q`` ``[k, V]`` the draft's probabilities that produced ``draft_tokens``. Token ``i`` is accepted
    with probability ``min(1, p_i(x)/q_i(x))``; at the first rejection a replacement is drawn from
    ``norm(max(0, p_i − q_i))`` and the round ends; if all ``k`` are accepted a bonus token is drawn from
    ``p_k``. Returns 1 to ``k + 1`` token ids, distributed exactly as sampling from the target
    [Leviathan et al. 2023; Chen et al. 2023]. If ``trace`` is a list, one dict per decision is appended
    (position, token, p, q, u, outcome) for display. Introduced in Chapter 7.
    """
    tokens = _check_accept_args(p, q, draft_tokens)
    out: list[int] = []
    for i, x in enumerate(tokens):
        px, qx = float(p[i, x]), float(q[i, x])
        if qx <= 0:
            raise ValueError(f"draft token {x} at position {i} has draft probability 0: it cannot have been "
                             "sampled from q")
        # u < p/q, written without the division so that q(x) = p(x) = 1 (greedy) never rounds badly
        u = float(torch.rand((), generator=generator))
        if u * qx < px:
            out.append(x)
            if trace is not None:
                trace.append({"position": i, "draft_token": x, "p": px, "q": qx, "u": u, "outcome": "accepted",
                              "emitted": x})
            continue
        r = residual_distribution(p[i], q[i])
        out.append(int(torch.multinomial(r, 1, generator=generator)))
        if trace is not None:
            trace.append({"position": i, "draft_token": x, "p": px, "q": qx, "u": u,
                          "outcome": "rejected: drawn from the residual", "emitted": out[-1]})
        return out
    out.append(int(torch.multinomial(p[len(tokens)], 1, generator=generator)))
    if trace is not None:
        trace.append({"position": len(tokens), "draft_token": None, "p": None, "q": None, "u": None,
                      "outcome": "bonus: drawn from the target", "emitted": out[-1]})
    return out


# --------------------------------------------------------------------------------------------------
# Drafts
# --------------------------------------------------------------------------------------------------


@dataclass
class Proposal:
    """A draft's guesses and the distributions they were drawn from (``probs`` ``[len(tokens), V]``)."""

    tokens: list[int]
    probs: torch.Tensor


@runtime_checkable
class Draft(Protocol):
    """What :func:`speculative_generate` needs from a draft.

    ``vocab_size`` must equal the target's. ``reset()`` forgets any state (start of a generation).
    ``propose(context, k, temperature, top_k, top_p, generator)`` returns up to ``k`` guesses continuing
    ``context`` (all tokens so far) with the probabilities they were sampled from; a deterministic draft gives
    one-hot rows. Introduced in Chapter 7.
    """

    name: str
    vocab_size: int

    def reset(self) -> None: ...

    def propose(self, context: list[int], k: int, temperature: float, top_k: int | None, top_p: float | None,
                generator: torch.Generator | None) -> Proposal: ...


def _one_hot(tokens: list[int], vocab_size: int) -> torch.Tensor:
    out = torch.zeros(len(tokens), vocab_size)
    if tokens:
        out[torch.arange(len(tokens)), torch.tensor(tokens)] = 1.0
    return out


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


class ModelDraft:
    """A small language model as the draft, with its own KV cache kept in step with the accepted text.

    Before proposing, the draft's cache is cropped to the longest prefix it shares with the context (the
    rollback after a rejection) and the missing tokens are fed in one pass; then it samples ``k`` tokens one
    by one. ``model`` is any callable ``model(tokens [1, T], cache) -> logits [1, T, V]`` with
    ``new_cache()`` (a :class:`~unveiled.models.Decoder`). Introduced in Chapter 7.
    """

    def __init__(self, model: Any, name: str | None = None):
        if not callable(model) or not hasattr(model, "new_cache"):
            raise TypeError("model must be a decoder: callable as model(tokens, cache) with a new_cache() method")
        self.model = model
        self.vocab_size = int(model.config.vocab_size)
        self.name = name or f"model {getattr(model.config, 'name', '') or 'draft'}"
        self.reset()

    def reset(self) -> None:
        self.cache = self.model.new_cache()
        self.cached: list[int] = []

    def _logits(self, tokens: list[int]) -> torch.Tensor:
        return self.model(torch.tensor([tokens], dtype=torch.long), self.cache)[0, -1]

    def _sync(self, context: list[int]) -> torch.Tensor:
        keep = min(_common_prefix(self.cached, context), len(context) - 1)
        self.cache.crop(keep)
        logits = self._logits(context[keep:])
        self.cached = list(context)
        return logits

    def propose(self, context: list[int], k: int, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Proposal:
        if k == 0:
            return Proposal([], torch.zeros(0, self.vocab_size))
        logits = self._sync(context)
        tokens, probs = [], []
        for i in range(k):
            q = _probs(logits, temperature, top_k, top_p)
            x = int(draw(q, temperature, generator))
            tokens.append(x)
            probs.append(q)
            if i < k - 1:
                logits = self._logits([x])
                self.cached.append(x)
        return Proposal(tokens, torch.stack(probs))


class _RemappedCache:
    """A cache view that stores layer ``i`` of a model in slot ``mapping[i]`` of an inner cache."""

    def __init__(self, inner: Any, mapping: dict[int, int]):
        self.inner, self.mapping = inner, mapping
        self.keys_before_rope = getattr(inner, "keys_before_rope", False)

    @property
    def offset(self) -> int:
        return self.inner.offset

    def __len__(self) -> int:
        return len(self.inner)

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor):
        return self.inner.update(self.mapping[layer], k, v)

    def crop(self, n: int) -> None:
        self.inner.crop(n)


class _LayerSubset:
    """The target run with only some of its blocks: same embedding, same final norm and head."""

    def __init__(self, target: Any, layers: Sequence[int]):
        self.target = target
        self.layers = list(layers)
        self.config = target.config
        self._mapping = {orig: i for i, orig in enumerate(self.layers)}

    def new_cache(self):
        from ..models import KVCache

        return _RemappedCache(KVCache(len(self.layers)), self._mapping)

    def __call__(self, tokens: torch.Tensor, cache: Any) -> torch.Tensor:
        t = self.target
        x = t.embed_tokens(tokens)
        pos = torch.arange(cache.offset, cache.offset + tokens.shape[1])
        for i in self.layers:
            x = t.layers[i](x, t.rope, pos, cache)
        return t.head(x)


class LayerSkipDraft(ModelDraft):
    """Self-speculative decoding: the target with some blocks skipped drafts for the full target.

    No second model is needed: the draft reuses the target's weights, running only ``layers`` (block indices,
    kept in order) with a KV cache of its own. Skipping later blocks is LayerSkip's early-exit draft
    [Elhoushi et al. 2024]; skipping a chosen subset is Draft & Verify [Zhang et al. 2024]. Its cost relative
    to the target is about ``len(layers) / num_layers`` plus the head. Introduced in Chapter 7.
    """

    def __init__(self, target: Any, layers: Sequence[int], name: str | None = None):
        n = target.config.num_layers
        layers = [check_int("layer index", i, minimum=0, maximum=n - 1) for i in layers]
        if not layers:
            raise ValueError("a layer-skip draft needs at least one layer")
        if len(set(layers)) != len(layers) or layers != sorted(layers):
            raise ValueError(f"layers must be distinct block indices in increasing order, got {layers}")
        self.layers = layers
        super().__init__(_LayerSubset(target, layers), name=name or f"layer skip ({len(layers)}/{n} blocks)")

    @classmethod
    def by_importance(cls, target: Any, tokens: Sequence[int] | torch.Tensor, keep: int,
                      name: str | None = None) -> LayerSkipDraft:
        """A layer-skip draft that keeps the first and last blocks and the ``keep − 2`` others that change the
        residual stream most on ``tokens`` (mean ``‖h_out − h_in‖ / ‖h_in‖``, one teacher-forced pass).

        A cheap stand-in for Draft & Verify's search over skipped layers [Zhang et al. 2024]: blocks whose
        update is small matter least to the prediction. Introduced in Chapter 7.
        """
        n = target.config.num_layers
        keep = check_int("keep", keep, minimum=2, maximum=n)
        x = torch.as_tensor(tokens, dtype=torch.long).flatten()[None]
        with torch.inference_mode():
            states = target.hidden_states(x)
        change = [float(((states[i + 1] - states[i]).norm(dim=-1) / states[i].norm(dim=-1).clamp_min(1e-6)).mean())
                  for i in range(n)]
        middle = sorted(range(1, n - 1), key=lambda i: -change[i])[: keep - 2]
        return cls(target, sorted({0, n - 1, *middle}), name=name)


class PromptLookupDraft:
    """Draft by copying: find the latest earlier occurrence of the last n tokens and propose what followed.

    Tries n-grams from ``max_ngram`` down to ``min_ngram`` tokens; proposes nothing when none recurs (the
    round is then a plain decode step). The proposals are deterministic, so their "draft distribution" is
    one-hot, and speculative sampling stays exact at any temperature. Costs no model pass at all: prompt lookup
    decoding [Saxena 2023], a form of LLMA's copy-from-reference [Yang et al. 2023]. Introduced in Chapter 7.
    """

    def __init__(self, vocab_size: int, max_ngram: int = 3, min_ngram: int = 1, name: str = "prompt lookup"):
        self.vocab_size = check_int("vocab_size", vocab_size)
        self.max_ngram = check_int("max_ngram", max_ngram)
        self.min_ngram = check_int("min_ngram", min_ngram, maximum=self.max_ngram)
        self.name = name

    def reset(self) -> None:
        pass

    def lookup(self, context: list[int], k: int) -> list[int]:
        """The continuation the latest matching n-gram suggests (at most ``k`` tokens, maybe none)."""
        n_ctx = len(context)
        for n in range(min(self.max_ngram, n_ctx - 1), self.min_ngram - 1, -1):
            pattern = context[n_ctx - n:]
            for start in range(n_ctx - n - 1, -1, -1):
                if context[start:start + n] == pattern:
                    return context[start + n:start + n + k]
        return []

    def propose(self, context: list[int], k: int, temperature: float = 0.0, top_k: int | None = None,
                top_p: float | None = None, generator: torch.Generator | None = None) -> Proposal:
        tokens = self.lookup(context, k) if k else []
        return Proposal(tokens, _one_hot(tokens, self.vocab_size))


# --------------------------------------------------------------------------------------------------
# The decoding loops
# --------------------------------------------------------------------------------------------------


_ROUND_COLUMNS = ["drafted", "accepted", "emitted", "draft_s", "target_s"]


@dataclass
class SpeculativeResult:
    """A generation: ``tokens`` (prompt + continuation), the new ids, and one log row per target pass.

    ``rounds`` is a DataFrame with columns ``drafted``, ``accepted``, ``emitted``, ``draft_s``, ``target_s``
    (built from ``round_log``, a list of dicts). Summary properties: ``target_passes``, ``acceptance_rate``,
    ``tokens_per_pass``, ``time_s`` and ``tokens_per_s``. Introduced in Chapter 7.
    """

    tokens: list[int]
    prompt_len: int
    round_log: list[dict]
    time_s: float
    draft: str = ""
    k: int = 0
    extra: dict = field(default_factory=dict)

    @property
    def rounds(self) -> pd.DataFrame:
        return pd.DataFrame(self.round_log, columns=_ROUND_COLUMNS)

    @property
    def new_tokens(self) -> list[int]:
        return self.tokens[self.prompt_len:]

    @property
    def target_passes(self) -> int:
        return len(self.round_log)

    def _total(self, key: str) -> float:
        return float(sum(r[key] for r in self.round_log))

    @property
    def acceptance_rate(self) -> float:
        """Per-token acceptance α: accepted / tested draft tokens (a round tests its tokens in order and stops
        at the first rejection, so tokens after it are never tested). The estimate of α in the formulas."""
        tested = sum(r["accepted"] + (r["accepted"] < r["drafted"]) for r in self.round_log)
        return self._total("accepted") / tested if tested else float("nan")

    @property
    def tokens_per_pass(self) -> float:
        return len(self.new_tokens) / max(1, self.target_passes)

    @property
    def tokens_per_s(self) -> float:
        return len(self.new_tokens) / self.time_s if self.time_s > 0 else float("nan")

    def summary(self) -> dict:
        """One row for a results table."""
        return {"draft": self.draft, "k": self.k, "new_tokens": len(self.new_tokens),
                "target_passes": self.target_passes, "acceptance_rate": self.acceptance_rate,
                "tokens_per_pass": self.tokens_per_pass, "time_s": self.time_s, "tokens_per_s": self.tokens_per_s,
                "draft_s": self._total("draft_s"), "target_s": self._total("target_s")}


def _prompt_list(prompt) -> list[int]:
    if isinstance(prompt, torch.Tensor):
        if prompt.dim() == 2 and prompt.shape[0] == 1:
            prompt = prompt[0]
        if prompt.dim() != 1:
            raise ValueError("prompt must be one sequence of token ids (1-D, or [1, T])")
        prompt = prompt.tolist()
    tokens = [int(t) for t in prompt]
    if not tokens:
        raise ValueError("prompt must hold at least one token")
    return tokens


def _bar(total: int, progress: bool | None, desc: str):
    if progress or (progress is None and total > 100):
        return progress_bar(total=total, desc=desc)
    return None


def _vocab(model: Any, what: str) -> int:
    try:
        return int(model.config.vocab_size)
    except AttributeError:
        raise TypeError(f"{what} must be a decoder with a config.vocab_size (e.g. unveiled.models.Decoder)") from None


@torch.inference_mode()
def speculative_generate(
    target: Any,
    draft: Draft,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    k: int = 4,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    eos_token_id: int | None = None,
    progress: bool | None = None,
) -> SpeculativeResult:
    """Generate with speculative decoding: ``draft`` proposes up to ``k`` tokens, ``target`` verifies them.

    The target's cache always holds every token but the last; each round feeds the last token and the
    proposals in one pass (``k + 1`` positions), keeps the accepted prefix plus one target token
    (:func:`speculative_accept`) and crops the cache to it. Warping (``temperature``, ``top_k``, ``top_p``) is
    applied identically to target and draft, so the output follows the warped target exactly; at
    temperature 0 it equals plain greedy decoding token for token [Leviathan et al. 2023; Chen et al. 2023].
    Introduced in Chapter 7.
    """
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    k = check_int("k (draft length)", k, minimum=1)
    temperature = _temperature(temperature, top_k, top_p)
    v_target = _vocab(target, "target")
    if not isinstance(draft, Draft):
        raise TypeError(f"draft must implement the Draft protocol (ModelDraft, LayerSkipDraft, ...), "
                        f"got {type(draft).__name__}")
    if int(draft.vocab_size) != v_target:
        raise ValueError(f"mismatched vocabularies: the draft has {draft.vocab_size} tokens, the target "
                         f"{v_target}; speculative decoding needs one shared vocabulary")
    tokens = _prompt_list(prompt)
    prompt_len = len(tokens)
    gen = torch.Generator().manual_seed(int(seed))
    rows = []
    bar = _bar(max_new_tokens, progress, f"speculative ({draft.name}, k={k})")
    t_start = time.perf_counter()
    draft.reset()
    cache = target.new_cache()
    if len(tokens) > 1:
        target(torch.tensor([tokens[:-1]], dtype=torch.long), cache)
    produced = 0
    while produced < max_new_tokens:
        kk = min(k, max_new_tokens - produced - 1)
        t0 = time.perf_counter()
        prop = draft.propose(tokens, kk, temperature, top_k, top_p, gen) if kk > 0 else \
            Proposal([], torch.zeros(0, v_target))
        t1 = time.perf_counter()
        n_before = len(tokens) - 1
        logits = target(torch.tensor([[tokens[-1], *prop.tokens]], dtype=torch.long), cache)[0]
        p = _probs(logits, temperature, top_k, top_p)
        emitted = speculative_accept(p, prop.probs, prop.tokens, gen)
        cache.crop(n_before + len(emitted))
        t2 = time.perf_counter()
        if eos_token_id is not None and eos_token_id in emitted:
            emitted = emitted[: emitted.index(eos_token_id) + 1]
        tokens.extend(emitted)
        produced += len(emitted)
        rows.append({"drafted": len(prop.tokens), "accepted": len(emitted) - 1, "emitted": len(emitted),
                     "draft_s": t1 - t0, "target_s": t2 - t1})
        if bar is not None:
            bar.update(len(emitted))
        if eos_token_id is not None and emitted[-1] == eos_token_id:
            break
    if bar is not None:
        bar.close()
    return SpeculativeResult(tokens, prompt_len, rows, time.perf_counter() - t_start, draft=draft.name, k=k)


@torch.inference_mode()
def explain_round(
    target: Any,
    draft: Draft,
    context: Sequence[int] | torch.Tensor,
    k: int = 4,
    temperature: float = 1.0,
    seed: int = 0,
) -> pd.DataFrame:
    """One speculative round in detail: the draft's ``k`` proposals, ``p(x)``, ``q(x)``, the uniform draw ``u``,
    the decision and the emitted token, one row per decision (as :func:`speculative_accept` makes them).

    Runs exactly the code of :func:`speculative_generate`'s first round. Introduced in Chapter 7.
    """
    k = check_int("k (draft length)", k, minimum=1)
    temperature = _temperature(temperature)
    tokens = _prompt_list(context)
    gen = torch.Generator().manual_seed(int(seed))
    draft.reset()
    cache = target.new_cache()
    if len(tokens) > 1:
        target(torch.tensor([tokens[:-1]], dtype=torch.long), cache)
    prop = draft.propose(tokens, k, temperature, None, None, gen)
    p = _probs(target(torch.tensor([[tokens[-1], *prop.tokens]], dtype=torch.long), cache)[0], temperature,
               None, None)
    trace: list[dict] = []
    speculative_accept(p, prop.probs, prop.tokens, gen, trace=trace)
    return pd.DataFrame(trace)


@torch.inference_mode()
def plain_generate(
    model: Any,
    prompt: Sequence[int] | torch.Tensor,
    max_new_tokens: int,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    seed: int = 0,
    progress: bool | None = None,
) -> SpeculativeResult:
    """Plain autoregressive decoding (one target pass per token), timed like :func:`speculative_generate`.

    The baseline every speedup in Chapter 7 is measured against: the book's own decode loop
    (:func:`unveiled.generation.decode_stream`: prefill, then one decode pass per token, the same sampling
    code), with each step timed as a round that drafts nothing and emits one token. Introduced in Chapter 7.
    """
    max_new_tokens = check_int("max_new_tokens", max_new_tokens, minimum=0)
    temperature = _temperature(temperature, top_k, top_p)
    _vocab(model, "model")
    tokens = _prompt_list(prompt)
    prompt_len = len(tokens)
    gen = torch.Generator().manual_seed(int(seed))
    bar = _bar(max_new_tokens, progress, "plain decoding")
    rows = []
    t_start = t0 = time.perf_counter()
    # each step is one target pass (the prefill for the first token) and one draw, as generation.generate does
    stream = decode_stream(model, torch.tensor([tokens], dtype=torch.long), max_new_tokens, temperature, top_k,
                           top_p, gen)
    for nxt in stream:
        tokens.append(int(nxt[0]))
        t1 = time.perf_counter()
        rows.append({"drafted": 0, "accepted": 0, "emitted": 1, "draft_s": 0.0, "target_s": t1 - t0})
        t0 = t1
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    return SpeculativeResult(tokens, prompt_len, rows, time.perf_counter() - t_start, draft="none (plain decoding)",
                             k=0)
