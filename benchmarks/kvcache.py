"""Benchmark the KV caches of Chapter 6: one decode step of the tiny model with each cache, in one run.

The goal from the issue: the paged cache's decode step is within 1.5x of the contiguous cache's. Both run the
same model on the same tokens; the caches are timed in alternation (round-robin over repeats) and each
figure is the median, so a burst of load from other processes hits both alike. The quantized and evicting
caches are printed for reference (they have no target).

    python benchmarks/kvcache.py                 # zoo model M, 128-token prompt, 64 decode steps
    python benchmarks/kvcache.py --model S --steps 128

Machines here are shared and noisy: read the figures as what this run measured, not as constants.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from unveiled import kvcache
from unveiled.environment import machine_description
from unveiled.models import Decoder
from unveiled.threads import torch_threads

TARGET_RATIO = 1.5


def load(name: str) -> Decoder:
    from unveiled import zoo

    try:
        return zoo.load(name)
    except ValueError as exc:  # weights not shipped yet: same architecture, random weights
        print(f"(zoo model {name} not available: {exc}; using random weights of the same shape)")
        return Decoder(zoo.ZOO[name].config, seed=0).eval()


@torch.inference_mode()
def decode_time(model: Decoder, make_cache, prompt: torch.Tensor, steps: int) -> float:
    """Seconds per decode step after a prefill of ``prompt`` (the prefill is not timed)."""
    cache = make_cache()
    logits = model(prompt, cache)
    token = logits[:, -1:].argmax(-1)
    start = time.perf_counter()
    for _ in range(steps):
        token = model(token, cache)[:, -1:].argmax(-1)
    return (time.perf_counter() - start) / steps


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="M", choices=["S", "M"])
    parser.add_argument("--prompt", type=int, default=128)
    parser.add_argument("--steps", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    with torch_threads(args.threads):
        model = load(args.model)
        prompt = torch.randint(0, model.config.vocab_size, (1, args.prompt), generator=torch.Generator().manual_seed(0))
        caches = {
            "contiguous": model.new_cache,
            "paged (block 16)": lambda: kvcache.PagedKVCache(16),
            "paged (block 1)": lambda: kvcache.PagedKVCache(1),
            "KIVI 4-bit": lambda: kvcache.kivi_cache(4, group_size=32, residual=32),
            "sinks + window (64)": lambda: kvcache.SinkWindowCache(64, num_sinks=4),
            "H2O (64)": lambda: kvcache.HeavyHitterCache(64),
        }
        times: dict[str, list[float]] = {name: [] for name in caches}
        decode_time(model, caches["contiguous"], prompt, 4)  # warm-up
        for _ in range(args.repeats):
            for name, make in caches.items():
                times[name].append(decode_time(model, make, prompt, args.steps))
        print(f"machine: {machine_description()}")
        print(f"model {args.model} ({model.num_parameters():,} parameters), prompt {args.prompt} tokens, "
              f"{args.steps} decode steps, median of {args.repeats} round-robin repeats, {args.threads} threads\n")
        base = statistics.median(times["contiguous"])
        print(f"{'cache':22s} {'ms/step':>9s} {'vs contiguous':>14s}")
        for name, ts in times.items():
            t = statistics.median(ts)
            print(f"{name:22s} {t * 1e3:9.3f} {t / base:13.2f}x")
        ratio = statistics.median(times["paged (block 16)"]) / base
        ok = ratio <= TARGET_RATIO
        print(f"\npaged (block 16) / contiguous = {ratio:.2f}x (target <= {TARGET_RATIO}x) -> {'OK' if ok else 'OVER'}")
        return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
