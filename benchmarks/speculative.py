"""Benchmark speculative decoding on this CPU: tokens/s of plain and speculative greedy decoding of SmolLM2-135M,
and their ratio, measured in one run, with identical output checked token for token.

    python benchmarks/speculative.py [--tokens 96] [--repeats 3] [--k 3] [--drafts "small model,prompt lookup"]

Both decoders run the same target (by default with its weights stored transposed, which makes the
verification pass cheaper on a CPU; ``--layout linear`` keeps ``nn.Linear``). Plain and speculative runs alternate ``--repeats`` times (so background load on a shared machine hits both
alike) and the best run of each is reported. Drafts: ``small model`` (the distilled 2-block draft shipped in
data/models/smol-draft.safetensors), ``prompt lookup`` (n-gram copying, no model), ``layer skip`` (20 of
SmolLM2's 30 blocks, chosen by how much each changes the residual stream). Goal (Chapter 7): a speedup of at least 1.5× with identical greedy output. Exits with
status 1 if any speculative output differs from the plain one.
"""

from __future__ import annotations

import argparse


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=96, help="new tokens per generation")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (best run kept)")
    parser.add_argument("--k", type=str, default="2,3,4", help="draft lengths, comma-separated")
    parser.add_argument("--drafts", type=str, default="small model,prompt lookup,layer skip")
    parser.add_argument("--prompt", choices=("shakespeare", "chat"), default="shakespeare")
    parser.add_argument("--layout", choices=("transposed", "linear"), default="transposed",
                        help="weights stored transposed (cheaper verification on a CPU; the chapter's choice) or "
                             "as loaded (nn.Linear)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1, as the chapter: steadier on a shared machine)")
    args = parser.parse_args()

    from unveiled.decoding import compare_decoding, transpose_linears
    from unveiled.decoding.experiments import chat_prompt_ids, shakespeare_prompt_ids, smollm2_drafts
    from unveiled.environment import machine_description
    from unveiled.smollm2 import load_smollm2, smollm2_tokenizer
    from unveiled.threads import torch_threads

    with torch_threads(args.threads):
        target = load_smollm2(progress=False)
        if args.layout == "transposed":
            transpose_linears(target)  # same numbers; the CPU's thin-GEMM kernel streams [in, out] weights better
        tok = smollm2_tokenizer()
        prompt = shakespeare_prompt_ids(tok) if args.prompt == "shakespeare" else chat_prompt_ids(tok)
        every = smollm2_drafts(target)
        names = [n.strip() for n in args.drafts.split(",") if n.strip()]
        unknown = sorted(set(names) - set(every))
        if unknown:
            parser.error(f"unknown drafts {unknown}; choose from {sorted(every)}")
        ks = tuple(int(k) for k in args.k.split(","))
        print(f"machine: {machine_description()}")
        print(f"target SmolLM2-135M (fp32, {args.layout} weights, {args.threads} thread(s)), prompt: {args.prompt} ({len(prompt)} tokens), "
              f"{args.tokens} new tokens, greedy, best of {args.repeats} alternating runs")
        df = compare_decoding(target, {n: every[n] for n in names}, prompt, max_new_tokens=args.tokens, ks=ks,
                              repeats=args.repeats)
        plain = df.plain_tokens_per_s.iloc[0]
        print(f"plain decoding: {plain:.2f} tokens/s")
        cols = ["draft", "k", "tokens_per_s", "speedup", "predicted_speedup", "identical", "acceptance_rate",
                "tokens_per_pass", "cost_ratio", "verify_ratio"]
        print(df[cols].to_string(index=False, float_format=lambda v: f"{v:.3g}"))
        best = df.loc[df.speedup.idxmax()]
        print(f"best: {best.draft}, k={best.k}: {best.tokens_per_s:.2f} vs {plain:.2f} tokens/s = {best.speedup:.2f}x "
              f"(goal >= 1.5x; analytic model {best.predicted_speedup:.2f}x); identical greedy output: "
              f"{bool(df.identical.all())}")
        return 0 if bool(df.identical.all()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
