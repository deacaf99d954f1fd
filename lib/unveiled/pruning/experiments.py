"""The cached pruning experiments of Chapter 5, and the published anchors they are read against.

A :class:`Compression` names one way to shrink a model: unstructured or N:M pruning (magnitude, Wanda,
SparseGPT), structured pruning (KV groups and MLP channels by a magnitude, activation or first-order score,
optionally followed by LoRA recovery) or low-rank factorization (SVD or ASVD, uniform or energy-allocated
ranks). :func:`run_compressions` applies a list of them to a model and measures perplexity on Tiny
Shakespeare's validation split (and, for SmolLM2, on the out-of-domain pydoc text), with calibration on
random windows of the training split only. Every row says how much of the block projections' parameters
the compression removed (``sparsity``: zeroed, sliced away or not stored by the factors), so all families
share one axis. The sweeps take about an hour on one CPU thread, so they are registered as cached
experiments (``python -m unveiled.results run pruning.smollm2_sweep``); each stores the perplexity over the
first :data:`~unveiled.quant.experiments.LIVE_TOKENS` tokens too, which the chapter recomputes live for one
setting. Introduced in Chapter 5.
"""

from __future__ import annotations

import copy
import io
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from .._validate import check_choice
from ..models import Decoder, DecoderConfig
from ..results import experiment
from ..session import progress_bar
from ..threads import torch_threads
from .lowrank import LowRankLinear, lowrank_model
from .structured import lora_recover, plan_for_sparsity, structure_scores, structured_prune
from .unstructured import prune_model

__all__ = [
    "FAMILIES",
    "Compression",
    "block_sparsity",
    "method_ordering",
    "published_anchors",
    "pydoc_tokens",
    "run_compressions",
    "smollm2_compressions",
    "tiny_compressions",
]

FAMILIES = ("dense", "unstructured", "semi-structured", "structured", "low-rank")
UNSTRUCTURED = ("magnitude", "wanda", "sparsegpt")
STRUCTURED_SCORES = ("magnitude", "activation", "taylor")
SPARSITIES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7)
NM_PATTERNS = ("2:4", "4:8")
STRUCTURED_SPARSITIES = (0.1, 0.2, 0.3, 0.4)
LOWRANK_KEEP = (0.9, 0.8, 0.7, 0.6)
#: Out-of-domain tokens (pydoc) in each SmolLM2 perplexity (4 windows of 256).
OOD_TOKENS = 1024


@dataclass(frozen=True)
class Compression:
    """One compression of a model, as one row of a sweep.

    ``family`` is one of :data:`FAMILIES`; ``method`` the pruning method (``"magnitude"``, ``"wanda"``,
    ``"sparsegpt"``), the structured score (``"magnitude"``, ``"activation"``, ``"taylor"``) or the factorization
    (``"svd"``, ``"asvd"``); ``pattern`` the sparsity pattern (``"50%"``, ``"2:4"``), the structures removed
    (``"mlp"``, ``"kv+mlp"``: one KV group per layer and MLP channels) or the rank allocation (``"uniform"``,
    ``"energy"``); ``target`` the sparsity (or the removed share of parameters). ``recover_steps`` > 0 adds a
    LoRA recovery after structured pruning. Introduced in Chapter 5.
    """

    family: str
    method: str = "none"
    pattern: str = ""
    target: float = 0.0
    recover_steps: int = 0

    def __post_init__(self) -> None:
        check_choice("family", self.family, FAMILIES)

    @property
    def label(self) -> str:
        if self.family == "dense":
            return "dense"
        if self.family == "structured":
            what = "1 KV group + MLP" if self.pattern == "kv+mlp" else "MLP"
            rec = f" + LoRA {self.recover_steps}" if self.recover_steps else ""
            return f"structured {100 * self.target:g}% ({what}, {self.method}){rec}"
        if self.family == "low-rank":
            return f"{self.method.upper()} {self.pattern} keep {100 * (1 - self.target):g}%"
        return f"{self.method} {self.pattern}"

    def apply(self, model: Decoder, calibration: torch.Tensor, train_tokens: Sequence[int] | None = None,
              cache: dict | None = None) -> Decoder:
        """A compressed copy of ``model`` (the original is untouched). ``cache`` (a dict shared across calls on
        the same model and calibration) keeps what does not depend on the setting: structure scores and ASVD's
        input magnitudes."""
        cache = {} if cache is None else cache
        if self.family == "dense":
            return copy.deepcopy(model)
        if self.family in ("unstructured", "semi-structured"):
            cal = calibration if self.method != "magnitude" else None
            return prune_model(model, self.method, self.pattern, cal, progress=False)[0]
        if self.family == "structured":
            kv = 1 if self.pattern == "kv+mlp" else 0
            key = ("scores", self.method)
            if key not in cache:
                cache[key] = structure_scores(model, self.method, calibration, batch_size=4)
            out, _ = structured_prune(model, plan_for_sparsity(model.config, self.target, kv), self.method,
                                      scores=cache[key])
            if self.recover_steps:
                if train_tokens is None:
                    raise ValueError("LoRA recovery needs training tokens")
                out, _ = lora_recover(out, train_tokens, steps=self.recover_steps, lr=3e-3)
            return out
        if self.method == "asvd" and "absmean" not in cache:
            from ..quant.layers import collect_input_stats

            stats = collect_input_stats(model, calibration)
            cache["absmean"] = {n: s["absmean"] for n, s in stats.items()}
        return lowrank_model(model, 1.0 - self.target, method=self.method, allocation=self.pattern,
                             input_absmean=cache.get("absmean") if self.method == "asvd" else None)[0]

    def describe(self) -> dict:
        return {"label": self.label, "family": self.family, "method": self.method, "pattern": self.pattern,
                "target": self.target, "recover_steps": self.recover_steps}


def block_sparsity(model: Decoder, reference: Decoder) -> tuple[float, int]:
    """The share of ``reference``'s block-projection parameters that ``model`` no longer stores (zeros,
    removed structures, or factors smaller than the dense weights), and the block-projection numbers it
    stores. Introduced in Chapter 5."""
    def stored(m: Decoder) -> tuple[int, int]:
        total = nonzero = 0
        for block in m.layers:
            for mod in block.modules():
                if isinstance(mod, LowRankLinear):
                    n = mod.first.weight.numel() + mod.second.weight.numel()
                    total, nonzero = total + n, nonzero + n
                elif isinstance(mod, torch.nn.Linear) and not _inside_lowrank(block, mod):
                    total += mod.weight.numel()
                    nonzero += int((mod.weight != 0).sum())
        return total, nonzero

    _, kept = stored(model)
    ref, _ = stored(reference)
    return 1.0 - kept / ref, kept


def _inside_lowrank(block: torch.nn.Module, mod: torch.nn.Module) -> bool:
    return any(isinstance(m, LowRankLinear) and (m.first is mod or m.second is mod) for m in block.modules())


def pydoc_tokens(n: int) -> list[int]:
    """The first ``n + 1`` SmolLM2 tokens of the vendored pydoc text (out of domain for Tiny Shakespeare).

    Introduced in Chapter 5."""
    from ..smollm2 import smollm2_tokenizer
    from ..text import corpus

    ids = smollm2_tokenizer().encode(corpus("pydoc")[: 8 * (n + 1)])
    if len(ids) < n + 1:
        raise ValueError(f"the pydoc text has only {len(ids) - 1} predictable tokens, asked for {n}")
    return ids[: n + 1]


def run_compressions(model: Decoder, compressions: Sequence[Compression], kind: str, *,
                     calibration: torch.Tensor, train_tokens: Sequence[int] | None = None,
                     out_of_domain: Sequence[int] | None = None, progress: bool = True) -> pd.DataFrame:
    """Apply each compression to ``model``; measure perplexity (validation split, and ``out_of_domain`` tokens
    when given), the removed share of block parameters, the parameters stored and the time taken.

    ``kind`` is ``"smollm2"`` or ``"tiny"`` (which evaluation text and live prefix, as in Chapter 3). Columns:
    the :meth:`Compression.describe` fields, ``sparsity``, ``block_params``, ``params``, ``perplexity``,
    ``perplexity_live``, ``eval_tokens``, ``perplexity_ood`` (if asked), ``compress_s`` and ``delta_pct``
    (against the dense row). Structure scores and ASVD's input magnitudes are computed once per model and
    reused (``compress_s`` of the first row of each kind includes them). Introduced in Chapter 5.
    """
    from ..quant.experiments import LIVE_TOKENS, eval_tokens, perplexities

    check_choice("kind", kind, ("smollm2", "tiny"))
    tokens = eval_tokens(kind)
    rows, cache = [], {}
    it = compressions
    if progress:
        it = progress_bar(compressions, desc="compressions", leave=False)
    for c in it:
        t0 = time.perf_counter()
        m = c.apply(model, calibration, train_tokens, cache)
        took = time.perf_counter() - t0
        sparsity, kept = block_sparsity(m, model)
        row = c.describe() | {"sparsity": sparsity, "block_params": kept,
                              "params": sum(p.numel() for p in {id(p): p for p in m.parameters()}.values())}
        row |= perplexities(m, tokens, LIVE_TOKENS[kind])
        if out_of_domain is not None:
            row["perplexity_ood"] = perplexities(m, out_of_domain, 1)["perplexity"]
        row["compress_s"] = took
        rows.append(row)
        del m
    df = pd.DataFrame(rows)
    dense = df.loc[df["family"] == "dense", "perplexity"]
    df["delta_pct"] = 100 * (df["perplexity"] / dense.iloc[0] - 1) if len(dense) else float("nan")
    return df


def _grid(config: DecoderConfig, recover_steps: int = 0) -> list[Compression]:
    out = [Compression("dense")]
    for method in UNSTRUCTURED:
        out += [Compression("unstructured", method, f"{round(100 * s)}%", s) for s in SPARSITIES]
        out += [Compression("semi-structured", method, p, 0.5) for p in NM_PATTERNS]
    for score in STRUCTURED_SCORES:
        for what in ("mlp", "kv+mlp"):
            for s in STRUCTURED_SPARSITIES:
                try:
                    plan_for_sparsity(config, s, 1 if what == "kv+mlp" else 0)
                except ValueError:  # one KV group alone already removes more than s
                    continue
                out.append(Compression("structured", score, what, s))
                if recover_steps:
                    out.append(Compression("structured", score, what, s, recover_steps))
    for method in ("svd", "asvd"):
        for allocation in ("uniform", "energy"):
            out += [Compression("low-rank", method, allocation, round(1 - k, 2)) for k in LOWRANK_KEEP]
    return out


def smollm2_compressions() -> list[Compression]:
    """SmolLM2-135M's grid: dense; magnitude, Wanda and SparseGPT at 10–70 % and 2:4, 4:8; structured 10–40 %
    (MLP channels, or one KV group and channels) by three scores; SVD and ASVD keeping 90–60 % of the
    parameters with uniform or energy-allocated ranks. Introduced in Chapter 5."""
    cfg = DecoderConfig(vocab_size=49152, hidden_size=576, num_layers=30, num_heads=9, num_kv_heads=3,
                        intermediate_size=1536, head_dim=64)  # SmolLM2-135M's shape (checked by a test)
    return _grid(cfg)


def tiny_compressions(name: str = "S", recover_steps: int = 150) -> list[Compression]:
    """The same grid for a tiny model, plus a LoRA recovery (``recover_steps``) after each structured pruning.

    Introduced in Chapter 5."""
    from ..zoo import _entry

    return _grid(_entry(name).config, recover_steps)


# --------------------------------------------------------------------------------------------------
# The cached experiments (python -m unveiled.results run pruning.<name>)
# --------------------------------------------------------------------------------------------------


def _experiment(name: str, description: str):
    """Register under ``pruning.<name>`` (the package, not this sub-module, names the experiment)."""

    def wrap(fn):
        fn.__module__ = "unveiled.pruning"
        return experiment(name, description)(fn)

    return wrap


@_experiment("smollm2_sweep", "SmolLM2-135M: perplexity (Tiny Shakespeare validation, pydoc out of domain) after "
             "magnitude/Wanda/SparseGPT pruning at 10-70% and 2:4, 4:8; structured 10-40% by three scores; "
             "SVD/ASVD low rank keeping 90-60% (calibration: 16 x 256 training-split tokens; one thread)")
def smollm2_sweep() -> pd.DataFrame:
    """The chapter's main table (see :func:`smollm2_compressions`). Introduced in Chapter 5."""
    from ..quant.experiments import calibration_batch
    from ..smollm2 import load_smollm2

    with torch_threads(1):
        model = load_smollm2(progress=False)
        df = run_compressions(model, smollm2_compressions(), "smollm2", calibration=calibration_batch("smollm2"),
                              out_of_domain=pydoc_tokens(OOD_TOKENS))
    df.insert(0, "model", "smollm2-135m")
    return df


@_experiment("tiny_sweep", "Tiny models S and M: the same pruning, structured and low-rank grid, with a 150-step "
             "LoRA recovery after each structured pruning (calibration and LoRA on the training split)")
def tiny_sweep() -> pd.DataFrame:
    """The same questions on the book's tiny character models. Introduced in Chapter 5."""
    from .. import zoo
    from ..quant.experiments import calibration_batch
    from ..text import corpus_split, shakespeare_tokenizer

    train = shakespeare_tokenizer().encode(corpus_split("train"))
    frames = []
    with torch_threads(1):
        for name in ("S", "M"):
            model = zoo.load(name)
            df = run_compressions(model, tiny_compressions(name), "tiny", calibration=calibration_batch("tiny"),
                                  train_tokens=train)
            df.insert(0, "model", f"tiny-{name.lower()}")
            frames.append(df)
    return pd.concat(frames, ignore_index=True)


# --------------------------------------------------------------------------------------------------
# Published anchors
# --------------------------------------------------------------------------------------------------


def published_anchors() -> pd.DataFrame:
    """Published WikiText-2 perplexities of pruned LLaMA models (``data/pruning_anchors.csv``), each row with
    its paper, table and source URL. Introduced in Chapter 5."""
    from ..datafiles import data_file

    return pd.read_csv(io.StringIO(data_file("pruning_anchors.csv").read_text(encoding="utf-8")))


def method_ordering(table: pd.DataFrame, patterns: Sequence[str] = ("50%", "4:8", "2:4"),
                    methods: Sequence[str] = UNSTRUCTURED, value: str = "perplexity") -> pd.DataFrame:
    """Per pattern, the methods ranked from best (lowest ``value``) to worst, as ``"wanda < sparsegpt < ..."``.

    ``table`` has ``pattern``, ``method`` and ``value`` columns (a sweep or the published anchors).
    Introduced in Chapter 5."""
    rows = []
    for p in patterns:
        sub = table[(table["pattern"] == p) & table["method"].isin(methods)]
        if sub.empty:
            continue
        order = sub.sort_values(value)
        best = order[value].iloc[0]
        rows.append({"pattern": p, "order": " < ".join(order["method"]), "best": order["method"].iloc[0],
                     "worst": order["method"].iloc[-1],
                     "worst_over_best": float(order[value].iloc[-1] / best) if best and not math.isnan(best)
                     else float("nan")})
    return pd.DataFrame(rows)
