"""Measure this machine's roofline and how close real kernels come to it (Chapter 1, "Measure your own machine").

    python benchmarks/measure_machine.py                 # defaults of uv.measure_machine()
    python benchmarks/measure_machine.py --repeats 9     # more repeats: a steadier best-of-N

Prints the measured memory bandwidth and matmul peaks (best and median of the repeats, and the spread), the
measured ridge points next to a few datasheet devices, and for each kernel (elementwise, GEMV, small-batch
GEMM, GEMMs) its intensity, its measured time and the fraction of its roofline prediction it reached
(predicted / measured; 100% = at the roof). Machines here are shared and noisy: read the figures as what this
run measured on this machine, never as constants.
"""

from __future__ import annotations

import argparse
import time

import unveiled as uv


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per benchmark (after a warm-up)")
    parser.add_argument("--array-mib", type=int, default=None, help="MiB per array (default: 2x the LLC, capped)")
    args = parser.parse_args()
    array_bytes = None if args.array_mib is None else args.array_mib * 2**20

    t0 = time.perf_counter()
    m = uv.measure_machine(array_bytes=array_bytes, repeats=args.repeats, cache=False, progress=False)
    t1 = time.perf_counter()
    kernels = uv.measure_kernels(m.device, array_bytes=array_bytes, repeats=args.repeats, progress=False)
    t2 = time.perf_counter()

    dev = m.device
    print(f"machine : {m.description}")
    print(f"settings: {m.settings}")
    print(f"time    : roofline measurement {t1 - t0:.1f} s, kernels {t2 - t1:.1f} s\n")
    print(m.table().to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    print(f"\nmeasured roofline: bandwidth {dev.bandwidth / 1e9:.1f} GB/s; "
          + "; ".join(f"{d} peak {dev.peak(d) / 1e9:,.0f} GFLOP/s (ridge {dev.ridge_point(d):.1f} ops/byte)"
                      for d in dev.dtypes))
    for name, dtype in (("i9-13900k", "fp32"), ("a6000", "fp16"), ("h100-sxm", "bf16")):
        ref = uv.get_device(name)
        print(f"  vs {ref.display_name:<24} {dtype}: {ref.bandwidth / 1e9:7.1f} GB/s, "
              f"{ref.peak(dtype) / 1e12:8.1f} TFLOP/s, ridge {ref.ridge_point(dtype):6.1f}; "
              f"bandwidth ratio {ref.bandwidth / dev.bandwidth:6.1f}x")
    print("\nkernels (fraction of roofline = roofline-predicted time / best measured time):")
    cols = ["kernel", "dtype", "intensity", "bound", "time_best_s", "time_median_s", "spread", "fraction_of_roofline"]
    table = kernels[cols].copy()
    table["time_best_s"] *= 1e3
    table["time_median_s"] *= 1e3
    table = table.rename(columns={"time_best_s": "best_ms", "time_median_s": "median_ms"})
    table["spread"] = (100 * table["spread"]).map(lambda v: f"{v:.0f}%")
    table["fraction_of_roofline"] = (100 * table["fraction_of_roofline"]).map(lambda v: f"{v:.0f}%")
    print(table.to_string(index=False, float_format=lambda v: f"{v:,.3g}"))


if __name__ == "__main__":
    main()
