"""Quantization recipes and the cached perplexity experiments of Chapter 3.

A :class:`Recipe` names one way to quantize a model (round-to-nearest, GPTQ, AWQ, SmoothQuant, LLM.int8(),
optionally after a Hadamard rotation) with its weight and activation specs; :func:`run_recipes` applies a list
of recipes to a model and measures each result's perplexity on held-out text and its size as a packed
safetensors file. The sweeps on SmolLM2-135M take tens of minutes on a 2-core CPU, so they are registered as
cached experiments (``python -m unveiled.results run quant.smollm2_rtn``, see :mod:`unveiled.results`) and the
chapter reads their tables; each table also stores the perplexity over the first :data:`LIVE_TOKENS` tokens,
which the chapter recomputes live for one setting and compares. Introduced in Chapter 3.

Evaluation text: Tiny Shakespeare's validation split (the tiny models' held-out text; out of domain for
SmolLM2, which never saw it as such). Calibration text: random windows of the training split, seeded.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import pandas as pd
import torch

from .._validate import check_choice, check_int
from ..evaluation import window_nll
from ..models import Decoder
from ..results import experiment
from ..session import progress_bar
from ..threads import torch_threads
from .awq import awq_model
from .gptq import gptq_model
from .layers import _check_model, model_size, quantize_model, quantized_state_dict, state_dict_nbytes
from .outliers import llm_int8_model
from .rotation import rotate_model
from .smoothing import smooth_model
from .uniform import QuantSpec

__all__ = [
    "EVAL_TOKENS",
    "LIVE_TOKENS",
    "Recipe",
    "calibration_batch",
    "eval_tokens",
    "live_perplexity",
    "loss_recovered",
    "outlier_profiles",
    "perplexities",
    "run_recipes",
]

#: Predicted tokens in each cached perplexity (8 windows of 256 tokens for SmolLM2).
EVAL_TOKENS = {"smollm2": 2048, "tiny": 16384}
#: Prefix of the same windows recomputed live in the chapter (2 windows for SmolLM2).
LIVE_TOKENS = {"smollm2": 512, "tiny": 4096}
WINDOW = 256
METHODS = ("none", "rtn", "gptq", "awq", "smoothquant", "llm.int8")


@dataclass(frozen=True)
class Recipe:
    """One way to quantize a model: a method, weight and activation specs and the method's options.

    ``method``: ``"none"`` (the floating-point model), ``"rtn"``, ``"gptq"``, ``"awq"``, ``"smoothquant"``
    (smooth with ``alpha``, then RTN) or ``"llm.int8"`` (outlier decomposition at ``threshold``). With
    ``rotate=True`` the model is first rotated by Hadamard matrices (QuaRot-style). ``label`` names the row
    in tables and charts. Introduced in Chapter 3.
    """

    label: str
    method: str = "rtn"
    weights: QuantSpec | None = None
    activations: QuantSpec | None = None
    alpha: float = 0.5
    rotate: bool = False
    threshold: float = 6.0

    def __post_init__(self) -> None:
        check_choice("method", self.method, METHODS)
        if self.method in ("rtn", "gptq", "awq") and self.weights is None and self.activations is None:
            raise ValueError(f"method {self.method!r} needs a weights (or activations) QuantSpec")

    def apply(self, model: Decoder, calibration: torch.Tensor | None = None, progress: bool = False) -> Decoder:
        """A quantized copy of ``model`` (the original is untouched)."""
        model = _check_model(model)
        needs_data = self.method in ("gptq", "awq", "smoothquant")
        if needs_data and calibration is None:
            raise ValueError(f"method {self.method!r} needs calibration tokens [num_sequences, seq_len]")
        m = rotate_model(model) if self.rotate else copy.deepcopy(model)
        if self.method == "none":
            return m
        if self.method == "rtn":
            return quantize_model(m, self.weights, self.activations, inplace=True)
        if self.method == "gptq":
            return gptq_model(m, calibration, self.weights, activations=self.activations, inplace=True,
                              progress=progress)[0]
        if self.method == "awq":
            return awq_model(m, calibration, self.weights, inplace=True, progress=progress)[0]
        if self.method == "smoothquant":
            smooth_model(m, calibration, self.alpha, inplace=True)
            return quantize_model(m, self.weights, self.activations, inplace=True)
        return llm_int8_model(m, self.threshold, inplace=True)

    def describe(self) -> dict:
        """The recipe as flat table columns."""
        w, a = self.weights, self.activations
        return {
            "label": self.label, "method": self.method,
            "w_bits": w.bits if w else 16, "a_bits": a.bits if a else 16,
            "granularity": (f"g{w.group_size}" if w.granularity == "group" else w.granularity) if w else "",
            "symmetric": w.symmetric if w else None, "zero_point": w.zero_point if w and not w.symmetric else "",
            "act_granularity": a.granularity if a else "", "rotate": self.rotate,
            "alpha": self.alpha if self.method == "smoothquant" else None,
        }


def eval_tokens(kind: str = "smollm2", n: int | None = None) -> list[int]:
    """The first ``n + 1`` tokens of Tiny Shakespeare's validation split, for ``"smollm2"`` (BPE) or
    ``"tiny"`` (characters); ``n`` defaults to :data:`EVAL_TOKENS`. Introduced in Chapter 3."""
    from ..text import corpus_split, shakespeare_tokenizer

    check_choice("kind", kind, ("smollm2", "tiny"))
    n = EVAL_TOKENS[kind] if n is None else check_int("n", n)
    text = corpus_split("val")
    if kind == "smollm2":
        from ..smollm2 import smollm2_tokenizer

        ids = smollm2_tokenizer().encode(text[: 8 * (n + 1)])
    else:
        ids = shakespeare_tokenizer().encode(text)
    if len(ids) < n + 1:
        raise ValueError(f"the validation split has only {len(ids) - 1} predictable tokens, asked for {n}")
    return ids[: n + 1]


def calibration_batch(kind: str = "smollm2", num_sequences: int = 16, seq_len: int = 256,
                      seed: int = 0) -> torch.Tensor:
    """Seeded random windows ``[num_sequences, seq_len]`` of the training split, as calibration tokens.

    Introduced in Chapter 3.
    """
    from ..text import corpus_split, shakespeare_tokenizer

    check_choice("kind", kind, ("smollm2", "tiny"))
    num_sequences = check_int("num_sequences", num_sequences)
    seq_len = check_int("seq_len", seq_len)
    text = corpus_split("train")
    if kind == "smollm2":
        from ..smollm2 import smollm2_tokenizer

        ids = torch.tensor(smollm2_tokenizer().encode(text[:400_000]))
    else:
        ids = torch.tensor(shakespeare_tokenizer().encode(text))
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(ids) - seq_len, (num_sequences,), generator=gen)
    return torch.stack([ids[s : s + seq_len] for s in starts.tolist()])


def perplexities(model: Decoder, tokens: Sequence[int], live_tokens: int) -> dict[str, float]:
    """Perplexity over all ``tokens`` and over the first ``live_tokens`` predictions (same windows).

    Introduced in Chapter 3.
    """
    nll = window_nll(model, tokens, window=WINDOW, batch_size=8)
    return {"perplexity": math.exp(float(nll.mean())), "perplexity_live": math.exp(float(nll[:live_tokens].mean())),
            "eval_tokens": len(nll)}


def live_perplexity(model: Decoder, kind: str = "smollm2") -> float:
    """The perplexity a cached table stores as ``perplexity_live``, recomputed now (a few seconds).

    Introduced in Chapter 3.
    """
    n = LIVE_TOKENS[check_choice("kind", kind, ("smollm2", "tiny"))]
    nll = window_nll(model, eval_tokens(kind, n), window=WINDOW, batch_size=8)
    return math.exp(float(nll.mean()))


def _linear_bits(model: Decoder) -> float:
    sizes = model_size(model)
    lin = sizes[sizes["kind"].str.endswith("_proj")]
    return float(8 * lin["bytes"].sum() / lin["params"].sum())


def run_recipes(model: Decoder, recipes: Sequence[Recipe], tokens: Sequence[int], live_tokens: int,
                calibration: torch.Tensor | None = None, progress: bool = True) -> pd.DataFrame:
    """Apply each recipe to ``model`` and measure perplexity, size on disk and time; one row per recipe.

    ``delta_pct`` is the perplexity change against the first ``method="none"`` row (if any); ``size_bytes``
    is the packed safetensors file (codes, scales, fp16 embeddings and norms); ``linear_bits`` the average
    stored bits per weight of the block projections. Introduced in Chapter 3.
    """
    model = _check_model(model)
    rows = []
    it = recipes
    if progress:
        it = progress_bar(recipes, desc="recipes", leave=False)
    for r in it:
        t0 = time.perf_counter()
        q = r.apply(model, calibration, progress=progress)
        took = time.perf_counter() - t0
        row = r.describe() | perplexities(q, tokens, live_tokens)
        row["size_bytes"] = state_dict_nbytes(quantized_state_dict(q))
        row["linear_bits"] = _linear_bits(q)
        row["quantize_s"] = took
        rows.append(row)
        del q
    df = pd.DataFrame(rows)
    base = df.loc[df["method"] == "none", "perplexity"]
    df["delta_pct"] = 100 * (df["perplexity"] / base.iloc[0] - 1) if len(base) else float("nan")
    return df


# --------------------------------------------------------------------------------------------------
# The cached experiments (python -m unveiled.results run quant.<name>)
# --------------------------------------------------------------------------------------------------


def _experiment(name: str, description: str):
    """Register under ``quant.<name>`` (the package, not this sub-module, names the experiment)."""
    return experiment(name, description, module="quant")


def _asym(bits: int, group: int | None = None) -> QuantSpec:
    return QuantSpec(bits, granularity="group", group_size=group) if group else QuantSpec(bits)


FP = Recipe("FP (Q4_1 dequantized)", "none")
W8 = QuantSpec(8, symmetric=True)
A8_TOKEN = QuantSpec(8, symmetric=True, granularity="token")
A8_TENSOR = QuantSpec(8, symmetric=True, granularity="tensor")
W4_SYM = QuantSpec(4, symmetric=True)
A4_TOKEN = QuantSpec(4, symmetric=True, granularity="token")


def smollm2_rtn_recipes() -> list[Recipe]:
    """Round-to-nearest weight quantization of SmolLM2: bits × granularity, plus the Q4_1 grid itself.

    Introduced in Chapter 3."""
    out = [FP]
    for bits in (8, 4, 3, 2):
        for group in (None, 64, 32):
            gran = f"g{group}" if group else "per-channel"
            out.append(Recipe(f"RTN int{bits} {gran}", "rtn", _asym(bits, group)))
    out.append(Recipe("RTN int4 per-channel sym", "rtn", W4_SYM))
    out.append(Recipe("RTN int4 g32, float minimum (Q4_1 grid)", "rtn",
                      QuantSpec(4, granularity="group", group_size=32, zero_point="float")))
    return out


def smollm2_method_recipes() -> list[Recipe]:
    """RTN, GPTQ and AWQ at 4 and 3 bits per channel, and at 3 bits in groups of 64. Introduced in Chapter 3."""
    out = [FP]
    for bits, group in ((4, None), (3, None), (3, 64)):
        gran = f"g{group}" if group else "per-channel"
        for method in ("rtn", "gptq", "awq"):
            out.append(Recipe(f"{method.upper()} int{bits} {gran}", method, _asym(bits, group)))
    return out


def smollm2_activation_recipes() -> list[Recipe]:
    """W8A8 (naive per-tensor and per-token, SmoothQuant, LLM.int8()) and W4A4 with and without rotation.

    Introduced in Chapter 3."""
    return [
        FP,
        Recipe("W8A16", "rtn", W8),
        Recipe("W8A8 per-token", "rtn", W8, A8_TOKEN),
        Recipe("W8A8 per-tensor", "rtn", W8, A8_TENSOR),
        Recipe("SmoothQuant a=0.5 W8A8 per-tensor", "smoothquant", W8, A8_TENSOR, alpha=0.5),
        Recipe("SmoothQuant a=0.8 W8A8 per-tensor", "smoothquant", W8, A8_TENSOR, alpha=0.8),
        Recipe("SmoothQuant a=0.5 W8A8 per-token", "smoothquant", W8, A8_TOKEN, alpha=0.5),
        Recipe("LLM.int8() (threshold 6)", "llm.int8"),
        Recipe("W16A4 per-token", "rtn", None, A4_TOKEN),
        Recipe("W4A16 per-channel sym", "rtn", W4_SYM),
        Recipe("W4A4", "rtn", W4_SYM, A4_TOKEN),
        Recipe("Rotated FP", "none", rotate=True),
        Recipe("Rotated W16A4", "rtn", None, A4_TOKEN, rotate=True),
        Recipe("Rotated W4A16", "rtn", W4_SYM, rotate=True),
        Recipe("Rotated W4A4", "rtn", W4_SYM, A4_TOKEN, rotate=True),
        Recipe("Rotated W4A4 + GPTQ", "gptq", W4_SYM, A4_TOKEN, rotate=True),
    ]


def tiny_recipes() -> list[Recipe]:
    """The tiny models: RTN bits × granularity, GPTQ and AWQ at 4 and 3 bits, W8A8 and W4A4. Introduced in
    Chapter 3."""
    out = [Recipe("FP", "none")]
    for bits in (8, 4, 3, 2):
        for group in (None, 32):
            gran = f"g{group}" if group else "per-channel"
            out.append(Recipe(f"RTN int{bits} {gran}", "rtn", _asym(bits, group)))
    for bits in (4, 3):
        for method in ("gptq", "awq"):
            out.append(Recipe(f"{method.upper()} int{bits} per-channel", method, _asym(bits)))
    out.append(Recipe("W8A8 per-token", "rtn", W8, A8_TOKEN))
    out.append(Recipe("W4A4", "rtn", W4_SYM, A4_TOKEN))
    out.append(Recipe("Rotated W4A4", "rtn", W4_SYM, A4_TOKEN, rotate=True))
    return out


@torch_threads(2)  # the book's reference setting (timings in the table use it)
def _smollm2_run(recipes: list[Recipe]) -> pd.DataFrame:
    from ..smollm2 import load_smollm2

    model = load_smollm2()
    df = run_recipes(model, recipes, eval_tokens("smollm2"), LIVE_TOKENS["smollm2"], calibration_batch("smollm2"))
    df.insert(0, "model", "smollm2-135m")
    return df


@_experiment("smollm2_rtn", "SmolLM2-135M: perplexity and size of round-to-nearest weight quantization, "
             "bits 8/4/3/2 x per-channel/g64/g32, and the Q4_1 grid")
def smollm2_rtn() -> pd.DataFrame:
    """Round-to-nearest sweep on SmolLM2-135M (see :func:`smollm2_rtn_recipes`). Introduced in Chapter 3."""
    return _smollm2_run(smollm2_rtn_recipes())


@_experiment("smollm2_methods", "SmolLM2-135M: RTN vs GPTQ vs AWQ at 4 and 3 bits per channel and at 3 bits "
             "in groups of 64 (calibration: 16 x 256 tokens of the training split)")
def smollm2_methods() -> pd.DataFrame:
    """GPTQ and AWQ against RTN on SmolLM2-135M (see :func:`smollm2_method_recipes`). Introduced in Chapter 3."""
    return _smollm2_run(smollm2_method_recipes())


@_experiment("smollm2_activations", "SmolLM2-135M: W8A8 naive vs SmoothQuant vs LLM.int8(), and W4A4 with "
             "and without Hadamard rotation")
def smollm2_activations() -> pd.DataFrame:
    """Weight-and-activation quantization of SmolLM2-135M (see :func:`smollm2_activation_recipes`).

    Introduced in Chapter 3."""
    return _smollm2_run(smollm2_activation_recipes())


@_experiment("smollm2_gptq_layers", "SmolLM2-135M: GPTQ int4 per-channel layer by layer, its layer error next "
             "to round-to-nearest's on the same calibration Hessians, and the time per layer")
@torch_threads(2)
def smollm2_gptq_layers() -> pd.DataFrame:
    """GPTQ's per-layer report on all 210 linear layers of SmolLM2-135M. Introduced in Chapter 3."""
    from ..smollm2 import load_smollm2

    model = load_smollm2()
    _, report = gptq_model(model, calibration_batch("smollm2"), QuantSpec(4), inplace=True)
    report.insert(0, "model", "smollm2-135m")
    return report


@_experiment("tiny_sweep", "Tiny models S and M: RTN bits x granularity, GPTQ and AWQ, W8A8 and W4A4 "
             "(with and without rotation), on Tiny Shakespeare's validation split")
@torch_threads(2)
def tiny_sweep() -> pd.DataFrame:
    """The same questions on the book's tiny character models. Introduced in Chapter 3."""
    from .. import zoo

    frames = []
    for name in ("S", "M"):
        model = zoo.load(name)
        df = run_recipes(model, tiny_recipes(), eval_tokens("tiny"), LIVE_TOKENS["tiny"], calibration_batch("tiny"))
        df.insert(0, "model", f"tiny-{name.lower()}")
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def loss_recovered(table: pd.DataFrame, reference: str = "rtn") -> pd.DataFrame:
    """How much of a reference method's quantization loss each other method wins back, setting by setting.

    ``table`` is one model's cached method sweep (columns ``method``, ``w_bits``, ``granularity``,
    ``perplexity``, with one ``method == "none"`` row: the unquantized model). For each setting (bits and
    granularity, and activation bits and rotation where the table has them) the loss of a method is
    its perplexity minus the unquantized one; ``recovered_pct`` is the share of the reference's loss that the
    method removes (100: back to full precision, 0: no better than the reference, negative: worse). This is
    how "GPTQ recovers X % of round-to-nearest's loss" is computed [Frantar et al. 2023]. Introduced in
    Chapter 3."""
    check_choice("reference", reference, sorted(set(table.method) - {"none"}))
    full = table.loc[table.method == "none", "perplexity"]
    if len(full) != 1:
        raise ValueError(f"the table needs exactly one unquantized row (method 'none'), found {len(full)}")
    keys = [c for c in ("w_bits", "granularity", "a_bits", "act_granularity", "rotate") if c in table.columns]
    rows = table[table.method != "none"].assign(loss=lambda d: d.perplexity - full.item())
    # One text key per setting: weight-only rows leave the activation columns empty (NaN), and a join on a
    # MultiIndex with an all-NaN level fails in some pandas versions (Colab's 2.2).
    rows = rows.assign(setting=["|".join("-" if pd.isna(v) else str(v) for v in r)
                                for r in rows[keys].itertuples(index=False)])
    ref = rows[rows.method == reference].set_index("setting").loss.rename("reference_loss")
    if not ref.index.is_unique:
        raise ValueError(f"several {reference!r} rows share a setting {keys}: pass one model's table")
    out = rows[rows.method != reference].join(ref, on="setting", how="inner")
    out["recovered_pct"] = 100 * (out.reference_loss - out.loss) / out.reference_loss
    return out[["method", "w_bits", "granularity", "perplexity", "loss", "reference_loss", "recovered_pct"]
               ].reset_index(drop=True)


def _block_index(model: Decoder, layer: str) -> int:
    parts = layer.split(".")
    if len(parts) < 2 or parts[0] != "layers" or not parts[1].isdigit() or int(parts[1]) >= len(model.layers):
        raise ValueError(f"layer must name a linear of one of the model's {len(model.layers)} blocks "
                         f"('layers.<i>.self_attn.q_proj'), got {layer!r}")
    return int(parts[1])


def _first_blocks(model: Decoder, n: int) -> Decoder:
    """A view of ``model`` with only its first ``n`` blocks (weights shared, nothing copied)."""
    view = copy.copy(model)
    view._modules = dict(model._modules)
    view.layers = torch.nn.ModuleList(list(model.layers[:n]))
    view.config = dataclasses.replace(model.config, num_layers=n)
    return view


def outlier_profiles(model: Decoder, calibration: torch.Tensor, layer: str = "layers.10.self_attn.q_proj",
                     alpha: float = 0.5) -> pd.DataFrame:
    """The per-channel max |x| of one linear layer's input, sorted, as is / after SmoothQuant / after rotation.

    Shows what each transform does to activation outliers (the first two share the model's basis; the
    rotated input is ``x Q``). Columns: ``transform``, ``rank``, ``absmax`` and, per transform, the
    max/median ratio in ``df.attrs["max_over_median"]``. Introduced in Chapter 3.
    """
    from .layers import collect_input_stats

    model = _check_model(model)
    kinds = {"q_proj": "attn_in", "k_proj": "attn_in", "v_proj": "attn_in", "gate_proj": "mlp_in",
             "up_proj": "mlp_in", "down_proj": "mlp_down"}
    kind = kinds.get(layer.rsplit(".", 1)[-1])
    if kind is None:
        raise ValueError(f"layer must be a q/k/v, gate/up or down projection, got {layer!r}")
    # The layer's input depends only on the blocks before it: transform just those (rotating all of SmolLM2's
    # weights in float64 costs tens of seconds on a CPU without AVX-512).
    model = _first_blocks(model, _block_index(model, layer) + 1)
    variants = {
        "as is": (model, layer),
        f"SmoothQuant (α = {alpha})": (smooth_model(model, calibration, alpha, kinds=(kind,)), layer),
        "Hadamard rotation": (rotate_model(model), layer + (".linear" if kind == "mlp_down" else "")),
    }
    frames, ratios = [], {}
    for name, (m, lname) in variants.items():
        amax = collect_input_stats(m, calibration, [lname])[lname]["absmax"]
        ordered = torch.sort(amax, descending=True).values
        ratios[name] = float(ordered[0] / ordered.median())
        frames.append(pd.DataFrame({"transform": name, "rank": range(len(ordered)), "absmax": ordered.numpy()}))
    out = pd.concat(frames, ignore_index=True)
    out.attrs["max_over_median"] = ratios
    return out


@_experiment("tiny_qlora", "Tiny model S: LoRA adapters (rank 8) trained 150 steps on a frozen int3/int2 g32 base "
             "(QLoRA-style) and, as a control, on the floating-point model")
@torch_threads(2)
def tiny_qlora(steps: int = 150) -> pd.DataFrame:
    """Q-PEFT in miniature: how much of the quantization loss LoRA on the frozen low-bit model wins back.

    Introduced in Chapter 3."""
    from .. import zoo
    from ..text import corpus_split, shakespeare_tokenizer
    from .qpeft import add_lora, lora_finetune, lora_parameters

    base = zoo.load("S")
    train = shakespeare_tokenizer().encode(corpus_split("train"))
    tokens = eval_tokens("tiny")
    rows = []
    for label, spec in (("FP", None), ("int3 g32", _asym(3, 32)), ("int2 g32", _asym(2, 32))):
        m = copy.deepcopy(base) if spec is None else quantize_model(base, spec)
        before = perplexities(m, tokens, LIVE_TOKENS["tiny"])["perplexity"]
        add_lora(m, rank=8)
        log = lora_finetune(m, train, steps=steps, batch_size=8, seq_len=128, lr=3e-3)
        after = perplexities(m, tokens, LIVE_TOKENS["tiny"])["perplexity"]
        adapters = sum(p.numel() for p in lora_parameters(m))
        rows.append({"model": "tiny-s", "base": label, "steps": steps, "perplexity_before": before,
                     "perplexity_after": after, "adapter_params": adapters,
                     "final_train_loss": float(log["loss"].tail(10).mean())})
    return pd.DataFrame(rows)
