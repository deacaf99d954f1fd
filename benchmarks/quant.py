"""Quantization performance on this CPU (Chapter 3): GPTQ's cost, and weight-only int8/int4 decoding against fp32/bf16
next to the roofline's prediction.

    python benchmarks/quant.py                  # everything (a few minutes on 2 cores)
    python benchmarks/quant.py --skip-gptq      # only the kernels and the decode speeds
    python benchmarks/quant.py --gptq-blocks 4  # GPTQ on the first 4 blocks only

Prints, measured in one run: (1) GPTQ on SmolLM2-135M's linear layers (16 calibration sequences of 256 tokens):
total time, time per layer kind, and its layer error against round-to-nearest; (2) a 4096×4096 decode GEMV in
fp32, bf16, int8 and int4 with the bytes each reads, its effective bandwidth and its speedup over fp32; (3) whole
SmolLM2 decode steps in the same four formats, measured, and the roofline prediction from this machine's measured
bandwidth and peaks, with the ratios. Machines here are shared and noisy: read the ratios measured in this run,
never the absolute times as constants.
"""

from __future__ import annotations

import argparse
import time

import torch

import unveiled as uv
from unveiled import quant as uq
from unveiled.threads import torch_threads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skip-gptq", action="store_true", help="skip the GPTQ timing")
    parser.add_argument("--gptq-blocks", type=int, default=None, help="run GPTQ on the first N blocks only")
    parser.add_argument("--new-tokens", type=int, default=16, help="decode steps timed per format")
    args = parser.parse_args()
    with torch_threads(2):
        print(f"machine: {uv.machine_description()}, torch threads {torch.get_num_threads()}")
        t0 = time.perf_counter()
        smol = uv.smollm2.load_smollm2(progress=False)
        print(f"SmolLM2-135M loaded in {time.perf_counter() - t0:.1f} s\n")

        if not args.skip_gptq:
            calib = uq.calibration_batch("smollm2", 16, 256)
            include = None
            if args.gptq_blocks is not None:
                keep = {f"layers.{i}." for i in range(args.gptq_blocks)}
                include = lambda name: any(name.startswith(k) for k in keep)  # noqa: E731
            t0 = time.perf_counter()
            _, report = uq.gptq_model(smol, calib, uq.QuantSpec(4), include=include, progress=False)
            total = time.perf_counter() - t0
            print(f"GPTQ int4 per channel on {len(report)} linear layers: {total:.1f} s in all "
                  f"({report.time_s.sum():.1f} s of column updates, the rest calibration forwards)")
            per_kind = report.groupby("layer").agg(layers=("name", "size"), median_s=("time_s", "median"),
                                                   error_ratio=("gptq_error", "sum"))
            per_kind["error_ratio"] = per_kind["error_ratio"] / report.groupby("layer")["rtn_error"].sum()
            print(per_kind.to_string(float_format=lambda v: f"{v:.3g}"))
            print(f"GPTQ / RTN layer error, summed over all layers: {report.gptq_error.sum() / report.rtn_error.sum():.3f}\n")

        machine = uv.measure_machine(progress=False, cache=False)
        print(f"measured bandwidth {machine.device.bandwidth / 1e9:.1f} GB/s; peaks "
              + ", ".join(f"{d} {machine.device.peak(d) / 1e9:.0f} GFLOP/s" for d in machine.device.dtypes) + "\n")
        print(f"int8 kernel available: {uq.int8_kernel_available()}, int4 kernel available: {uq.int4_kernel_available()}")
        gemv = uq.gemv_benchmark(4096, 4096, repeats=30)
        gemv["predicted_s"] = gemv.weight_bytes / machine.device.bandwidth
        print(gemv.to_string(index=False, float_format=lambda v: f"{v:.4g}"), "\n")

        prompt = uv.smollm2.smollm2_tokenizer().encode(uv.text.corpus_split("val")[:200])
        speed = uq.decode_speed_vs_roofline(smol, "smollm2-135m", machine.device, prompt, new_tokens=args.new_tokens,
                                            progress=False)
        print("SmolLM2-135M decode, batch 1 (seconds per token):")
        print(speed.to_string(index=False, float_format=lambda v: f"{v:.4g}"))


if __name__ == "__main__":
    main()
