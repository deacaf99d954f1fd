"""Benchmark of the LLM analyzer (Chapter 2): one analysis, a 10,000-configuration sweep, whole generations.

Targets (from the analyzer's issue): one `analyze` call under 1 ms; 10,000 configurations under 0.2 s
(vectorised, not a loop over `analyze`); `generate` with gen_len=4096 as fast as with gen_len=1. Prints the
figures and the speed-up of the vectorised sweep over a loop of single calls, measured in this one run
(timings on a shared machine are noisy: medians of repeated runs).

    python benchmarks/analyzer.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import unveiled as uv


def median_time(fn, repeat: int = 7, number: int = 1, clock=time.perf_counter) -> float:
    times = []
    for _ in range(repeat):
        t = clock()
        for _ in range(number):
            fn()
        times.append((clock() - t) / number)
    return statistics.median(times)


def main() -> None:
    print(f"machine: {uv.machine_description()}")
    try:
        import os

        print(f"load average (1 min): {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores "
              "(a shared machine: wall times scale with the load; CPU times much less)")
    except OSError:
        pass
    print()
    print("one analyze call (median):")
    cases = [("llama-2-7b", "decode", 8, 2048), ("llama-2-7b", "prefill", 1, 2048),
             ("mixtral-8x7b", "decode", 32, 4096), ("deepseek-v3", "decode", 32, 4096)]
    for name, stage, batch, seq in cases:
        uv.analyze(name, "h100-sxm", stage=stage, batch=batch, seq_len=seq)  # warm the config cache
        call = lambda n=name, s=stage, b=batch, L=seq: uv.analyze(n, "h100-sxm", stage=s, batch=b, seq_len=L)  # noqa: E731
        t = median_time(call, number=200)
        cpu = median_time(call, number=200, clock=time.process_time)
        with_table = median_time(lambda n=name, s=stage, b=batch, L=seq:
                                 uv.analyze(n, "h100-sxm", stage=s, batch=b, seq_len=L).ops, number=50)
        print(f"  {name:13s} {stage:8s} batch {batch:3d} seq {seq:5d}: {t * 1e3:6.3f} ms wall, {cpu * 1e3:6.3f} ms CPU "
              f"(with the operator DataFrame built: {with_table * 1e3:6.3f} ms wall)")

    print()
    batches = list(range(1, 51))
    seqs = [128 * k for k in range(1, 21)]
    w_bits = [16, 8, 4, 2, 1]
    devices = ["a6000", "h100-sxm"]
    n = len(batches) * len(seqs) * len(w_bits) * len(devices)
    kw = dict(stage="decode", batch=batches, seq_len=seqs, w_bits=w_bits)
    t_sweep = median_time(lambda: uv.sweep("llama-2-7b", devices, **kw), repeat=5)
    df = uv.sweep("llama-2-7b", devices, **kw)
    assert len(df) == n
    sample = df.sample(200, random_state=0)
    t0 = time.perf_counter()
    for _, r in sample.iterrows():
        a = uv.analyze("llama-2-7b", r.device, stage="decode", batch=int(r.batch), seq_len=int(r.seq_len),
                       w_bits=int(r.w_bits))
        assert np.isclose(a.time_s, r.time_s, rtol=1e-12)
    t_loop = (time.perf_counter() - t0) / len(sample) * n
    print(f"sweep of {n:,} configurations (llama-2-7b decode, 2 devices x 50 batches x 20 lengths x 5 bit widths):")
    print(f"  vectorised uv.sweep: {t_sweep:.3f} s")
    print(f"  loop of uv.analyze:  {t_loop:.2f} s (extrapolated from {len(sample)} calls, same numbers)")
    print(f"  speed-up of the vectorised sweep: {t_loop / t_sweep:.0f}x")

    print()
    print("generate (closed form, no per-token loop), llama-2-7b on the A6000, prompt 100 tokens:")
    times = {}
    for g in (1, 2, 128, 4096 - 100):
        times[g] = median_time(lambda g=g: uv.estimate_generation("llama-2-7b", "a6000", prompt_len=100, gen_len=g))
        print(f"  gen_len {g:5d}: {times[g] * 1e3:6.2f} ms")
    t0 = time.perf_counter()
    loop = sum(uv.analyze("llama-2-7b", "a6000", stage="decode", seq_len=L).time_s for L in range(101, 4096))
    t_tok = time.perf_counter() - t0
    closed = uv.estimate_generation("llama-2-7b", "a6000", prompt_len=100, gen_len=4096 - 100).decode_s
    print(f"  ratio gen_len 3996 / gen_len 2: {times[4096 - 100] / times[2]:.2f}")
    print(f"  a per-token loop of analyze (as LLM-Viewer does) for the same 3,995 decode steps: {t_tok:.2f} s, "
          f"{t_tok / times[4096 - 100]:.0f}x slower; same total decode time to {abs(loop / closed - 1):.1e}")


if __name__ == "__main__":
    main()
