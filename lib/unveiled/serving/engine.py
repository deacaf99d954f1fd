"""A small real serving engine: continuous batching with the book's Decoder on a paged KV pool, on the CPU.

The simulator of :mod:`.simulator` predicts; this engine runs. It serves a workload with the *same* scheduler
(:mod:`.scheduler`): every step, the scheduler picks decodes and prefill chunks, the engine packs all their
tokens into one sequence (``[1, T]``: vLLM's flattened batch, no padding), runs the linear layers, norms and MLP
of :class:`~unveiled.models.Decoder` on all of them at once, writes each token's key and value into its slot of
the paged pool (block table from :class:`~unveiled.kvcache.blocks.BlockManager`), and runs attention per
sequence over the keys gathered through its table (:func:`~unveiled.kvcache.paged.gather_kv`) [Kwon et al.
2023; Yu et al. 2022]. Decoding is greedy, so each request's tokens must be exactly those of plain generation
(:func:`unveiled.generation.generate`), whatever else shares its steps.

The engine's clock is the sum of its measured step times (``clock="thread"``: CPU time of the one thread it
runs on, which a busy shared machine disturbs least); arrivals are checked against it. :func:`profile_engine`
times steps of chosen shapes to fit a :class:`~unveiled.serving.costs.LinearStepCost`, the measured cost table
that drives the simulator in the comparison of Chapter 9.
"""

from __future__ import annotations

import gc
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .._validate import check_choice, check_int
from ..kvcache.blocks import BlockManager
from ..kvcache.paged import gather_kv
from ..models import Decoder
from ..threads import torch_threads
from .costs import StepShape, step_features
from .metrics import request_metrics
from .scheduler import Request, Scheduler, SchedulerConfig, Step, drive
from .workload import check_workload

__all__ = ["CLOCKS", "EngineResult", "PagedKVPool", "ServingEngine", "profile_engine", "serve", "text_prompts"]

CLOCKS = ("thread", "wall")


class PagedKVPool:
    """Key and value tensors of every layer, ``[layers, num_blocks, block_size, K, d]``, addressed by the
    block tables of a :class:`~unveiled.kvcache.blocks.BlockManager` (slot ``table[t // B] · B + t % B`` holds
    token ``t``). Introduced in Chapter 9."""

    def __init__(self, model: Decoder, num_blocks: int, block_size: int) -> None:
        cfg = model.config
        shape = (cfg.num_layers, num_blocks, block_size, cfg.num_kv_heads, cfg.head_dim)
        dtype = next(model.parameters()).dtype
        self.k = torch.zeros(shape, dtype=dtype)
        self.v = torch.zeros(shape, dtype=dtype)
        self.block_size = block_size

    def slots(self, table: Sequence[int], start: int, n: int) -> list[int]:
        """Flat slot indices of tokens ``start .. start + n - 1`` of a sequence with this block table."""
        bs = self.block_size
        return [table[t // bs] * bs + t % bs for t in range(start, start + n)]


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], dim=-1) * sin


def _causal(q: int, n_keys: int) -> torch.Tensor:
    """Boolean ``[q, n_keys]`` mask: query ``i`` (the ``n_keys - q + i``-th token) sees keys up to itself."""
    return torch.arange(n_keys)[None, :] <= torch.arange(q)[:, None] + (n_keys - q)


class ServingEngine:
    """Runs scheduler steps with a real :class:`~unveiled.models.Decoder` (see the module docstring).

    ``step(step, manager, tokens)`` runs one planned step: ``tokens[rid]`` is request ``rid``'s token ids so
    far (prompt, then the tokens generated); returns ``{rid: next token}`` for the requests that sample.
    Introduced in Chapter 9.
    """

    def __init__(self, model: Decoder, num_blocks: int, block_size: int = 16) -> None:
        if not isinstance(model, Decoder):
            raise TypeError(f"model must be a Decoder, got {type(model).__name__}")
        self.model = model.eval()
        self.pool = PagedKVPool(model, check_int("num_blocks", num_blocks), check_int("block_size", block_size))
        cfg = model.config
        self.H, self.K, self.d = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim

    @torch.inference_mode()
    def forward(self, segments: Sequence[tuple[Sequence[int], int, Sequence[int]]]) -> torch.Tensor:
        """Logits of the last token of each segment ``(token ids, first position, block table)``: the segment's
        tokens are new, the positions before it are cached. All segments' tokens run through the linear
        layers together; attention is per segment."""
        m, pool = self.model, self.pool
        H, K, d = self.H, self.K, self.d
        ids = torch.tensor([t for toks, _, _ in segments for t in toks], dtype=torch.long)
        pos = torch.tensor([p0 + i for toks, p0, _ in segments for i in range(len(toks))], dtype=torch.long)
        slots = torch.tensor([s for toks, p0, table in segments for s in pool.slots(table, p0, len(toks))],
                             dtype=torch.long)
        spans = []
        start = 0
        for toks, p0, table in segments:
            spans.append((start, len(toks), p0 + len(toks), table))
            start += len(toks)
        T = len(ids)
        x = m.embed_tokens(ids)[None]  # [1, T, h]
        cos, sin = m.rope.tables(pos, x)
        rep = H // K
        for li, block in enumerate(m.layers):
            attn = block.self_attn
            h = block.input_layernorm(x)
            q = _rotate(attn.q_proj(h).view(T, H, d).transpose(0, 1), cos, sin)  # [H, T, d]
            k = _rotate(attn.k_proj(h).view(T, K, d).transpose(0, 1), cos, sin)  # [K, T, d]
            v = attn.v_proj(h).view(T, K, d)
            kp = pool.k[li].view(-1, K, d)
            vp = pool.v[li].view(-1, K, d)
            kp[slots] = k.transpose(0, 1)
            vp[slots] = v
            outs = []
            for s0, n, length, table in spans:
                keys = gather_kv(pool.k[li], table, length).transpose(0, 1)[None]  # [1, K, L, d]
                vals = gather_kv(pool.v[li], table, length).transpose(0, 1)[None]
                if rep > 1:
                    keys = keys.repeat_interleave(rep, dim=1)
                    vals = vals.repeat_interleave(rep, dim=1)
                qs = q[None, :, s0:s0 + n]  # [1, H, n, d]
                if n == 1:
                    o = F.scaled_dot_product_attention(qs, keys, vals)
                elif n == length:
                    o = F.scaled_dot_product_attention(qs, keys, vals, is_causal=True)
                else:
                    o = F.scaled_dot_product_attention(qs, keys, vals, attn_mask=_causal(n, length))
                outs.append(o[0].transpose(0, 1).reshape(n, H * d))
            a = torch.cat(outs)[None] if len(outs) > 1 else outs[0][None]
            x = x + attn.o_proj(a)
            x = x + block.mlp(block.post_attention_layernorm(x))
        last = torch.tensor([s0 + n - 1 for s0, n, _, _ in spans])
        return m.head(x[0, last])

    def step(self, step: Step, manager: BlockManager, tokens: Mapping[int, list[int]]) -> dict[int, int]:
        """Run one scheduled step; returns the greedy next token of every request that samples in it."""
        segments, sampling = [], []
        for r in step.decode:  # its newest token is not cached yet
            segments.append(([tokens[r.rid][r.ctx]], r.ctx, manager.block_table(r.rid)))
            sampling.append(r.rid)
        for r, q in step.chunks:
            segments.append((tokens[r.rid][r.ctx:r.ctx + q], r.ctx, manager.block_table(r.rid)))
            sampling.append(r.rid if r.ctx + q == r.target else None)
        logits = self.forward(segments)
        nxt = logits.argmax(-1).tolist()
        return {rid: t for rid, t in zip(sampling, nxt, strict=True) if rid is not None}


@dataclass
class EngineResult:
    """A real serving run: the per-request and per-step tables (as :class:`~unveiled.serving.ServingResult`'s,
    with measured step times) and the tokens each request generated. Introduced in Chapter 9."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    config: SchedulerConfig
    generated: dict[int, list[int]]
    clock: str


def _clock(clock: str):
    check_choice("clock", clock, CLOCKS)
    return time.thread_time if clock == "thread" else time.perf_counter


def serve(model: Decoder, workload: pd.DataFrame, prompts: Mapping[int, Sequence[int]], policy: str = "continuous",
          *, num_blocks: int = 256, block_size: int = 16, max_batch: int = 16, max_batched_tokens: int | None = None,
          clock: str = "thread", threads: int = 1, step_repeats: int = 1) -> EngineResult:
    """Serve ``workload`` for real: the scheduler of :mod:`.scheduler` plans each step, :class:`ServingEngine`
    runs it with ``model``, and the clock advances by each step's measured time.

    ``prompts[rid]`` are the token ids of request ``rid`` (``prompt_len`` of them). Every request generates its
    ``output_len`` tokens greedily (no early stop). ``clock="thread"`` times steps in CPU time of the one thread
    the model runs on (``threads`` must be 1); ``"wall"`` in elapsed time. With ``step_repeats > 1`` every step
    is run that many times and its time is the fastest run (a step is idempotent: it writes the same keys and
    values to the same slots and samples the same tokens), which filters out the time other processes steal
    on a shared machine. Python's garbage collector is paused during the run. Swap preemption is not supported
    (recompute is). Introduced in Chapter 9.
    """
    workload = check_workload(workload, max_context=model.config.max_seq_len)
    now = _clock(clock)
    if clock == "thread" and threads != 1:
        raise ValueError("clock='thread' measures one thread's CPU time: use threads=1")
    tokens: dict[int, list[int]] = {}
    for rid, plen in zip(workload.request_id, workload.prompt_len, strict=True):
        ids = [int(t) for t in prompts[int(rid)]]
        if len(ids) != plen:
            raise ValueError(f"request {rid}: {len(ids)} prompt tokens given, the workload says {plen}")
        tokens[int(rid)] = ids
    start = {rid: len(t) for rid, t in tokens.items()}
    config = SchedulerConfig(policy=policy, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
                             max_batched_tokens=max_batched_tokens)
    scheduler = Scheduler(config)
    engine = ServingEngine(model, num_blocks, block_size)

    repeats = check_int("step_repeats", step_repeats)

    def execute(step: Step, _now: float) -> float:
        dt = math.inf
        for _ in range(repeats):
            t0 = now()
            out = engine.step(step, scheduler.manager, tokens)
            dt = min(dt, now() - t0)
        for rid, t in out.items():
            tokens[rid].append(t)
        return dt

    gc.collect()
    gc.disable()
    try:
        with torch_threads(threads):
            requests, steps = drive(scheduler, workload, execute)
    finally:
        gc.enable()
    generated = {rid: t[start[rid]:] for rid, t in tokens.items()}
    return EngineResult(request_metrics(requests), steps, config, generated, clock)


def text_prompts(workload: pd.DataFrame, token_ids: Sequence[int], seed: int = 0) -> dict[int, list[int]]:
    """A prompt of each request's ``prompt_len`` tokens cut from ``token_ids`` (a tokenized text) at seeded
    offsets: real text for a real engine. Introduced in Chapter 9."""
    ids = list(token_ids)
    rng = np.random.default_rng(seed)
    out = {}
    for rid, n in zip(workload.request_id, workload.prompt_len, strict=True):
        if n > len(ids):
            raise ValueError(f"request {rid} needs {n} prompt tokens, the text has {len(ids)}")
        s = int(rng.integers(0, len(ids) - n + 1))
        out[int(rid)] = ids[s:s + n]
    return out


def profile_engine(model: Decoder, shapes: Sequence[StepShape], *, repeats: int = 5, block_size: int = 16,
                   clock: str = "thread", threads: int = 1, seed: int = 0) -> pd.DataFrame:
    """Time engine steps of the given shapes (decodes with their total context, prefill chunks ``(q, k)``) on
    random tokens; returns one row per shape with the :data:`~unveiled.serving.costs.FEATURES`, the best
    (``time_s``) and median (``median_s``) of ``repeats`` timed runs after one warm-up. Decode contexts are
    split evenly over the decoding sequences. This is the measured cost table a
    :class:`~unveiled.serving.costs.LinearStepCost` is fitted to. Introduced in Chapter 9."""
    now = _clock(clock)
    check_int("repeats", repeats)
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    rows = []
    with torch_threads(threads):
        for shape in shapes:
            lens = []
            if shape.decode_seqs:
                base, extra = divmod(shape.decode_context, shape.decode_seqs)
                lens = [base + (i < extra) for i in range(shape.decode_seqs)]
            need = sum(math.ceil(n / block_size) for n in lens) + sum(math.ceil(k / block_size) for _, k in shape.chunks)
            manager = BlockManager(block_size, need)
            engine = ServingEngine(model, need, block_size)
            step = Step([], [], shape)
            toks: dict[int, list[int]] = {}
            rid = 0
            for n in lens:  # a decoding request: n - 1 cached tokens, its newest token to run
                r = Request(rid, 0.0, n - 1, 2)
                r.ctx = r.target = n - 1
                manager.add(rid, n)
                step.decode.append(r)
                toks[rid] = torch.randint(0, vocab, (n,), generator=gen).tolist()
                rid += 1
            for q, k in shape.chunks:
                r = Request(rid, 0.0, k, 1)
                r.ctx = k - q
                manager.add(rid, k)
                step.chunks.append((r, q))
                toks[rid] = torch.randint(0, vocab, (k,), generator=gen).tolist()
                rid += 1
            times = []
            for i in range(repeats + 1):
                t0 = now()
                engine.step(step, manager, toks)
                if i:
                    times.append(now() - t0)
            rows.append(step_features(shape) | {"decode_seqs": shape.decode_seqs, "decode_context": shape.decode_context,
                                                "chunks": str(list(shape.chunks)), "time_s": float(np.min(times)),
                                                "median_s": float(np.median(times))})
    return pd.DataFrame(rows)
