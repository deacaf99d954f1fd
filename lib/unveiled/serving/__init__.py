"""Serving: batching, scheduling and memory under load, simulated and run for real (survey §5.2–5.3).

A serving system is a queue: requests arrive (:mod:`.workload`), a scheduler picks each step's work under a
token budget and a paged KV pool (:mod:`.scheduler`: static, continuous and chunked-prefill policies on
:class:`~unveiled.kvcache.blocks.BlockManager`), the step costs what the roofline analyzer or a measured
table says (:mod:`.costs`), and the run is judged by latency, throughput, goodput and memory (:mod:`.metrics`).
:func:`simulate` puts these together for any model and device of the registry; :mod:`.engine` runs the same
scheduler with a real model on the CPU, so that the simulator's error can be measured; :mod:`.interconnect`
covers the host and GPU-to-GPU links (swapping, tensor parallelism). Introduced in Chapter 9.
"""

from .costs import (
    FEATURES,
    LinearStepCost,
    RooflineStepCost,
    StepShape,
    fit_step_cost,
    kv_pool_blocks,
    step_features,
)
from .engine import EngineResult, PagedKVPool, ServingEngine, profile_engine, serve, text_prompts
from .interconnect import allreduce_time, interconnect_table, link_bandwidth, shard, tensor_parallel_decode
from .metrics import littles_law, memory_timeline, request_metrics, summarize
from .scheduler import (
    POLICIES,
    PREEMPTION,
    AdmissionView,
    Request,
    Scheduler,
    SchedulerConfig,
    Step,
    can_admit,
    drive,
)
from .simulator import ServingResult, simulate
from .workload import (
    TRACES,
    Lengths,
    azure_trace,
    bursty_workload,
    check_workload,
    exponential_lengths,
    lognormal_lengths,
    poisson_workload,
    trace_workload,
    uniform_lengths,
    workload_from_requests,
)

__all__ = [
    "FEATURES",
    "POLICIES",
    "PREEMPTION",
    "TRACES",
    "AdmissionView",
    "EngineResult",
    "Lengths",
    "LinearStepCost",
    "PagedKVPool",
    "Request",
    "RooflineStepCost",
    "Scheduler",
    "SchedulerConfig",
    "ServingEngine",
    "ServingResult",
    "Step",
    "StepShape",
    "allreduce_time",
    "azure_trace",
    "bursty_workload",
    "can_admit",
    "check_workload",
    "drive",
    "exponential_lengths",
    "fit_step_cost",
    "interconnect_table",
    "kv_pool_blocks",
    "link_bandwidth",
    "littles_law",
    "lognormal_lengths",
    "memory_timeline",
    "poisson_workload",
    "profile_engine",
    "request_metrics",
    "serve",
    "shard",
    "simulate",
    "step_features",
    "summarize",
    "tensor_parallel_decode",
    "text_prompts",
    "trace_workload",
    "uniform_lengths",
    "workload_from_requests",
]
