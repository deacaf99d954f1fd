"""Pruning and factorization on this CPU (Chapter 5): what sparse and smaller models really run at, next to the
roofline's prediction for this machine, all measured in one run.

    python benchmarks/pruning.py                 # everything (a few minutes on 2 cores)
    python benchmarks/pruning.py --threads 1     # one PyTorch thread (steadier on a shared machine)
    python benchmarks/pruning.py --skip-decode   # only the sparse-matmul break-even

Prints: (1) this machine's measured roofline (bandwidth, fp32 peak); (2) y = W·x with W stored dense and as
CSR (PyTorch's sparse kernel, 32-bit indices) at sparsities from 50 % to 98 %, for a decode-time vector
(batch 1) and a small batch, on SmolLM2's MLP shape and on a matrix larger than the last-level cache: the
measured speedup of CSR over dense next to the roofline's, and both break-even sparsities; (3) greedy decoding
of SmolLM2-135M dense, structurally pruned (30 % of the block parameters: MLP channels; and one KV group per
layer plus channels), factorized (60 % of the block parameters: the ranks of an SVD, random factors) and
2:4-pruned in dense storage,
measured tokens/s and speedup next to the roofline's predicted speedup. Machines here are shared and noisy:
read the ratios measured in this run, never the absolute times as constants.
"""

from __future__ import annotations

import argparse
import time

import torch

import unveiled as uv
from unveiled import pruning as P
from unveiled.pruning.speed import break_even, compressed_decode_speeds, csr_vs_dense
from unveiled.threads import torch_threads


def _fmt(v: float) -> str:
    return f"{v:.4g}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=None, help="PyTorch threads (default: as configured)")
    parser.add_argument("--skip-decode", action="store_true", help="skip the SmolLM2 decode timings")
    parser.add_argument("--new-tokens", type=int, default=16, help="decode steps timed per model")
    parser.add_argument("--repeats", type=int, default=10, help="repeats per matmul timing")
    args = parser.parse_args()
    with torch_threads(args.threads):
        print(f"machine: {uv.machine_description()}, torch threads {torch.get_num_threads()}, "
              f"CPU capability {torch.backends.cpu.get_cpu_capability()}")
        machine = uv.measure_machine(dtypes=("fp32",), progress=False, cache=False)
        dev = machine.device
        print(f"measured bandwidth {dev.bandwidth / 1e9:.1f} GB/s, fp32 peak {dev.peak('fp32') / 1e9:.0f} GFLOP/s\n")

        print("y = W x, dense against CSR (32-bit indices): speedup = dense time / CSR time")
        for shape in ((1536, 576), (4096, 4096)):
            for batch in (1, 16):
                t0 = time.perf_counter()
                df = csr_vs_dense(*shape, batch=batch, sparsities=(0.5, 0.7, 0.8, 0.9, 0.95, 0.98),
                                  repeats=args.repeats, device=dev)
                measured, predicted = break_even(df), break_even(df, "predicted_speedup")
                print(f"  W {shape[0]}x{shape[1]} fp32, batch {batch} ({time.perf_counter() - t0:.1f} s): "
                      f"break-even sparsity measured {measured if measured is None else f'{measured:.0%}'}, "
                      f"roofline {predicted if predicted is None else f'{predicted:.0%}'}")
                print(df[["sparsity", "dense_s", "csr_s", "speedup", "predicted_speedup"]].to_string(
                    index=False, float_format=_fmt))
        if args.skip_decode:
            return

        print("\nSmolLM2-135M greedy decode, batch 1, fp32")
        smol = uv.smollm2.load_smollm2(progress=False)
        t0 = time.perf_counter()
        nm = P.prune_model(smol, "magnitude", "2:4", progress=False)[0]
        prompt = uv.smollm2.smollm2_tokenizer().encode(uv.text.corpus_split("val")[:400])[:64]
        speeds = compressed_decode_speeds(smol, dev, prompt, sparsity=0.3, keep=0.6,
                                          extra={"2:4 in dense storage": nm}, new_tokens=args.new_tokens,
                                          budget_s=None)
        print(f"  measured in {time.perf_counter() - t0:.1f} s (low rank: a timing twin with the same ranks)")
        speeds["measured_over_predicted"] = speeds["time_per_token_s"] / speeds["predicted_s"]
        print(speeds.to_string(index=False, float_format=_fmt))


if __name__ == "__main__":
    main()
