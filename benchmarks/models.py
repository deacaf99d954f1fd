"""How fast the book's models run on this machine: load time, decode tokens/s, and SmolLM2's bandwidth use.

    python benchmarks/models.py              # 2 torch threads (the book's setting)
    python benchmarks/models.py --threads 1

Goals at batch 1 on a 2-core CPU: tiny model S >= 500 and M >= 250 generated tokens/s; SmolLM2-135M loads in
<= 10 s and decodes >= 15 tokens/s. For SmolLM2, whose fp32 weights (0.54 GB) are far larger than any cache,
each decode step must stream every weight from DRAM, so the step's bytes (from the analyzer) divided by its
measured time, over the bandwidth measured by ``uv.measure_machine()``, says how close decode comes to the
memory roof. Shared machines are noisy: each figure is the best of a few runs (and the median is printed);
with ``--threads 1`` the SmolLM2 step is also timed in CPU time, which leaves out time spent waiting for other
jobs.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import unveiled as uv
from unveiled import calibration, generation, smollm2, zoo
from unveiled.environment import machine_description
from unveiled.text import shakespeare_tokenizer
from unveiled.threads import torch_threads


def decode_rate(model, prompt: list[int], new_tokens: int, runs: int) -> tuple[float, float]:
    """Generated tokens per second of greedy generation (prefill included), best and median of ``runs``."""
    rates = []
    for _ in range(runs):
        t0 = time.perf_counter()
        generation.generate(model, prompt, new_tokens, progress=False)
        rates.append(new_tokens / (time.perf_counter() - t0))
    return max(rates), statistics.median(rates)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with torch_threads(args.threads):
        print(f"machine: {machine_description()}; torch {torch.__version__}, {torch.get_num_threads()} threads\n")

        tok = shakespeare_tokenizer()
        prompt = tok.encode("ROMEO:\nBut soft, what light")
        print("model  load_s  tokens/s (best)  tokens/s (median)  goal    ratio")
        for name, goal in (("S", 500), ("M", 250)):
            t0 = time.perf_counter()
            model = zoo.load(name)
            load_s = time.perf_counter() - t0
            best, med = decode_rate(model, prompt, 256, args.runs)
            print(f"{name:<6} {load_s:6.2f}  {best:15.0f}  {med:17.0f}  >= {goal:<4} {best / goal:5.2f}x")

        t0 = time.perf_counter()
        model = smollm2.load_smollm2(progress=False)
        load_s = time.perf_counter() - t0
        stok = smollm2.smollm2_tokenizer()
        sprompt = stok.encode("The capital of France is")
        best, med = decode_rate(model, sprompt, 48, args.runs)
        print(f"SmolLM2 load {load_s:.1f} s (goal <= 10 s, ratio {10 / load_s:.2f}x); decode {best:.1f} tokens/s best, "
              f"{med:.1f} median (goal >= 15, ratio {best / 15:.2f}x)")

        m = uv.measure_machine(progress=False)
        dev = m.device
        context = 64
        step = calibration.measure_pass(model, "decode", 1, context, repeats=max(3, args.runs))
        analysis = uv.analyze("smollm2-135m", dev, stage="decode", batch=1, seq_len=context, w_bits=32, a_bits=32)
        achieved = analysis.bytes / step["measured_s"]
        print(f"\nSmolLM2 decode step at {context} cached tokens: {step['measured_s'] * 1e3:.1f} ms best, "
              f"{step['measured_median_s'] * 1e3:.1f} ms median; moves {analysis.bytes / 1e9:.3f} GB (analyzer, fp32)")
        print(f"  achieved {achieved / 1e9:.2f} GB/s vs measured bandwidth {dev.bandwidth / 1e9:.2f} GB/s "
              f"(triad, best of {m.settings['repeats']}): {100 * achieved / dev.bandwidth:.0f}% of the memory roof")
        print(f"  roofline prediction {analysis.time_s * 1e3:.1f} ms -> measured/predicted "
              f"{step['measured_s'] / analysis.time_s:.2f}")
        if torch.get_num_threads() == 1:
            # On a busy machine wall time measures the queue too; one thread's CPU time approximates a quiet machine.
            cpu = calibration.measure_pass(model, "decode", 1, context, repeats=max(3, args.runs), clock="thread")
            print(f"  CPU time of the step (one thread, excludes waiting for other jobs): {cpu['measured_s'] * 1e3:.1f} ms "
                  f"-> {1 / cpu['measured_s']:.1f} tokens/s on a quiet core (goal >= 15)")


if __name__ == "__main__":
    main()
