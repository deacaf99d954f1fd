"""SmolLM2-135M decode, eager against compiled, against this machine's measured memory roof (Chapter 8).

    python benchmarks/kernels.py                    # one and two threads, wall clock (the book's goal)
    python benchmarks/kernels.py --threads 1 --clock thread   # a busy machine: CPU time of one thread

Goal: the compiled decode step (``torch.compile``, inductor, static KV cache) moves SmolLM2's weights at
>= 60 % of the triad bandwidth measured in the same run with the same threads and clock. Each path is the best
of ``--repeats`` steps; ratios are computed from numbers taken in one run. Prints, per thread count: tokens/s
and the share of the roof for the eager Decoder, the eager static step and the compiled step, the compiled/eager
speed-up, the compile time, and whether the goal is met. Where torch.compile is unavailable it says why.
"""

from __future__ import annotations

import argparse

import torch

from unveiled.environment import machine_description
from unveiled.kernels.experiments import decode_step_speed
from unveiled.smollm2 import load_smollm2

GOAL = 0.60


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--context", type=int, default=64)
    args = parser.parse_args()
    if args.clock == "thread" and any(n != 1 for n in args.threads):
        parser.error("--clock thread measures one thread's CPU time: use it with --threads 1")
    print(f"machine: {machine_description()}; torch {torch.__version__}")
    model = load_smollm2(progress=False)
    table = decode_step_speed(model, threads=tuple(args.threads), clocks={n: (args.clock,) for n in args.threads},
                              context=args.context, repeats=args.repeats)
    if table["note"].astype(bool).any():
        print("torch.compile unavailable:", table["note"].iloc[0])
    print(f"\nstep: {table['bytes'].iloc[0] / 1e9:.3f} GB (analyzer, fp32), {args.context} keys, clock {args.clock}")
    for n, rows in table.groupby("threads"):
        print(f"\n{n} thread(s): triad {rows['bandwidth_bytes_s'].iloc[0] / 1e9:.1f} GB/s")
        for r in rows.itertuples():
            print(f"  {r.path:22s} {r.tokens_per_s:7.1f} tok/s  {r.achieved_bytes_s / 1e9:6.1f} GB/s  "
                  f"{100 * r.fraction_of_roof:5.1f} % of the roof")
        by = rows.set_index("path")
        if "compiled static step" in by.index:
            c, e = by.loc["compiled static step"], by.loc["eager Decoder"]
            verdict = "MET" if c.fraction_of_roof >= GOAL else "NOT met"
            print(f"  compiled / eager Decoder: {c.tokens_per_s / e.tokens_per_s:.2f}x; compile {c.compile_s:.0f} s wall, "
                  f"{c.compile_cpu_s:.0f} s CPU; goal >= {100 * GOAL:.0f} % of the roof: {verdict} "
                  f"(ratio {c.fraction_of_roof / GOAL:.2f})")


if __name__ == "__main__":
    main()
