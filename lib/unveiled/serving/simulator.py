"""Simulate one model replica serving a workload: the scheduler of :mod:`.scheduler`, a step cost from the
roofline analyzer (or a measured table), and the tables a serving benchmark reports.

:func:`simulate` is an event-driven simulation in the spirit of Vidur [Agrawal et al. 2024b]: the clock jumps
from one step's end to the next (or to the next arrival when the engine is idle); the scheduler decides what
each step runs on a paged KV pool sized from the device's memory; the step's time comes from a cost model
(:class:`~unveiled.serving.costs.RooflineStepCost` by default). The result holds one row per request and one
per step, and :meth:`ServingResult.summary` computes what serving papers report: time to first token (TTFT),
time per output token (TPOT), throughput and goodput under latency targets [Zhong et al. 2024], and memory use.
Introduced in Chapter 9.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from .._validate import check_positive
from ..analyzer import model_spec
from ..analyzer.configs import ModelSpec
from ..hardware import Device
from .costs import RooflineStepCost, kv_pool_blocks
from .interconnect import link_bandwidth
from .metrics import memory_timeline, request_metrics, summarize
from .scheduler import Scheduler, SchedulerConfig, drive
from .workload import check_workload

__all__ = ["ServingResult", "simulate"]


@dataclass
class ServingResult:
    """What a serving run produced: ``requests`` (one row each: arrival, admission, first token and finish
    times, lengths, preemptions; plus ``ttft_s``, ``tpot_s``, ``latency_s``, ``queue_s``), ``steps`` (one row per
    engine step: start, duration, batch composition, tokens, KV blocks in use, queue lengths), the scheduler
    ``config``, how big a KV block is, and the blocks still in use when the run ended (0 unless blocks leaked).
    Introduced in Chapter 9."""

    requests: pd.DataFrame
    steps: pd.DataFrame
    config: SchedulerConfig
    block_bytes: float
    label: dict = field(default_factory=dict)
    final_blocks_used: int = 0

    def summary(self, ttft_slo_s: float | None = None, tpot_slo_s: float | None = None) -> pd.Series:
        """TTFT and TPOT percentiles, throughput, goodput under the given targets, and memory (see
        :func:`~unveiled.serving.metrics.summarize`)."""
        return summarize(self.requests, self.steps, ttft_slo_s, tpot_slo_s, self.config.num_blocks,
                         self.block_bytes)

    def memory(self) -> pd.DataFrame:
        """KV memory over time (one row per step)."""
        return memory_timeline(self.steps, self.config.num_blocks, self.block_bytes)

    def __repr__(self) -> str:
        s = self.summary()
        what = ", ".join(f"{k}={v}" for k, v in self.label.items())
        return (f"ServingResult({what}; {len(self.requests)} requests in {len(self.steps)} steps, "
                f"{s['output_tokens_per_s']:.4g} output tokens/s, TTFT p50 {s['ttft_p50_s'] * 1e3:.4g} ms, "
                f"TPOT p50 {s['tpot_p50_s'] * 1e3:.4g} ms)")


def simulate(m: str | ModelSpec | None, device: str | Device | None, workload: pd.DataFrame,
             policy: str = "continuous", *, max_batch: int = 256, max_batched_tokens: int | None = None,
             block_size: int = 16, num_blocks: int | None = None, memory_fraction: float = 0.9,
             preemption: str = "recompute", swap_space_gb: float = 0.0, prefix_caching: bool = False,
             w_bits: int = 16, a_bits: int = 16, kv_bits: int | None = None, flash_attention: bool = True,
             group_size: int | None = None, cost=None, host_bandwidth_gb_s: float | None = None,
             watermark: float = 0.01, admission=None) -> ServingResult:
    """Serve ``workload`` with model ``m`` on ``device`` under ``policy`` and return the per-request and
    per-step tables.

    ``policy``: ``"static"``, ``"continuous"`` or ``"chunked"`` (see :mod:`.scheduler`). Step times come from
    :class:`~unveiled.serving.costs.RooflineStepCost` for the model, device and bit widths, or from ``cost``
    (any object with ``step_time(StepShape) -> seconds``, e.g. a measured
    :class:`~unveiled.serving.costs.LinearStepCost`; then ``m`` and ``device`` may be None, ``num_blocks``
    must be given, and ``m`` only sets the context limit). The KV pool holds ``num_blocks`` blocks of
    ``block_size`` tokens, by default what fits in ``memory_fraction`` of the device after the weights
    (:func:`~unveiled.serving.costs.kv_pool_blocks`). ``preemption="swap"`` swaps to ``swap_space_gb`` of host
    memory over the device's host link (``host_bandwidth_gb_s``, by default the sourced PCIe figure of
    :func:`~unveiled.serving.interconnect.link_bandwidth`). ``admission`` replaces the scheduler's admission
    rule (:func:`~unveiled.serving.scheduler.can_admit`). Deterministic: no randomness beyond the workload.
    Introduced in Chapter 9.
    """
    spec = model_spec(m) if m is not None else None
    if cost is None:
        if spec is None or device is None:
            raise ValueError("simulate needs a model and a device (for the roofline step cost) or cost=")
        cost = RooflineStepCost(spec, device, w_bits=w_bits, a_bits=a_bits, kv_bits=kv_bits,
                                flash_attention=flash_attention, group_size=group_size)
    elif not callable(getattr(cost, "step_time", None)):
        raise TypeError(f"cost must have a step_time(StepShape) method, got {type(cost).__name__}")
    workload = check_workload(workload, max_context=spec.max_context if spec is not None else None)
    kvb = a_bits if kv_bits is None else kv_bits
    if spec is not None:
        from ..kvcache.sizing import kv_bytes_per_token

        block_bytes = block_size * kv_bytes_per_token(spec, kvb)
    else:
        block_bytes = float("nan")
    if num_blocks is None:
        if spec is None or device is None:
            raise ValueError("give num_blocks when the model or the device is not given")
        budget = max_batched_tokens or 2048
        num_blocks = kv_pool_blocks(spec, device, block_size=block_size, w_bits=w_bits, a_bits=a_bits,
                                    kv_bits=kv_bits, group_size=group_size, memory_fraction=memory_fraction,
                                    max_batched_tokens=budget)
        if num_blocks == 0:
            raise ValueError(f"{spec.name} does not fit {device if isinstance(device, str) else device.name} with "
                             f"{w_bits}-bit weights: no memory is left for the KV cache")
    host_blocks = 0
    swap_s_per_block = 0.0
    if preemption == "swap":
        check_positive("swap_space_gb", swap_space_gb)
        if not np.isfinite(block_bytes):
            raise ValueError("preemption='swap' needs the model (to size the blocks)")
        host_blocks = int(swap_space_gb * 1e9 // block_bytes)
        bw = host_bandwidth_gb_s if host_bandwidth_gb_s is not None else link_bandwidth(device, "host") / 1e9
        swap_s_per_block = block_bytes / (check_positive("host_bandwidth_gb_s", bw) * 1e9)
    config = SchedulerConfig(policy=policy, num_blocks=num_blocks, block_size=block_size, max_batch=max_batch,
                             max_batched_tokens=max_batched_tokens, preemption=preemption, host_blocks=host_blocks,
                             prefix_caching=prefix_caching, watermark=watermark)
    scheduler = Scheduler(config, window=getattr(cost, "window", None), admission=admission)
    step_time = cost.step_time

    def execute(step, now):
        return step_time(step.shape) + step.swapped_blocks * swap_s_per_block

    requests, steps = drive(scheduler, workload, execute)
    label = {"policy": policy}
    if spec is not None:
        label["model"] = spec.name
    if device is not None:
        label["device"] = device if isinstance(device, str) else device.name
    return ServingResult(request_metrics(requests), steps, config, block_bytes, label,
                         scheduler.manager.allocator.num_used + scheduler.manager.host.num_used)
