"""What a CPU makes of pruning: sparse (CSR) against dense matmuls, and the decode speed of smaller models.

Zeros stored in a dense tensor are multiplied like any other number: unstructured sparsity saves time only
if a kernel skips them. PyTorch's CPU kernel for compressed sparse row (CSR) matrices does, but it reads a
column index for every kept value and gives up the blocked, vectorised inner loops of a dense GEMM. The
roofline says where it could pay: in memory-bound decode the CSR matrix moves ``(1 − s)·(value + index)``
bytes per weight against the dense ``value`` bytes, so it wins beyond ``s = index/(value + index)`` (a half
with 32-bit indices). :func:`csr_vs_dense` measures both on this machine and predicts both on a (measured)
roofline, in one run; :func:`break_even` reads the crossing. :func:`decode_speeds` times greedy decoding of
structurally pruned and low-rank models against the dense one. Introduced in Chapter 5.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .._validate import check_int
from ..analyzer.sparsity import WeightForm, linear_form_cost
from ..threads import torch_threads
from ..timing import Budget, time_repeats

__all__ = ["break_even", "compressed_decode_speeds", "csr_matrix", "csr_vs_dense", "decode_speeds", "lowrank_twin",
           "model_spec", "predict_pass"]


def csr_matrix(weight: torch.Tensor, index_bits: int = 32) -> torch.Tensor:
    """``weight``'s non-zeros as a PyTorch CSR tensor with ``index_bits`` (32 or 64) indices. Chapter 5."""
    if index_bits not in (32, 64):
        raise ValueError(f"index_bits must be 32 or 64 (what PyTorch's CSR kernels take), got {index_bits}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "sparse CSR support is in beta"
        c = weight.to_sparse_csr()
        if index_bits == 32:
            c = torch.sparse_csr_tensor(c.crow_indices().int(), c.col_indices().int(), c.values(), c.shape)
    return c


def _random_sparse(out_f: int, in_f: int, sparsity: float, gen: torch.Generator) -> torch.Tensor:
    """Random values at random positions, each kept with probability ``1 − sparsity`` (fast for large W)."""
    w = torch.randn(out_f, in_f, generator=gen)
    return torch.where(torch.rand(out_f, in_f, generator=gen) >= sparsity, w, torch.zeros_like(w))


@torch.inference_mode()
def csr_vs_dense(out_features: int = 4096, in_features: int = 4096, batch: int = 1,
                 sparsities: Sequence[float] = (0.5, 0.7, 0.8, 0.9, 0.95, 0.98), *, repeats: int = 8,
                 index_bits: int = 32, threads: int | None = None, device=None, seed: int = 0,
                 clock: str = "wall", budget_s: float | None = 20.0) -> pd.DataFrame:
    """Time ``y = W x`` with ``W [out, in]`` dense and as CSR, at each sparsity, and predict both on ``device``.

    ``x`` is ``[in, batch]`` fp32 (``batch = 1`` is a decode step's matrix–vector product); each weight keeps a
    random ``1 − s`` of its positions (``sparsity`` is the measured fraction of zeros). Times are the best of
    ``repeats`` after a warm-up, dense and sparse interleaved in one run so machine load hits both alike; a
    dense kernel's time does not depend on the values, so ``dense_s`` is the best dense time over all rows.
    ``clock="thread"`` times the thread's CPU time (with one thread: robust to a busy machine). Each sparsity
    gets an even share of what is left of ``budget_s`` (:class:`unveiled.timing.Budget`; at least one timed
    repeat of each kernel), so a slow CPU measures fewer repeats, not longer.
    Columns: ``sparsity``, ``dense_s``, ``csr_s``, ``speedup`` (dense/CSR, > 1 means CSR wins), ``csr_bytes``,
    ``dense_bytes`` and, with a ``device`` (a name or the :class:`~unveiled.hardware.Device` of
    :func:`unveiled.measure_machine`), ``predicted_dense_s``, ``predicted_csr_s`` and ``predicted_speedup`` from
    the roofline (fp32 peak and bandwidth). Introduced in Chapter 5.
    """
    from ..roofline import roofline_time

    out_features, in_features = check_int("out_features", out_features), check_int("in_features", in_features)
    batch, repeats = check_int("batch", batch), check_int("repeats", repeats)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(in_features, batch, generator=gen)
    rows = []
    dense_cost = linear_form_cost(batch, out_features, in_features, 32, 32)
    budget = Budget(budget_s)
    with torch_threads(threads):
        for k, s in enumerate(sparsities):
            w = _random_sparse(out_features, in_features, s, gen)
            c = csr_matrix(w, index_bits)
            t_dense, t_csr = [], []
            share = max(budget.share(len(sparsities) - k) / 4, 1e-9) if budget_s is not None else None
            for _ in range(2):  # alternate, so a burst of load from other jobs hits both
                t_dense += time_repeats(lambda w=w: w @ x, max(1, repeats // 2), budget_s=share, clock_name=clock)
                t_csr += time_repeats(lambda c=c: torch.sparse.mm(c, x), max(1, repeats // 2), budget_s=share,
                                      clock_name=clock)
            s = 1.0 - c.values().numel() / w.numel()
            form = WeightForm("unstructured", sparsity=s, storage="csr", index_bits=index_bits)
            sparse_cost = linear_form_cost(batch, out_features, in_features, 32, 32, form)
            row = {"sparsity": s, "dense_s": min(t_dense), "csr_s": min(t_csr),
                   "dense_bytes": float(dense_cost["bytes"]), "csr_bytes": float(sparse_cost["bytes"])}
            if device is not None:
                nnz_flops = 2.0 * batch * out_features * in_features * (1.0 - s)
                row["predicted_dense_s"] = roofline_time(dense_cost["flops"], dense_cost["bytes"], device, "fp32")
                row["predicted_csr_s"] = roofline_time(max(nnz_flops, 1.0), sparse_cost["bytes"], device, "fp32")
            rows.append(row)
    df = pd.DataFrame(rows)
    df["dense_s"] = df["dense_s"].min()
    df["speedup"] = df["dense_s"] / df["csr_s"]
    if device is not None:
        df["predicted_speedup"] = df["predicted_dense_s"] / df["predicted_csr_s"]
    df.attrs.update(out_features=out_features, in_features=in_features, batch=batch, index_bits=index_bits,
                    threads=torch.get_num_threads() if threads is None else threads)
    return df


def break_even(df: pd.DataFrame, column: str = "speedup") -> float | None:
    """The sparsity at which ``column`` (dense time / sparse time) first reaches 1, interpolated linearly
    between the measured sparsities; None if it never does. Introduced in Chapter 5."""
    s, r = df["sparsity"].to_numpy(float), df[column].to_numpy(float)
    order = np.argsort(s)
    s, r = s[order], r[order]
    for k in range(len(s)):
        if r[k] >= 1.0:
            if k == 0:
                return float(s[0])
            return float(s[k - 1] + (1.0 - r[k - 1]) * (s[k] - s[k - 1]) / (r[k] - r[k - 1]))
    return None


def decode_speeds(models: Mapping[str, torch.nn.Module], prompt: Sequence[int] | torch.Tensor, *,
                  new_tokens: int = 16, rounds: int = 2, threads: int | None = None,
                  budget_s: float | None = 30.0) -> pd.DataFrame:
    """Greedy decode speed of each model (a KV cache, one token per step), measured in one run.

    Each round times every model once (:func:`unveiled.quant.decode_speed`, median step time, an even share
    of what is left of ``budget_s``); the best round counts, so a burst of load from other jobs does not
    decide a ratio. Columns: ``model``, ``params``, ``time_per_token_s``, ``tokens_per_s`` and ``speedup``
    against the first model. Introduced in Chapter 5.
    """
    from ..quant.kernels import decode_speed

    rounds = check_int("rounds", rounds)
    best: dict[str, float] = {}
    budget = Budget(budget_s)
    runs = rounds * len(models)
    with torch_threads(threads):
        for r in range(rounds):
            for j, (label, m) in enumerate(models.items()):
                share = max(budget.share(runs - r * len(models) - j), 1e-9) if budget_s is not None else None
                t = decode_speed(m, prompt, new_tokens=new_tokens, budget_s=share)["time_per_token_s"]
                best[label] = min(best.get(label, float("inf")), t)
    rows = [{"model": k, "params": sum(p.numel() for p in {id(p): p for p in m.parameters()}.values()),
             "time_per_token_s": best[k], "tokens_per_s": 1.0 / best[k]} for k, m in models.items()]
    df = pd.DataFrame(rows)
    df["speedup"] = df["time_per_token_s"].iloc[0] / df["time_per_token_s"]
    return df


def model_spec(model):
    """The analyzer's model for a book :class:`~unveiled.models.Decoder` (its config as a Hugging Face config),
    or the model name / spec passed through. Introduced in Chapter 5."""
    from ..analyzer.configs import model_from_hf_config
    from ..analyzer.configs import model_spec as spec_of
    from ..models import Decoder

    if isinstance(model, Decoder):
        return model_from_hf_config(model.config.to_hf_config(), name=model.config.name or "decoder")
    return spec_of(model)


def predict_pass(model, device, form: WeightForm | str | None = None, *, stage: str = "decode", batch: int = 1,
                 seq_len: int = 128, w_bits: int = 32, a_bits: int = 32, kv_bits: int | None = None) -> dict[str, float]:
    """The roofline's time, operations, bytes and weight bytes of one pass of ``model`` with its block projections
    in ``form`` (:func:`unveiled.analyze` with ``weight_form``; fp32 by default, as the book's CPU runs).
    ``model`` is a name, an analyzer spec (e.g. :func:`~unveiled.analyzer.sparsity.pruned_spec`) or a
    :class:`~unveiled.models.Decoder`. Introduced in Chapter 5."""
    from ..analyzer.analysis import analyze

    a = analyze(model_spec(model), device, stage=stage, batch=batch, seq_len=seq_len, w_bits=w_bits, a_bits=a_bits,
                kv_bits=kv_bits, check_context=False, weight_form=form)
    return {"time_s": a.time_s, "flops": a.flops, "bytes": a.bytes, "weights_bytes": a.memory.weights}


def lowrank_twin(model, keep: float, seed: int = 0):
    """A copy of ``model`` whose block projections are :class:`~unveiled.pruning.LowRankLinear` pairs of the
    ranks :func:`~unveiled.pruning.lowrank_model` would give them (uniform allocation at ``keep``), filled with
    seeded random factors instead of an SVD: the same shapes and matmuls in seconds less. For timing only (a
    matmul's speed does not depend on the values); its outputs mean nothing. Introduced in Chapter 5."""
    import copy

    from ..quant.hessian import set_module
    from .lowrank import LowRankLinear, rank_for_params
    from .unstructured import pruned_layer_names

    out = copy.deepcopy(model)
    gen = torch.Generator().manual_seed(seed)
    for name in pruned_layer_names(out):
        o, i = out.get_submodule(name).weight.shape
        r = rank_for_params((o, i), keep)
        set_module(out, name, LowRankLinear(torch.randn(r, i, generator=gen) * 0.02,
                                            torch.randn(o, r, generator=gen) * 0.02))
    return out


def compressed_decode_speeds(model, device, prompt: Sequence[int], *, sparsity: float = 0.3, keep: float = 0.6,
                             extra: Mapping[str, torch.nn.Module] | None = None, new_tokens: int = 8,
                             budget_s: float | None = 20.0, threads: int | None = None) -> pd.DataFrame:
    """Decode speed of ``model`` dense, structurally pruned (``sparsity`` of the block parameters as MLP
    channels, and as one KV group per layer plus channels), factorized (``keep`` of the parameters: a
    :func:`lowrank_twin`) and any ``extra`` models that store the dense shapes (e.g. a pruned model with its
    zeros), measured in one run (:func:`decode_speeds`) next to the roofline's prediction on ``device`` for the
    same context (:func:`predict_pass`). Adds ``predicted_s`` and ``predicted_speedup``. Introduced in Chapter 5.
    """
    from ..analyzer.sparsity import pruned_spec
    from .structured import plan_for_sparsity, structured_prune

    spec = model_spec(model)
    mlp = plan_for_sparsity(model.config, sparsity)
    kv = plan_for_sparsity(model.config, sparsity, kv_groups=1)
    pct = f"{100 * sparsity:g}%"
    models = {"dense": (model, spec, None),
              f"structured {pct} (MLP)": (structured_prune(model, mlp)[0], pruned_spec(spec, 0, mlp.mlp_channels), None),
              f"structured {pct} (KV + MLP)": (structured_prune(model, kv)[0], pruned_spec(spec, 1, kv.mlp_channels), None),
              f"low rank, {100 * keep:g}% of parameters": (lowrank_twin(model, keep), spec, WeightForm("lowrank", keep=keep))}
    for label, m in (extra or {}).items():
        models[label] = (m, spec, None)
    speeds = decode_speeds({k: v[0] for k, v in models.items()}, prompt, new_tokens=new_tokens, budget_s=budget_s,
                           threads=threads)
    context = len(prompt) + new_tokens // 2
    pred = {k: predict_pass(s_, device, f, seq_len=context)["time_s"] for k, (_, s_, f) in models.items()}
    speeds["predicted_s"] = speeds["model"].map(pred)
    speeds["predicted_speedup"] = speeds["predicted_s"].iloc[0] / speeds["predicted_s"]
    return speeds
