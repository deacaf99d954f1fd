"""Benchmark distillation's costs on this machine, in one run: a plain training step of the student S, a step
with teacher M in the loop, a step reading M's cached top-16, and the teacher pass that builds the cache.

    python benchmarks/distill.py [--steps 3] [--rounds 5] [--batch 16]

The modes are interleaved round by round, so background load on a shared machine hits all of them alike; read
the ratios, not the absolute times. Goal (Chapter 4): a cached-distillation step costs little more than a plain
one (ratio close to 1), while the live teacher costs a multiple. Also prints the time of the chapter's live
rerun (two 60-step runs and their cache).
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3, help="steps per mode and round")
    parser.add_argument("--rounds", type=int, default=5, help="rounds (medians are over rounds)")
    parser.add_argument("--batch", type=int, default=16, help="windows of 128 characters per batch")
    parser.add_argument("--no-live", action="store_true", help="skip timing the chapter's live rerun")
    args = parser.parse_args()

    from unveiled import distill, zoo
    from unveiled.environment import machine_description
    from unveiled.threads import torch_threads

    with torch_threads(2):
        teacher = zoo.load("M")
        windows, _ = distill.tiny_data()
        settings = replace(distill.TINY_BASE, batch_size=args.batch)
        print(f"machine: {machine_description()}")
        print(f"student S ({zoo.load('S').num_parameters():,} parameters) from teacher M "
              f"({teacher.num_parameters():,}), batch {args.batch} × 128 characters, 2 threads")
        costs = distill.step_costs(teacher, windows, settings, steps=args.steps, rounds=args.rounds)
        print(costs.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        r = costs.set_index("mode").ratio_to_plain
        print(f"cached / plain step: {r['cached top-k']:.2f} (goal: close to 1); live teacher / plain: "
              f"{r['live teacher']:.2f}; cache build per batch / plain step: {r['teacher pass (cache build)']:.2f}")
        if not args.no_live:
            t0 = time.perf_counter()
            live = distill.live_runs(progress=False)
            print(f"chapter's live rerun (cache + two 60-step runs + evaluation): {time.perf_counter() - t0:.1f} s")
            print(live.to_string(index=False, float_format=lambda v: f"{v:.4g}"))
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
