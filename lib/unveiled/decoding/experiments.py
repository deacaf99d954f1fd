"""Chapter 7's cached experiments: measurements too long for the chapter's time budget.

Each function is registered with :func:`unveiled.results.experiment` and writes one table under
``data/results/decoding.experiments.<name>.csv`` when run with
``python -m unveiled.results run decoding.experiments.<name>`` (from the repository root). The chapter reads
the tables with :func:`unveiled.results.cached` and reruns a small setting live.

Everything here runs on **one** torch thread (:data:`THREADS`). On the book's shared 2-core machine, a second
thread helps only when the machine is idle: when other processes keep both cores busy, PyTorch's two threads
wait on each other at every operator, and a decode step can take many times longer on two threads than on
one. One thread gives slower but far steadier numbers, and the ratios the chapter reports are measured within
one run. Introduced in Chapter 7.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ..results import experiment
from ..threads import torch_threads

__all__ = [
    "MOE_SHAPE",
    "SMOLLM2_KS",
    "SMOLLM2_LAYER_SKIP_KEEP",
    "THREADS",
    "chat_prompt_ids",
    "early_exit_sweep",
    "medusa_jacobi_tiny",
    "moe_cpu",
    "shakespeare_prompt_ids",
    "smollm2_drafts",
    "smollm2_speculative",
    "smollm2_verification",
    "sparsity_sweep",
    "tiny_acceptance",
]

#: torch threads for every experiment of this module and the chapter's live reruns (see the module docstring).
THREADS = 1
#: Blocks the self-speculative SmolLM2 draft keeps (of 30), chosen by LayerSkipDraft.by_importance.
SMOLLM2_LAYER_SKIP_KEEP = 20
#: Draft lengths measured per SmolLM2 draft.
SMOLLM2_KS = {"small model": (1, 2, 3, 4, 6), "prompt lookup": (1, 2, 4, 6, 8), "layer skip": (1, 2, 3)}
#: A Mixtral-like MoE layer scaled down to fit this CPU: h = 1024, I = 3584, 8 experts, top-2 (fp32).
MOE_SHAPE = {"hidden_size": 1024, "intermediate_size": 3584, "num_experts": 8, "top_k": 2}


def shakespeare_prompt_ids(tokenizer, chars: int = 600) -> list[int]:
    """A fixed prompt: the validation split of Tiny Shakespeare from its first speaker line, ``chars`` long."""
    from ..text import corpus_split

    val = corpus_split("val")
    start = val.index("\n\n") + 2
    return tokenizer.encode(val[start:start + chars])


def chat_prompt_ids(tokenizer) -> list[int]:
    """A fixed chat prompt for SmolLM2-Instruct (a request it answers in its own words)."""
    from ..smollm2 import chat_prompt

    return tokenizer.encode(chat_prompt("Write a short poem about the sea in the style of Shakespeare."))


def smollm2_drafts(target) -> dict:
    """The drafts measured for SmolLM2: the shipped distilled draft, prompt lookup, and layer skipping
    (:data:`SMOLLM2_LAYER_SKIP_KEEP` blocks chosen on the first 256 training tokens)."""
    from ..smollm2 import smollm2_tokenizer
    from ..text import corpus_split
    from .smol_draft import load_smol_draft
    from .speculative import LayerSkipDraft, ModelDraft, PromptLookupDraft

    v = target.config.vocab_size
    calibration = smollm2_tokenizer().encode(corpus_split("train")[:3000])[:256]
    return {
        "small model": ModelDraft(load_smol_draft(), name="small model"),
        "prompt lookup": PromptLookupDraft(v, max_ngram=3, name="prompt lookup"),
        "layer skip": LayerSkipDraft.by_importance(target, calibration, SMOLLM2_LAYER_SKIP_KEEP, name="layer skip"),
    }


def _this_machine():
    from ..measure import measure_machine

    return measure_machine(register=False, progress=False).device


@experiment("smollm2_verification", "SmolLM2-135M (fp32, 1 thread): time of one pass vs tokens scored, with "
                                    "nn.Linear and with transposed weights, measured; and the roofline's prediction")
@torch_threads(THREADS)
def smollm2_verification() -> pd.DataFrame:
    """Measured time of a SmolLM2 pass scoring ``T`` tokens against 128 cached ones (best of 9), for the
    model as loaded (``nn.Linear``) and with every weight stored transposed (:func:`transpose_linears`), next to
    the analyzer's prediction on this machine's measured roofline (fp32 weights and activations). Chapter 7."""
    from ..smollm2 import load_smollm2
    from .analytic import verification_cost
    from .timing import measure_verification, transpose_linears

    tokens = (1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64)
    model = load_smollm2(progress=False)
    frames = [measure_verification(model, tokens=tokens, context_len=128, repeats=9).assign(layout="nn.Linear")]
    transpose_linears(model)
    frames.append(measure_verification(model, tokens=tokens, context_len=128, repeats=9)
                  .assign(layout="transposed weights"))
    dev = _this_machine()
    pred = verification_cost("smollm2-135m", dev, tokens=tokens, context_len=128, w_bits=32, a_bits=32)
    out = pd.concat(frames, ignore_index=True).merge(pred[["tokens", "time_s", "relative_time"]].rename(
        columns={"time_s": "predicted_time_s", "relative_time": "predicted_relative_time"}), on="tokens")
    out["bandwidth_b_s"] = dev.bandwidth
    out["peak_fp32_flop_s"] = dev.peak("fp32")
    return out


@experiment("smollm2_speculative", "SmolLM2-135M: plain vs speculative greedy decoding with three drafts and "
                                   "several k, tokens/s measured in one run, identical output checked")
@torch_threads(THREADS)
def smollm2_speculative() -> pd.DataFrame:
    """:func:`~unveiled.decoding.compare_decoding` for SmolLM2 (weights stored transposed, which makes the
    verification pass cheaper on a CPU, see :func:`transpose_linears`; plain decoding uses the same model) on two
    prompts (a Shakespeare continuation, 64 new tokens, the draft lengths of :data:`SMOLLM2_KS`; a chat request,
    k = 3), 3 repeats, best of each. Chapter 7."""
    from ..smollm2 import load_smollm2, smollm2_tokenizer
    from .timing import compare_decoding, transpose_linears

    target = load_smollm2(progress=False)
    transpose_linears(target)
    tok = smollm2_tokenizer()
    drafts = smollm2_drafts(target)
    a = compare_decoding(target, drafts, shakespeare_prompt_ids(tok), max_new_tokens=64, ks=SMOLLM2_KS,
                         repeats=3).assign(prompt="Shakespeare continuation")
    b = compare_decoding(target, drafts, chat_prompt_ids(tok), max_new_tokens=64, ks=(3,),
                         repeats=3).assign(prompt="chat request")
    return pd.concat([a, b], ignore_index=True)


@experiment("tiny_acceptance", "Tiny models: S (and M's own first block, and prompt lookup) drafting for M, "
                                "acceptance and tokens per pass vs k, greedy and sampled")
@torch_threads(THREADS)
def tiny_acceptance() -> pd.DataFrame:
    """Acceptance rate and tokens per target pass of three drafts for M on a Shakespeare prompt, k in
    1, 2, 3, 4, 6, 8, at temperature 0 (300 tokens, identical output checked) and 1 (mean over 3 seeds).
    Chapter 7."""
    from ..text import corpus_split, shakespeare_tokenizer
    from ..zoo import load
    from .analytic import expected_tokens_per_pass
    from .speculative import (
        LayerSkipDraft,
        ModelDraft,
        PromptLookupDraft,
        plain_generate,
        speculative_generate,
    )

    target, small = load("M"), load("S")
    prompt = shakespeare_tokenizer().encode(corpus_split("val")[:256])
    drafts = {"small model": ModelDraft(small, name="small model"),
              "layer skip": LayerSkipDraft(target, [0], name="layer skip"),
              "prompt lookup": PromptLookupDraft(target.config.vocab_size, name="prompt lookup")}
    plain = plain_generate(target, prompt, 300).new_tokens
    rows = []
    for name, draft in drafts.items():
        for k in (1, 2, 3, 4, 6, 8):
            for temperature in (0.0, 1.0):
                seeds = (0,) if temperature == 0 else range(3)
                res = [speculative_generate(target, draft, prompt, 300, k=k, temperature=temperature, seed=s)
                       for s in seeds]
                alpha = float(np.mean([r.acceptance_rate for r in res]))
                rows.append({"draft": name, "k": k, "temperature": temperature, "acceptance_rate": alpha,
                             "tokens_per_pass": float(np.mean([r.tokens_per_pass for r in res])),
                             "predicted_tokens_per_pass": float(expected_tokens_per_pass(alpha, k)),
                             "identical": bool(res[0].new_tokens == plain) if temperature == 0 else None})
    return pd.DataFrame(rows)


@experiment("medusa_jacobi_tiny", "Medusa heads trained on frozen M (3 heads, 600 steps) and Jacobi decoding of M: "
                                   "head accuracy, tokens per pass, identical greedy output")
@torch_threads(THREADS)
def medusa_jacobi_tiny() -> pd.DataFrame:
    """Train 3 Medusa heads on M (600 steps, seeded), then greedy-decode 300 tokens with Medusa's tree and with
    Jacobi iteration (block 4 and 8, with and without the n-gram pool). Chapter 7."""
    from ..text import corpus_split, shakespeare_tokenizer
    from ..zoo import load
    from .jacobi import jacobi_generate
    from .medusa import medusa_generate, train_medusa_heads
    from .speculative import plain_generate

    model = load("M")
    tok = shakespeare_tokenizer()
    heads, log = train_medusa_heads(model, tok.encode(corpus_split("train")), num_heads=3, steps=600, seed=0)
    prompt = tok.encode(corpus_split("val")[:256])
    plain = plain_generate(model, prompt, 300).new_tokens
    tail = log.tail(50).mean()
    rows = [{"method": "Medusa (3 heads, 10-node tree)", **{f"head{j}_acc": float(tail[f"head{j}_acc"])
                                                           for j in (1, 2, 3)}}]
    r = medusa_generate(model, heads, prompt, 300)
    rows[0].update(tokens_per_pass=r.tokens_per_pass, identical=r.new_tokens == plain)
    for block in (4, 8):
        for pool in (False, True):
            j = jacobi_generate(model, prompt, 300, block_size=block, pool=pool)
            rows.append({"method": f"Jacobi (block {block}{', n-gram pool' if pool else ''})",
                         "tokens_per_pass": j.tokens_per_pass, "identical": j.new_tokens == plain})
    return pd.DataFrame(rows)


@experiment("early_exit_sweep", "CALM-style early exit on M: blocks run per token vs agreement with full greedy")
@torch_threads(THREADS)
def early_exit_sweep() -> pd.DataFrame:
    """Greedy decoding of 300 tokens with early exit at several thresholds λ: mean blocks run per token and
    the fraction of tokens equal to the full model's greedy output (first divergence position too). Chapter 7."""
    from ..text import corpus_split, shakespeare_tokenizer
    from ..zoo import load
    from .early_exit import early_exit_generate
    from .speculative import plain_generate

    model = load("M")
    prompt = shakespeare_tokenizer().encode(corpus_split("val")[:256])
    plain = plain_generate(model, prompt, 300).new_tokens
    rows = []
    for lam in (1.01, 0.99, 0.95, 0.9, 0.8, 0.6, 0.4, 0.2, 0.0):
        r = early_exit_generate(model, prompt, 300, threshold=lam)
        same = [a == b for a, b in zip(r.new_tokens, plain, strict=True)]
        rows.append({"threshold": lam, "mean_layers": r.extra["mean_layers"],
                     "layer_fraction": r.extra["mean_layers"] / model.config.num_layers,
                     "first_divergence": same.index(False) if False in same else len(same),
                     "token_agreement": float(np.mean(same))})
    return pd.DataFrame(rows)


@experiment("sparsity_sweep", "Contextual sparsity on M: validation perplexity when each MLP computes a fraction "
                               "of its neurons, oracle vs trained predictor")
@torch_threads(THREADS)
def sparsity_sweep() -> pd.DataFrame:
    """Perplexity on the first 16,384 validation characters with ``keep`` of the MLP neurons (oracle top-|a|
    and a rank-32 predictor per block trained for 300 steps at each keep), plus predictor recall. Chapter 7."""
    from ..evaluation import perplexity
    from ..text import corpus_split, shakespeare_tokenizer
    from ..zoo import load
    from .sparsity import sparse_model, train_sparsity_predictors

    model = load("M")
    tok = shakespeare_tokenizer()
    val = tok.encode(corpus_split("val")[:16_384])
    train = tok.encode(corpus_split("train"))
    dense = perplexity(model, val, window=256).perplexity
    rows = [{"keep": 1.0, "selector": "dense", "perplexity": dense, "recall": 1.0}]
    for keep in (0.1, 0.2, 0.3, 0.5, 0.7):
        rows.append({"keep": keep, "selector": "oracle",
                     "perplexity": perplexity(sparse_model(model, keep), val, window=256).perplexity, "recall": 1.0})
        preds, log = train_sparsity_predictors(model, train, keep=keep, rank=32, steps=300, seed=0)
        rows.append({"keep": keep, "selector": "predictor",
                     "perplexity": perplexity(sparse_model(model, keep, preds), val, window=256).perplexity,
                     "recall": float(log.recall.tail(30).mean())})
    return pd.DataFrame(rows)


@experiment("moe_cpu", "A Mixtral-like MoE layer (h=1024, I=3584, 8 experts, top-2, fp32) on this CPU: decode "
                       "step time vs batch and experts touched")
@torch_threads(THREADS)
def moe_cpu() -> pd.DataFrame:
    """:func:`~unveiled.decoding.moe.measure_moe_decode` for :data:`MOE_SHAPE`, batches 1..64, best of 7.
    Chapter 7."""
    from .moe import MoELayer, measure_moe_decode

    layer = MoELayer(**MOE_SHAPE, seed=0)
    return measure_moe_decode(layer, batches=(1, 2, 4, 8, 16, 32, 64), repeats=7)
