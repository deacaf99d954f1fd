"""Command line of the book's library: ``python -m unveiled <command> ...`` (or ``unveiled <command>``).

Each command is a function registered with :func:`command`; it receives an ``argparse`` sub-parser to fill
and returns the function that runs it. To add a command elsewhere in the library, register it in a module
listed in ``_COMMAND_MODULES`` (or in this file)::

    @command("hello", "say hello")
    def _hello(p):
        p.add_argument("name")
        return lambda args: print(f"hello {args.name}")

Commands (introduced in Chapter 2): ``analyze`` (per-operator roofline table and totals), ``generate``
(TTFT, TPOT, throughput of a whole generation), ``models`` and ``devices`` (what is shipped).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Callable

__all__ = ["build_parser", "command", "main"]

_COMMANDS: dict[str, tuple[str, Callable]] = {}
#: Modules that register more commands when imported (each module is optional).
_COMMAND_MODULES: tuple[str, ...] = ()


def command(name: str, help: str):
    """Register ``fn(parser) -> run(args)`` as the sub-command ``name``."""

    def deco(fn):
        if name in _COMMANDS:
            raise ValueError(f"command {name!r} is already registered")
        _COMMANDS[name] = (help, fn)
        return fn

    return deco


def _add_setting_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a shipped model name (see `models`) or a path to a config.json")
    p.add_argument("device", help="a device name (see `devices`)")
    p.add_argument("--batch", type=int, default=1, help="sequences processed together (default 1)")
    p.add_argument("--w-bits", type=int, default=16, help="bits per weight (default 16)")
    p.add_argument("--a-bits", type=int, default=16, help="bits per activation (default 16)")
    p.add_argument("--kv-bits", type=int, default=None, help="bits per KV-cache element (default: a-bits)")
    p.add_argument("--flash-attention", action="store_true", help="fused FlashAttention / flash-decoding")
    p.add_argument("--conventions", default="exact", choices=["exact", "paper", "paper-2024-03"],
                   help="exact (first principles, default) or paper (LLM-Viewer, as in the survey)")
    p.add_argument("--no-context-check", action="store_true", help="allow sequences beyond the model's context")


def _model_arg(text: str):
    import os

    from .analyzer import model_from_hf_config, model_spec

    if text.endswith(".json") or os.path.isdir(text):
        return model_from_hf_config(text)
    return model_spec(text)


def _emit(df, args, title_lines: list[str]) -> None:
    import pandas as pd

    if args.csv:
        df.to_csv(sys.stdout, index=False)
    elif args.json:
        print(json.dumps({"summary": args._summary, "ops": json.loads(df.to_json(orient="records"))}, indent=2))
    else:
        for line in title_lines:
            print(line)
        with pd.option_context("display.width", 200, "display.max_columns", 20, "display.max_rows", 200):
            print(df.to_string(index=False))


def _fmt_si(x: float, unit: str) -> str:
    for scale, prefix in ((1e15, "P"), (1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= scale:
            return f"{x / scale:.4g} {prefix}{unit}"
    return f"{x:.4g} {unit}"


@command("analyze", "per-operator roofline analysis of one prefill or decode pass")
def _analyze_cmd(p: argparse.ArgumentParser):
    _add_setting_args(p)
    p.add_argument("--stage", default="prefill", choices=["prefill", "decode"])
    p.add_argument("--seq-len", type=int, default=2048, help="prompt length (prefill) or KV-cache length (decode)")
    out = p.add_mutually_exclusive_group()
    out.add_argument("--csv", action="store_true", help="print the operator table as CSV")
    out.add_argument("--json", action="store_true", help="print the summary and operator table as JSON")

    def run(args):
        from .analyzer import analyze

        a = analyze(_model_arg(args.model), args.device, stage=args.stage, batch=args.batch, seq_len=args.seq_len,
                    w_bits=args.w_bits, a_bits=args.a_bits, kv_bits=args.kv_bits,
                    flash_attention=args.flash_attention, conventions=args.conventions,
                    check_context=False if args.no_context_check else None)
        cols = ["op", "count", "flops", "bytes", "intensity", "bound", "compute_dtype", "time_s", "time_share"]
        df = a.ops[cols]
        args._summary = json.loads(a.summary().to_json())
        if not (args.csv or args.json):
            df = df.assign(flops=df.flops.map(lambda v: _fmt_si(v, "FLOP")),
                           bytes=df.bytes.map(lambda v: _fmt_si(v, "B")),
                           intensity=df.intensity.map(lambda v: f"{v:.3g}"),
                           time_s=df.time_s.map(lambda v: f"{v * 1e3:.4g} ms"),
                           time_share=df.time_share.map(lambda v: f"{100 * v:.1f} %"))
            df = df.rename(columns={"time_s": "time (one)", "time_share": "share"})
        mem = a.memory
        fits = "" if mem.fits is None else (" (fits)" if mem.fits else " (does NOT fit)")
        _emit(df, args, [
            f"{a.model.name} on {a.device.display_name} | {a.stage}, batch {a.batch}, seq_len {a.seq_len}, "
            f"W{a.w_bits}A{a.a_bits}KV{a.kv_bits}{', FlashAttention' if a.flash_attention else ''}, "
            f"{a.conventions} conventions",
            f"total: {_fmt_si(a.flops, 'FLOP')}, {_fmt_si(a.bytes, 'B')} moved, {a.time_s * 1e3:.4g} ms "
            f"({a.tokens_per_s:.4g} tokens/s), {100 * a.memory_bound_share:.0f} % of the time memory-bound",
            f"memory: weights {mem.weights / 1e9:.3f} GB + KV cache {mem.kv_cache / 1e9:.3f} GB + activations "
            f"{mem.activations / 1e9:.3f} GB = {mem.total / 1e9:.3f} GB{fits}",
            "",
        ])

    return run


@command("generate", "TTFT, TPOT and throughput of a whole generation (closed form)")
def _generate_cmd(p: argparse.ArgumentParser):
    _add_setting_args(p)
    p.add_argument("--prompt-len", type=int, default=1024)
    p.add_argument("--gen-len", type=int, default=128)
    p.add_argument("--json", action="store_true", help="print the result as JSON")

    def run(args):
        from .analyzer import estimate_generation

        g = estimate_generation(_model_arg(args.model), args.device, batch=args.batch, prompt_len=args.prompt_len,
                     gen_len=args.gen_len, w_bits=args.w_bits, a_bits=args.a_bits, kv_bits=args.kv_bits,
                     flash_attention=args.flash_attention, conventions=args.conventions,
                     check_context=False if args.no_context_check else None)
        if args.json:
            print(g.summary().to_json(indent=2))
        else:
            print(repr(g))

    return run


@command("models", "list the model configs shipped with the book")
def _models_cmd(p: argparse.ArgumentParser):
    def run(args):
        from .analyzer import model_names, model_spec

        for name in model_names():
            print(repr(model_spec(name)))

    return run


@command("devices", "list the devices of the hardware registry")
def _devices_cmd(p: argparse.ArgumentParser):
    p.add_argument("--preset", default="datasheet", choices=["datasheet", "llm-viewer"])

    def run(args):
        from .hardware import device_names, get_device

        for name in device_names(args.preset):
            print(repr(get_device(name, preset=args.preset)))

    return run


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with one sub-parser per registered command."""
    for mod in _COMMAND_MODULES:
        importlib.import_module(mod)
    parser = argparse.ArgumentParser(prog="python -m unveiled", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (help_text, fn) in _COMMANDS.items():
        sp = sub.add_parser(name, help=help_text, description=help_text)
        sp.set_defaults(_run=fn(sp))
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point: parse ``argv`` and run the command; bad input exits with status 2 and a clear message."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        args._run(args)
    except (ValueError, TypeError) as exc:
        parser.exit(2, f"error: {exc}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
