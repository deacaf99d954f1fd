"""Who runs in the next step: static, continuous (iteration-level) and chunked-prefill scheduling on paged memory.

A serving engine repeats one loop: pick the work of the next step, run it, hand out the tokens. The *scheduler*
picks, under two limits: the sequences and tokens one step may carry, and the KV memory, a pool of blocks kept by
:class:`~unveiled.kvcache.blocks.BlockManager` (the paged memory of Chapter 6, one implementation for the book).

* ``"static"``: request-level batching (FasterTransformer, ORCA's baseline [Yu et al. 2022]). A batch forms
  only when the previous one is done; its prompts are padded to the longest, and every row keeps decoding
  (padded) until the batch's longest output ends. New arrivals wait for the whole batch.
* ``"continuous"``: iteration-level scheduling as in ORCA [Yu et al. 2022] and vLLM [Kwon et al. 2023]. Every
  step runs one token of each running request and admits waiting ones as soon as there is room; an admitted
  prompt is prefilled whole, in the same step as the others' decodes (ORCA's selective batching).
* ``"chunked"``: chunked prefill with a token budget per step, as in SARATHI-Serve [Agrawal et al. 2024]: the
  decodes go first, then prompts fill the rest of the budget in chunks, so no step is longer than the budget's
  worth of tokens (no decode stalls behind a long prompt).

Admission control: a waiting request is admitted (first come, first served) only if the blocks for its
prompt fit, keeping a small watermark free; decodes grow block by block. When a decode needs a block and none
is free, the most recently admitted request is *preempted*: its blocks are freed and it is recomputed later
(``"recompute"``) or they are copied to a host pool and back (``"swap"``), as vLLM does. With prefix caching
a prompt reuses the blocks of a live request with the same leading tokens and skips computing them.
The simulator (:func:`~unveiled.serving.simulate`) and the real engine (:mod:`unveiled.serving.engine`) share
this scheduler. Introduced in Chapter 9.
"""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field

import pandas as pd

from .._validate import check_choice, check_int
from ..kvcache.blocks import BlockManager, OutOfBlocksError
from .costs import StepShape

__all__ = ["POLICIES", "PREEMPTION", "REQUEST_COLUMNS", "STEP_COLUMNS", "AdmissionView", "Request", "Scheduler",
           "SchedulerConfig", "Step", "can_admit", "drive"]

POLICIES = ("static", "continuous", "chunked")
PREEMPTION = ("recompute", "swap")
#: The token budget per step of the chunked policy when none is given (SARATHI-Serve's order of magnitude).
DEFAULT_CHUNK_BUDGET = 512


@dataclass(frozen=True)
class SchedulerConfig:
    """Limits and rules of a scheduler.

    ``max_batch``: sequences per step (vLLM's ``max_num_seqs``). ``max_batched_tokens``: tokens per step
    (``None``: unlimited, or 512 for ``"chunked"``). ``num_blocks`` blocks of ``block_size`` tokens hold the
    KV cache; ``watermark`` is the fraction of them admission keeps free for decodes to grow into.
    ``preemption`` is ``"recompute"`` or ``"swap"`` (``host_blocks`` blocks of host memory; when they are full
    a swap falls back to recomputation). ``prefix_caching`` shares the blocks of common prompt prefixes.
    Introduced in Chapter 9.
    """

    policy: str = "continuous"
    num_blocks: int = 4096
    block_size: int = 16
    max_batch: int = 256
    max_batched_tokens: int | None = None
    preemption: str = "recompute"
    host_blocks: int = 0
    prefix_caching: bool = False
    watermark: float = 0.01

    def __post_init__(self) -> None:
        check_choice("policy", self.policy, POLICIES)
        check_choice("preemption", self.preemption, PREEMPTION)
        check_int("num_blocks", self.num_blocks)
        check_int("block_size", self.block_size)
        check_int("max_batch", self.max_batch)
        check_int("host_blocks", self.host_blocks, minimum=0)
        if self.max_batched_tokens is not None:
            check_int("max_batched_tokens", self.max_batched_tokens)
        if not 0 <= self.watermark < 1:
            raise ValueError(f"watermark must be a fraction in [0, 1), got {self.watermark}")
        if self.policy == "chunked" and self.token_budget < self.max_batch:
            raise ValueError(f"chunked prefill needs max_batched_tokens ({self.token_budget}) >= max_batch "
                             f"({self.max_batch}): every running sequence's decode must fit one step")
        if self.preemption == "swap" and self.host_blocks == 0:
            raise ValueError("preemption='swap' needs host memory to swap to: give host_blocks > 0 "
                             "(simulate(..., swap_space_gb=...))")

    @property
    def token_budget(self) -> int | None:
        """Tokens one step may carry (None: unlimited)."""
        if self.max_batched_tokens is None and self.policy == "chunked":
            return DEFAULT_CHUNK_BUDGET
        return self.max_batched_tokens


class Request:
    """One request's state as the scheduler tracks it (counts only; the engine keeps the token ids).

    ``ctx`` tokens have their keys and values in the cache; ``target`` is how many must be there before the
    next token can be sampled (the prompt, plus the tokens generated before a recompute preemption);
    ``generated`` output tokens exist. Invariant once prefilled: ``ctx == prompt + generated - 1``.
    """

    __slots__ = (
        "admitted_s",
        "arrival",
        "cached_tokens",
        "cap",
        "ctx",
        "finish_s",
        "first_token_s",
        "generated",
        "last_token_s",
        "max_gap_s",
        "mlen",
        "order",
        "output",
        "preemptions",
        "prefix_id",
        "prefix_len",
        "prompt",
        "recomputed_tokens",
        "rid",
        "state",
        "swaps",
        "target",
    )

    def __init__(self, rid: int, arrival: float, prompt: int, output: int, prefix_id: int = -1,
                 prefix_len: int = 0) -> None:
        self.rid, self.arrival, self.prompt, self.output = rid, arrival, prompt, output
        self.prefix_id, self.prefix_len = prefix_id, prefix_len
        self.generated = self.ctx = self.mlen = self.cap = 0
        self.target = prompt
        self.state = "new"
        self.admitted_s = self.first_token_s = self.finish_s = self.last_token_s = math.nan
        self.max_gap_s = 0.0
        self.preemptions = self.swaps = self.cached_tokens = self.recomputed_tokens = 0
        self.order = -1

    def tokens(self, n: int) -> list[int]:
        """Stand-in token ids for the first ``n`` tokens (shared prefix ids, then ids unique to this request),
        so that prefix caching recognises exactly the shared prefixes."""
        p = min(self.prefix_len, n)
        base = (self.prefix_id + 1) << 32
        return list(range(base, base + p)) + list(range(-((self.rid + 1) << 32) + p, -((self.rid + 1) << 32) + n))

    def __repr__(self) -> str:
        return (f"Request({self.rid}, {self.state}, prompt {self.prompt}, generated {self.generated}/{self.output}, "
                f"ctx {self.ctx})")


@dataclass
class Step:
    """The plan of one step: decoding requests, prefill chunks ``(request, tokens)``, its shape for a cost model,
    and what the scheduling did (preemptions, blocks swapped, static-batch padding)."""

    decode: list[Request]
    chunks: list[tuple[Request, int]]
    shape: StepShape
    preempted: int = 0
    swapped_blocks: int = 0
    padded_tokens: int = 0
    finished: list[Request] = field(default_factory=list)


@dataclass(frozen=True)
class AdmissionView:
    """What the admission step sees when it considers the request at the head of the waiting queue.

    ``prompt_tokens``: tokens its prefill must compute (the prompt, plus any tokens generated before a
    recompute preemption, minus prefix-cache hits); ``blocks_needed``: new KV blocks they take;
    ``free_blocks`` of the pool are free and admission keeps ``reserve_blocks`` of them for decodes to grow
    into; ``running`` sequences run (those admitted in this step included), at most ``max_batch``;
    ``tokens_left``: tokens the step may still carry (``inf`` without a budget); ``admitted_this_step``:
    requests already admitted in this step; ``chunked``: prompts may be split into chunks. Introduced in
    Chapter 9.
    """

    prompt_tokens: int
    blocks_needed: int
    free_blocks: int
    reserve_blocks: int
    running: int
    max_batch: int
    tokens_left: float
    admitted_this_step: int
    chunked: bool


def can_admit(v: AdmissionView) -> bool:
    """The admission rule of an iteration-level scheduler (ORCA, vLLM): admit the head of the queue only if a
    sequence slot is free, its prompt's blocks fit while keeping the reserve free, and the step's token budget
    has room: any room for a chunked prefill, the whole prompt otherwise (except for the step's first
    admission, so that a prompt longer than the budget still runs). Requests are admitted first come, first
    served: the scheduler stops at the first refusal. Introduced in Chapter 9."""
    if v.running >= v.max_batch:
        return False
    if v.free_blocks - v.blocks_needed < v.reserve_blocks:
        return False
    if v.chunked:
        return v.tokens_left > 0
    return v.admitted_this_step == 0 or v.prompt_tokens <= v.tokens_left


class Scheduler:
    """The scheduling loop's state: waiting, running and swapped requests on a paged KV pool.

    :meth:`add` queues an arrived request, :meth:`schedule` plans the next step (``None`` when there is
    nothing to run) and :meth:`complete` applies it once it ran: prefill progress, one token per decoding
    request, first-token and finish times, blocks freed. ``window`` caps the keys a decode attends to
    (sliding-window models). ``admission`` replaces the admission rule :func:`can_admit` (a function of an
    :class:`AdmissionView`; Lab 9.1). See the module docstring for the policies. Introduced in Chapter 9.
    """

    def __init__(self, config: SchedulerConfig, window: int | None = None, admission=None) -> None:
        if not isinstance(config, SchedulerConfig):
            raise TypeError(f"config must be a SchedulerConfig, got {type(config).__name__}")
        if admission is not None and not callable(admission):
            raise TypeError(f"admission must be a function of an AdmissionView, got {type(admission).__name__}")
        self.config = config
        self.window = window
        self.admission = can_admit if admission is None else admission
        self.manager = BlockManager(config.block_size, config.num_blocks, prefix_caching=config.prefix_caching,
                                    host_blocks=config.host_blocks)
        self.waiting: deque[Request] = deque()
        self.running: list[Request] = []
        self.swapped: deque[Request] = deque()
        self._counter = 0
        self._reserve = math.ceil(config.watermark * config.num_blocks)
        self._batch_rows = 0  # static batching: rows of the current batch (padding included)
        self._batch_len = 0  # static batching: padded length of the current batch
        self._batch_steps = 0

    # -- queue ------------------------------------------------------------------------------------

    def add(self, r: Request) -> None:
        """Queue a request that has arrived."""
        need = math.ceil((r.prompt + r.output - 1) / self.config.block_size)
        if need > self.config.num_blocks - self._reserve:
            raise ValueError(f"request {r.rid} needs {need} KV blocks at its full length ({r.prompt} + {r.output} "
                             f"tokens) but the pool has {self.config.num_blocks} (watermark {self._reserve}); it "
                             "could never run: give more blocks or shorter requests")
        r.state = "waiting"
        self.waiting.append(r)

    @property
    def idle(self) -> bool:
        return not (self.waiting or self.running or self.swapped)

    # -- memory -----------------------------------------------------------------------------------

    def _blocks(self, n: int) -> int:
        return -(-n // self.config.block_size)

    def _grow(self, r: Request, n: int) -> None:
        """Make room for ``n`` cached tokens of ``r`` (allocating at block boundaries only)."""
        if n > r.cap:
            self.manager.append(r.rid, n - r.mlen)
            r.mlen = n
            r.cap = self._blocks(n) * self.config.block_size

    def _preempt(self, victim: Request) -> int:
        """Preempt ``victim``: swap it out if allowed and possible, else free it for recomputation. Returns the
        blocks swapped out."""
        self.running.remove(victim)
        victim.preemptions += 1
        if self.config.preemption == "swap":
            try:
                pairs = self.manager.swap_out(victim.rid)
            except OutOfBlocksError:
                pass
            else:
                victim.state = "swapped"
                victim.swaps += 1
                self.swapped.append(victim)
                return len(pairs)
        self.manager.free(victim.rid)
        victim.state = "waiting"
        victim.recomputed_tokens += victim.ctx
        victim.ctx = victim.mlen = victim.cap = 0
        victim.target = victim.prompt + victim.generated
        self.waiting.appendleft(victim)
        return 0

    def _admit(self, r: Request, now: float, tokens_left: float = math.inf, admitted: int = 0,
               chunked: bool = False) -> int:
        """Admit ``r`` if the admission rule says so: allocate its prompt blocks and return the prefix-cache
        hits (tokens it need not compute); -1 when it is refused."""
        cached = 0
        tokens = None
        bs = self.config.block_size
        if self.config.prefix_caching:
            tokens = r.tokens(r.target)
            # keep at least one token to compute: its logits give the next token
            cached = min(self.manager.cached_prefix(tokens), (r.target - 1) // bs * bs)
        need = self._blocks(r.target) - cached // bs
        free = self.manager.allocator.num_free
        view = AdmissionView(r.target - cached, need, free, self._reserve, len(self.running), self.config.max_batch,
                             tokens_left, admitted, chunked)
        if not self.admission(view):
            return -1
        if need > free:
            raise ValueError(f"the admission rule admitted request {r.rid}, whose prompt needs {need} KV blocks, "
                             f"with only {free} free")
        if chunked and tokens_left <= 0:
            raise ValueError(f"the admission rule admitted request {r.rid} with no token budget left in the step")
        self.manager.add(r.rid, tokens if tokens is not None else r.target)
        r.mlen = r.target
        r.cap = self._blocks(r.target) * bs
        r.ctx = cached
        r.cached_tokens += cached
        r.state = "running"
        r.order = self._counter
        self._counter += 1
        if math.isnan(r.admitted_s):
            r.admitted_s = now
        self.running.append(r)
        return cached

    def _resume_swapped(self) -> int:
        moved = 0
        while self.swapped and len(self.running) < self.config.max_batch:
            r = self.swapped[0]
            need = self._blocks(r.mlen)
            if self.manager.allocator.num_free - need < self._reserve and self.running:
                break
            if need > self.manager.allocator.num_free:
                break
            moved += len(self.manager.swap_in(r.rid))
            self.swapped.popleft()
            r.state = "running"
            self.running.append(r)
            self.running.sort(key=lambda x: x.order)
        return moved

    # -- planning ---------------------------------------------------------------------------------

    def _decodes(self) -> tuple[list[Request], int, int, int]:
        """Running requests whose prompt is done get one token each; preempt from the back when blocks run out.
        Returns the decoding requests, the preemptions, the blocks swapped out and the keys they attend to."""
        decode: list[Request] = []
        grow: list[Request] = []
        for r in self.running:  # the common case first: no block boundary, nothing to allocate
            if r.ctx >= r.target:
                decode.append(r)
                if r.ctx >= r.cap:  # the next token starts a new block
                    grow.append(r)
        preempted = swapped = 0
        for r in grow:  # in admission order; victims come from the back
            while r.state == "running":
                try:
                    self._grow(r, r.ctx + 1)
                    break
                except OutOfBlocksError:
                    victim = self.running[-1]
                    swapped += self._preempt(victim)
                    preempted += 1
        if preempted:
            decode = [r for r in decode if r.state == "running"]
        w = self.window
        if w is None:
            context = len(decode)
            for r in decode:
                context += r.ctx
        else:
            context = sum(r.ctx + 1 if r.ctx < w else w for r in decode)
        return decode, preempted, swapped, context

    def schedule(self, now: float) -> Step | None:
        """Plan the next step at time ``now`` (requests that arrived are already added)."""
        policy = self.config.policy
        if policy == "static":
            return self._schedule_static(now)
        decode, preempted, swapped, context = self._decodes()
        swapped += self._resume_swapped()  # resumed requests decode from the next step on
        budget = self.config.token_budget
        # chunked: decodes and chunks share the budget; continuous: the budget caps the prompts admitted per step
        left = math.inf if budget is None else budget - (len(decode) if policy == "chunked" else 0)
        chunks: list[tuple[Request, int]] = []
        if policy == "chunked":
            for r in self.running:
                if r.ctx < r.target and left > 0:
                    q = min(r.target - r.ctx, left)
                    chunks.append((r, q))
                    left -= q
        admitted = 0
        while self.waiting:
            r = self.waiting[0]
            cached = self._admit(r, now, left, admitted, policy == "chunked")
            if cached < 0:
                break
            self.waiting.popleft()
            admitted += 1
            q = r.target - cached if policy == "continuous" else min(r.target - cached, left)
            chunks.append((r, q))
            left -= q
        if not decode and not chunks:
            return None
        pre = tuple((q, r.ctx + q) for r, q in chunks)
        rows = len(decode) + sum(1 for r, q in chunks if r.ctx + q == r.target)
        return Step(decode, chunks, StepShape(len(decode), context, pre, rows), preempted, swapped)

    def _schedule_static(self, now: float) -> Step | None:
        if not self.running and not self.swapped:
            self._batch_rows = 0
            while self.waiting:
                if self._admit(self.waiting[0], now, math.inf, len(self.running)) < 0:
                    break
                self.waiting.popleft()
            if not self.running:
                return None
            chunks = [(r, r.target - r.ctx) for r in self.running]
            self._batch_rows = len(chunks)
            self._batch_len = max(r.target for r in self.running)
            self._batch_steps = 0
            real = sum(q for _, q in chunks)
            shape = StepShape(0, 0, ((self._batch_len, self._batch_len),) * self._batch_rows, self._batch_rows)
            return Step([], chunks, shape, 0, 0, self._batch_rows * self._batch_len - real)
        decode, preempted, swapped, _ = self._decodes()
        swapped += self._resume_swapped()
        if not decode:  # every member is swapped out and none could come back: nothing to run yet
            return None
        self._batch_steps += 1
        rows = self._batch_rows
        context = rows * (self._batch_len + self._batch_steps)
        if self.window is not None:
            context = rows * min(self._batch_len + self._batch_steps, self.window)
        shape = StepShape(rows, context, (), rows)
        return Step(decode, [], shape, preempted, swapped, rows - len(decode))

    # -- completing -------------------------------------------------------------------------------

    def complete(self, step: Step, end: float) -> list[Request]:
        """Apply a step that ran until ``end``: advance prefills, hand out tokens, free finished requests."""
        finished = []
        for r, q in step.chunks:
            r.ctx += q
            if r.ctx == r.target:
                r.generated += 1
                if r.generated == 1:
                    r.first_token_s = end
                elif end - r.last_token_s > r.max_gap_s:  # a recomputed request resumes its stream
                    r.max_gap_s = end - r.last_token_s
                r.last_token_s = end
                if r.generated >= r.output:
                    self._finish(r, end, finished)
        for r in step.decode:
            r.ctx += 1
            g = r.generated = r.generated + 1
            gap = end - r.last_token_s
            if gap > r.max_gap_s:
                r.max_gap_s = gap
            r.last_token_s = end
            if g >= r.output:
                self._finish(r, end, finished)
        if finished:
            self.running = [r for r in self.running if r.state != "finished"]
        step.finished = finished
        return finished

    def _finish(self, r: Request, end: float, finished: list[Request]) -> None:
        r.finish_s = end
        r.state = "finished"
        self.manager.free(r.rid)
        finished.append(r)


# --------------------------------------------------------------------------------------------------
# The serving loop (shared by the simulator and the real engine)
# --------------------------------------------------------------------------------------------------

STEP_COLUMNS = ("step", "start_s", "time_s", "end_s", "decode_seqs", "prefill_seqs", "decode_tokens",
                "prefill_tokens", "padded_tokens", "output_tokens", "context_tokens", "attention_pairs", "logit_rows",
                "kv_blocks_used", "host_blocks_used", "waiting",
                "running", "swapped", "preempted", "swapped_blocks", "finished")
REQUEST_COLUMNS = ("request_id", "arrival_s", "admitted_s", "first_token_s", "finish_s", "prompt_len", "output_len",
                   "max_gap_s", "preemptions", "swaps", "cached_tokens", "recomputed_tokens")


def drive(scheduler: Scheduler, workload, execute) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Serve ``workload`` with ``scheduler``: the event loop of a serving engine.

    Requests join the queue when the clock passes their arrival; each step is planned by the scheduler and
    run by ``execute(step, now) -> seconds`` (a cost model in the simulator, the model itself in the real
    engine); when nothing can run the clock jumps to the next arrival. Returns the per-request and per-step
    tables (columns :data:`REQUEST_COLUMNS` and :data:`STEP_COLUMNS`; ``max_gap_s`` is a request's longest wait
    between two consecutive output tokens, its worst stall). Introduced in Chapter 9.
    """
    arrival = workload["arrival_s"].to_numpy(dtype=float)
    reqs = [Request(int(i), float(a), int(p), int(o), int(pi), int(pl)) for i, a, p, o, pi, pl in zip(
        workload["request_id"], arrival, workload["prompt_len"], workload["output_len"], workload["prefix_id"],
        workload["prefix_len"], strict=True)]
    n = len(reqs)
    rows: list[tuple] = []
    nxt, done, now = 0, 0, 0.0
    mgr = scheduler.manager
    while done < n:
        while nxt < n and reqs[nxt].arrival <= now:
            scheduler.add(reqs[nxt])
            nxt += 1
        step = scheduler.schedule(now)
        if step is None:
            if nxt < n:
                now = max(now, reqs[nxt].arrival)
                continue
            raise RuntimeError(f"the scheduler is stuck with {len(scheduler.waiting)} waiting, "
                               f"{len(scheduler.running)} running and {len(scheduler.swapped)} swapped requests")
        used = mgr.allocator.num_used
        host = mgr.host.num_used
        emitted = len(step.decode) + sum(1 for r, q in step.chunks if r.ctx + q == r.target)
        dt = float(execute(step, now))
        if not dt > 0:
            raise ValueError(f"a step must take a positive time, got {dt} s")
        finished = scheduler.complete(step, now + dt)
        done += len(finished)
        sh = step.shape
        rows.append((len(rows), now, dt, now + dt, len(step.decode), len(step.chunks), len(step.decode),
                     sum(q for _, q in step.chunks), step.padded_tokens, emitted,
                     sh.decode_context + sum(k for _, k in sh.chunks),
                     sh.decode_context + sum(q * k for q, k in sh.chunks), sh.logit_rows, used, host, len(scheduler.waiting),
                     len(scheduler.running) + len(finished), len(scheduler.swapped), step.preempted,
                     step.swapped_blocks, len(finished)))
        now += dt
    steps = pd.DataFrame(rows, columns=list(STEP_COLUMNS))
    requests = pd.DataFrame([(r.rid, r.arrival, r.admitted_s, r.first_token_s, r.finish_s, r.prompt, r.output,
                              r.max_gap_s, r.preemptions, r.swaps, r.cached_tokens, r.recomputed_tokens) for r in reqs],
                            columns=list(REQUEST_COLUMNS))
    return requests, steps
