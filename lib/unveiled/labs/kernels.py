"""Lab checks of Chapter 8 (kernels): FlashAttention's online-softmax update and Flash-Decoding's merge.

Lab 8.1: the reader writes ``online_softmax_update(m, denom, acc, s, v) -> (m, denom, acc)``, the step that
folds one key tile's scores ``s`` and values ``v`` into the running maximum, running sum and unnormalised
output. The check runs it on fixed tiles (one tile from the empty state, a tile that raises the maximum, a
tile that does not, huge scores, a fully masked tile) and then inside the library's tile loop on a real
attention problem, and names the classic mistakes (old state not rescaled, the rescale factor inverted,
the maximum not carried, no maximum subtracted).

Lab 8.2: ``merge_partials(outs, lses) -> (out, lse)``, the log-sum-exp merge of split-K partial results. The
check compares with the library on fixed chunks, empty chunks (``lse = -inf``), huge log-sum-exps and a
Flash-Decoding step over a real cache, and names the classic mistakes (averaging the outputs, weights not
normalised, the log-sum-exp added instead of combined). Introduced in Chapter 8.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..kernels.attention import _finish, merge_partials, online_softmax_update, tile_schedule
from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_merge_partials", "check_online_softmax_update"]

# The chapter sections the hints point at (headings without their numbers).
_FLASH = "FlashAttention, step by step"
_DECODING = "Flash-Decoding"


def _tensor(x) -> torch.Tensor | None:
    try:
        return torch.as_tensor(x, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError):
        return None


def _close(got: torch.Tensor, want: torch.Tensor, atol: float) -> bool:
    if got.shape != want.shape:
        return False
    both_inf = torch.isinf(got) & torch.isinf(want) & (torch.sign(got) == torch.sign(want))
    return bool(((got - want).abs() <= atol)[~both_inf].all()) and not bool(torch.isnan(got).any())


def _triple(result) -> tuple | str:
    if not isinstance(result, (tuple, list)) or len(result) != 3:
        return f"return the three updated tensors (m, denom, acc), got {type(result).__name__}"
    parts = [_tensor(r) for r in result]
    if any(p is None for p in parts):
        return "m, denom and acc must be tensors"
    return tuple(parts)


# ---- Lab 8.1: the online-softmax update -------------------------------------------------------------------------
def _state(rows: int, dv: int, dtype=torch.float64):
    return (torch.full((rows,), -math.inf, dtype=dtype), torch.zeros(rows, dtype=dtype), torch.zeros(rows, dv, dtype=dtype))


def _mistakes_update(m, denom, acc, s, v) -> dict[str, tuple]:
    """Classic wrong updates, to name the one a result matches."""
    m_new = torch.maximum(m, s.amax(-1))
    ref = torch.where(torch.isinf(m_new), torch.zeros_like(m_new), m_new)
    p = torch.exp(s - ref[..., None])
    alpha = torch.exp(m - ref)
    return {
        "the old sum and output were not rescaled by exp(m_old − m_new)": (m_new, denom + p.sum(-1), acc + p @ v),
        "the rescale factor is inverted (exp(m_new − m_old) instead of exp(m_old − m_new))":
            (m_new, torch.exp(ref - torch.where(torch.isinf(m), ref, m)) * denom + p.sum(-1),
             torch.exp(ref - torch.where(torch.isinf(m), ref, m))[..., None] * acc + p @ v),
        "only the output was rescaled, not the running sum": (m_new, denom + p.sum(-1), alpha[..., None] * acc + p @ v),
        "only the running sum was rescaled, not the output": (m_new, alpha * denom + p.sum(-1), acc + p @ v),
        "the scores were not measured from the maximum (exp(s) instead of exp(s − m))":
            (m_new, denom + torch.exp(s).sum(-1), acc + torch.exp(s) @ v),
    }


def _update_judge(state: tuple, s: torch.Tensor, v: torch.Tensor, atol: float = 1e-9) -> Callable:
    want = online_softmax_update(*state, s, v)
    mistakes = _mistakes_update(*state, s, v)

    def judge(result) -> str | None:
        got = _triple(result)
        if isinstance(got, str):
            return got
        if any(torch.isnan(g).any() for g in got):
            return "the result contains NaN (a row whose scores are all -inf, or exp of a huge number?)"
        if all(_close(g, w, atol) for g, w in zip(got, want, strict=True)):
            return None
        for what, wrong in mistakes.items():
            same = all(_close(a, b, atol) for a, b in zip(wrong, want, strict=True))
            if not same and all(_close(g, w, atol) for g, w in zip(got, wrong, strict=True)):
                return f"it matches a known mistake: {what}"
        names = ("m", "denom", "acc")
        bad = [n for n, g, w in zip(names, got, want, strict=True) if not _close(g, w, atol)]
        return f"{', '.join(bad)} differ{'s' if len(bad) == 1 else ''} from the right update"

    return judge


def _show_triple(result) -> str:
    got = _triple(result)
    if isinstance(got, str):
        return got
    return "; ".join(f"{n} = {g.numpy().round(4).tolist()}" for n, g in zip(("m", "denom", "acc"), got, strict=True))


def _flash_with(update: Callable, q, k, v, block_q: int, block_k: int, causal: bool) -> torch.Tensor:
    """The library's tile loop (one head) with the reader's update in place of the library's."""
    Nq, Nk, dv = q.shape[0], k.shape[0], v.shape[1]
    out = torch.empty(Nq, dv, dtype=q.dtype)
    scale = 1.0 / math.sqrt(q.shape[1])
    for rows, tiles in tile_schedule(Nq, Nk, block_q, block_k, causal):
        m, denom, acc = _state(len(rows), dv)
        for cols, needs_mask in tiles:
            s = (q[rows.start:rows.stop] * scale) @ k[cols.start:cols.stop].T
            if needs_mask:
                visible = torch.arange(cols.start, cols.stop)[None, :] <= torch.arange(rows.start, rows.stop)[:, None] + Nk - Nq
                s = s.masked_fill(~visible, -math.inf)
            result = update(m, denom, acc, s, v[cols.start:cols.stop])
            got = _triple(result)
            if isinstance(got, str):
                raise TypeError(got)
            m, denom, acc = got
        out[rows.start:rows.stop] = _finish(m, denom, acc)[0]
    return out


class _Runner:
    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, mode: str, *args):
        if mode == "step":
            return self.fn(*(a.clone() for a in args))
        if mode == "two":
            state, (s1, v1), (s2, v2) = args
            got = _triple(self.fn(*(a.clone() for a in state), s1.clone(), v1.clone()))
            if isinstance(got, str):
                return got
            return self.fn(*got, s2.clone(), v2.clone())
        return _flash_with(self.fn, *args)


def _attention_judge(q, k, v, causal: bool) -> Callable:
    mask = None
    if causal:
        mask = torch.arange(k.shape[0])[None, :] <= torch.arange(q.shape[0])[:, None] + k.shape[0] - q.shape[0]
    want = F.scaled_dot_product_attention(q[None], k[None], v[None], attn_mask=mask)[0]

    def judge(result) -> str | None:
        got = _tensor(result)
        if got is None or got.shape != want.shape:
            return "the tile loop did not produce an attention output of the right shape"
        if torch.isnan(got).any():
            return "the attention output contains NaN"
        err = float((got - want).abs().max())
        return None if err <= 1e-9 else f"the attention output differs from PyTorch's by up to {err:.3g}"

    return judge


def check_online_softmax_update(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(m, denom, acc, s, v) -> (m, denom, acc)``, FlashAttention's online-softmax step.

    ``m`` ``[rows]`` running maximum, ``denom`` ``[rows]`` running sum of ``exp(score − m)``, ``acc``
    ``[rows, dv]`` running unnormalised output; ``s`` ``[rows, cols]`` the tile's scores (masked ones
    ``-inf``), ``v`` ``[cols, dv]`` its values. Introduced in Chapter 8.
    """
    if not callable(fn):
        raise TypeError(f"Lab 8.1: pass your function itself (e.g. check(my_fn)), got {type(fn).__name__}")
    g = torch.Generator().manual_seed(8)
    s1, v1 = torch.randn(3, 4, generator=g, dtype=torch.float64), torch.randn(4, 2, generator=g, dtype=torch.float64)
    empty = _state(3, 2)
    after1 = online_softmax_update(*empty, s1, v1)
    s_up = s1 + 3.0  # every score above the running maximum: the old state must be rescaled
    s_down = s1 - 3.0  # below it: the maximum stays
    huge = s1 * 400.0  # exp(800) overflows unless the maximum is subtracted
    masked = torch.tensor([[-math.inf, -math.inf], [0.5, -math.inf]], dtype=torch.float64)
    v_m = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    q = torch.randn(13, 8, generator=g, dtype=torch.float64)
    k = torch.randn(13, 8, generator=g, dtype=torch.float64)
    vv = torch.randn(13, 5, generator=g, dtype=torch.float64)
    state_in = "m, denom, acc after one tile of random scores (3 rows, 4 columns, dv = 2)"
    cases = [
        Case("one tile from the empty state", ("step", *empty, s1, v1), judge=_update_judge(empty, s1, v1),
             expected=_show_triple(after1), show_result=_show_triple, section=_FLASH,
             input="m = -inf, denom = 0, acc = 0 (3 rows, dv = 2); s: 3 × 4 random scores; v: 4 × 2",
             hint="From the empty state, acc / denom must be softmax(s) @ v and m the row maxima of s."),
        Case("a second tile that raises the maximum", ("step", *after1, s_up, v1),
             judge=_update_judge(after1, s_up, v1), expected=_show_triple(online_softmax_update(*after1, s_up, v1)),
             show_result=_show_triple, section=_FLASH, input=state_in + "; s = the same scores + 3",
             hint="When the maximum grows, the sum and the output accumulated so far were measured against the "
                  "old maximum: what factor converts them to the new one?"),
        Case("a second tile below the maximum", ("step", *after1, s_down, v1),
             judge=_update_judge(after1, s_down, v1),
             expected=_show_triple(online_softmax_update(*after1, s_down, v1)), show_result=_show_triple,
             section=_FLASH, input=state_in + "; s = the same scores − 3",
             hint="Which of m, denom and acc change when no new score exceeds the running maximum?"),
        Case("huge scores do not overflow", ("step", *empty, huge, v1), judge=_update_judge(empty, huge, v1),
             expected=_show_triple(online_softmax_update(*empty, huge, v1)), show_result=_show_triple,
             section=_FLASH, input="the empty state; s = random scores × 400 (up to about ±800)",
             hint="exp(800) is infinite in floating point: what is subtracted from the scores before exp?"),
        Case("a fully masked row stays empty, without NaN", ("step", *_state(2, 2), masked, v_m),
             judge=_update_judge(_state(2, 2), masked, v_m),
             expected=_show_triple(online_softmax_update(*_state(2, 2), masked, v_m)), show_result=_show_triple,
             section=_FLASH, input="the empty state (2 rows); s = [[-inf, -inf], [0.5, -inf]]; v = [[1, 2], [3, 4]]",
             hint="exp(-inf − (-inf)) is NaN: a row that has seen no key yet must keep m = -inf and zeros."),
        Case("in the tile loop: causal attention, tiles of 5 × 4", ("loop", q, k, vv, 5, 4, True),
             judge=_attention_judge(q, k, vv, True), expected="PyTorch's attention output (13 × 5) to 1e-9",
             show_result=lambda r: f"a tensor of shape {tuple(torch.as_tensor(r).shape)}", section=_FLASH,
             input="13 queries and keys, head_dim 8, dv 5, causal; query tiles of 5 rows, key tiles of 4",
             hint="Run your update on two tiles by hand and compare acc / denom with softmax over both tiles."),
    ]
    return run_cases(_Runner(fn), cases, "Lab 8.1: the online-softmax update", raise_on_fail=raise_on_fail, show=show)


# ---- Lab 8.2: the split-K merge ----------------------------------------------------------------------------------
def _pair(result) -> tuple | str:
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        return f"return (out, lse), got {type(result).__name__}"
    parts = [_tensor(r) for r in result]
    if any(p is None for p in parts):
        return "out and lse must be tensors"
    return tuple(parts)


def _show_pair(result) -> str:
    got = _pair(result)
    if isinstance(got, str):
        return got
    return f"out = {got[0].numpy().round(4).tolist()}; lse = {got[1].numpy().round(4).tolist()}"


def _merge_judge(outs: torch.Tensor, lses: torch.Tensor, atol: float = 1e-9) -> Callable:
    want = merge_partials(outs, lses)
    finite = torch.where(torch.isinf(lses), torch.full_like(lses, -1e300), lses)
    w = torch.exp(finite - finite.max(0).values)
    mistakes = {
        "the partial outputs were averaged, ignoring their log-sum-exps": (outs.mean(0), want[1]),
        "the weights exp(lse_s) were not normalised by their sum": ((torch.exp(finite)[..., None] * outs).sum(0), want[1]),
        "the merged lse is the sum of the chunks' lse, not their log-sum-exp": (want[0], lses.sum(0)),
        "the merged lse is the largest chunk lse, not their log-sum-exp": (want[0], lses.max(0).values),
        "the weights are relative to the largest chunk but not divided by their sum":
            ((w[..., None] * outs).sum(0), want[1]),
    }

    def judge(result) -> str | None:
        got = _pair(result)
        if isinstance(got, str):
            return got
        if any(torch.isnan(g).any() for g in got):
            return "the result contains NaN (an empty chunk's lse is -inf; exp(-inf − (-inf)) is NaN)"
        if all(_close(g, x, atol) for g, x in zip(got, want, strict=True)):
            return None
        for what, wrong in mistakes.items():
            same = all(_close(a, b, atol) for a, b in zip(wrong, want, strict=True))
            if not same and all(_close(g, x, atol) for g, x in zip(got, wrong, strict=True)):
                return f"it matches a known mistake: {what}"
        bad = [n for n, g, x in zip(("out", "lse"), got, want, strict=True) if not _close(g, x, atol)]
        return f"{' and '.join(bad)} differ{'s' if len(bad) == 1 else ''} from the right merge"

    return judge


def _decode_with(merge: Callable, q, k, v, splits: int):
    """Flash-Decoding over one head with the reader's merge."""
    scale = 1.0 / math.sqrt(q.shape[-1])
    outs, lses = [], []
    for idx in torch.arange(k.shape[0]).tensor_split(splits):
        s = (q * scale) @ k[idx].T
        lses.append(torch.logsumexp(s, -1) if idx.numel() else torch.full((q.shape[0],), -math.inf, dtype=q.dtype))
        outs.append(torch.softmax(s, -1) @ v[idx] if idx.numel() else torch.zeros(q.shape[0], v.shape[1], dtype=q.dtype))
    got = _pair(merge(torch.stack(outs), torch.stack(lses)))
    if isinstance(got, str):
        raise TypeError(got)
    return got[0]


class _MergeRunner:
    def __init__(self, fn: Callable):
        self.fn = fn

    def __call__(self, mode: str, *args):
        if mode == "merge":
            return self.fn(*(a.clone() for a in args))
        return _decode_with(self.fn, *args)


def check_merge_partials(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``fn(outs, lses) -> (out, lse)``, the log-sum-exp merge of split-K partial attention results.

    ``outs`` ``[S, rows, dv]`` are the chunks' normalised outputs and ``lses`` ``[S, rows]`` their log-sum-exps
    (``-inf`` for an empty chunk). Introduced in Chapter 8.
    """
    if not callable(fn):
        raise TypeError(f"Lab 8.2: pass your function itself (e.g. check(my_fn)), got {type(fn).__name__}")
    g = torch.Generator().manual_seed(82)
    outs = torch.randn(2, 3, 2, generator=g, dtype=torch.float64)
    lses = torch.tensor([[0.5, 2.0, -1.0], [1.5, 0.0, -1.0]], dtype=torch.float64)
    outs3 = torch.randn(3, 3, 2, generator=g, dtype=torch.float64)
    inf = math.inf
    lses_empty = torch.tensor([[0.3, -inf, -inf], [-inf, -inf, -inf], [1.1, 0.7, -inf]], dtype=torch.float64)
    huge = torch.tensor([[800.0, -700.0], [801.0, -701.0]], dtype=torch.float64)
    outs_h = torch.randn(2, 2, 2, generator=g, dtype=torch.float64)
    q = torch.randn(2, 8, generator=g, dtype=torch.float64)
    k = torch.randn(11, 8, generator=g, dtype=torch.float64)
    v = torch.randn(11, 3, generator=g, dtype=torch.float64)
    want_attn = F.scaled_dot_product_attention(q[None], k[None], v[None])[0]

    def attn_judge(result) -> str | None:
        got = _tensor(result)
        if got is None or got.shape != want_attn.shape or torch.isnan(got).any():
            return "the merged output is not an attention output of the right shape (or contains NaN)"
        err = float((got - want_attn).abs().max())
        return None if err <= 1e-9 else f"the merged output differs from attention over all keys by up to {err:.3g}"

    cases = [
        Case("two chunks", ("merge", outs, lses), judge=_merge_judge(outs, lses),
             expected=_show_pair(merge_partials(outs, lses)), show_result=_show_pair, section=_DECODING,
             input="outs: 2 chunks × 3 rows × 2 values (random); lses = [[0.5, 2, -1], [1.5, 0, -1]]",
             hint="Each chunk's output is normalised by its own sum exp(lse_s): rebuild the total sum first."),
        Case("empty chunks count for nothing", ("merge", outs3, lses_empty), judge=_merge_judge(outs3, lses_empty),
             expected=_show_pair(merge_partials(outs3, lses_empty)), show_result=_show_pair, section=_DECODING,
             input="3 chunks × 3 rows; lses = [[0.3, -inf, -inf], [-inf, -inf, -inf], [1.1, 0.7, -inf]] (chunk 2 "
                   "saw no key; no chunk saw a key for row 3: its output is 0 and its lse -inf)",
             hint="A chunk with lse = -inf has weight exp(-inf) = 0; make sure no -inf − (-inf) appears."),
        Case("huge log-sum-exps do not overflow", ("merge", outs_h, huge), judge=_merge_judge(outs_h, huge),
             expected=_show_pair(merge_partials(outs_h, huge)), show_result=_show_pair, section=_DECODING,
             input="2 chunks × 2 rows; lses = [[800, -700], [801, -701]]",
             hint="exp(800) overflows: which common value can you subtract from every lse before exp?"),
        Case("Flash-Decoding: 4 chunks of a real cache", ("decode", q, k, v, 4), judge=attn_judge,
             expected="attention over all 11 keys (2 queries, dv = 3) to 1e-9",
             show_result=lambda r: f"a tensor of shape {tuple(torch.as_tensor(r).shape)}", section=_DECODING,
             input="2 queries, 11 cached keys and values (head_dim 8, dv 3) split into chunks of 3, 3, 3 and 2",
             hint="Merging all chunks must give the softmax over all keys: write out softmax's denominator "
                  "as a sum over chunks."),
    ]
    return run_cases(_MergeRunner(fn), cases, "Lab 8.2: the split-K merge", raise_on_fail=raise_on_fail, show=show)


CHECKS: dict[str, Callable] = {
    "online_softmax_update": check_online_softmax_update,
    "merge_partials": check_merge_partials,
}
