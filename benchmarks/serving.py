"""Benchmark the serving simulator of Chapter 9: 10,000 requests on Llama-2-7B / A100 in at most 10 s.

The workload is the Azure 2023 conversation trace's lengths (requests that fit Llama-2-7B's 4096-token context)
with Poisson arrivals at ``--rate`` requests per second, which keeps the server busy (batches of tens of
sequences, tens of thousands of steps). Each policy is simulated once after building the step cost (the
analyzer's per-operator tables, timed separately); the figure printed is the wall time of ``simulate``, the
same in every run up to the machine's load (the simulation itself is deterministic: it prints the steps and
the output throughput it simulated, which never change).

    python benchmarks/serving.py                   # 10,000 requests, every policy
    python benchmarks/serving.py --requests 2000 --policies continuous

Machines here are shared and noisy: read the seconds as what this run measured, not as constants.
"""

from __future__ import annotations

import argparse
import sys
import time

import unveiled.serving as sv
from unveiled.environment import machine_description

BUDGET_S = 10.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=8.0)
    parser.add_argument("--model", default="llama-2-7b")
    parser.add_argument("--device", default="a100-80gb")
    parser.add_argument("--policies", nargs="+", default=list(sv.POLICIES), choices=list(sv.POLICIES))
    args = parser.parse_args()
    print(machine_description())
    wl = sv.trace_workload("azure-conv", n=args.requests, rate=args.rate, max_total_len=4096, seed=0)
    t0 = time.perf_counter()
    cost = sv.RooflineStepCost(args.model, args.device)
    print(f"{args.model} on {args.device}: step-cost tables built in {time.perf_counter() - t0:.2f} s")
    ok = True
    for policy in args.policies:
        t0 = time.perf_counter()
        res = sv.simulate(args.model, args.device, wl, policy, cost=cost)
        took = time.perf_counter() - t0
        s = res.summary()
        verdict = "ok" if took <= BUDGET_S else "OVER BUDGET"
        ok &= took <= BUDGET_S
        print(f"{policy:>10}: {len(wl):,} requests, {int(s.steps):,} steps simulated in {took:5.2f} s "
              f"({took / BUDGET_S:.2f} of the {BUDGET_S:.0f} s budget, {verdict}); "
              f"{s.output_tokens_per_s:,.0f} output tokens/s simulated, {1e6 * took / s.steps:.0f} us per step")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
