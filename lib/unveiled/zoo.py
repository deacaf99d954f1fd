"""The book's tiny models: two character-level LLaMA-style decoders trained on Tiny Shakespeare, shipped.

"S" (0.38 M parameters: h=128, 2 layers, 4 heads, 2 key/value heads) is the draft/student and "M" (1.64 M:
h=192, 4 layers, 6 heads, 3 key/value heads) the target/teacher. They are small enough that every experiment
in the book (quantize, evaluate, decode, distil) runs in seconds on a 2-core CPU, and real enough that the
effects are measurable. Their weights ship in ``data/models/`` as fp16 safetensors with a model card (JSON
and markdown) saying how they were made.

Training is deterministic and counted in steps, never seconds (shared machines vary 2×): a seeded
initialisation, a seeded batch stream (``16 × 256`` characters per step), AdamW [Loshchilov & Hutter 2019]
with β = (0.9, 0.95), weight decay 0.1 on matrices, gradient clipping at 1.0 and a cosine schedule with 3 %
linear warm-up. ``python -m unveiled.zoo train S`` reproduces a shipped checkpoint; the card stores the
training losses of the first steps, which a test re-derives. Introduced in the appendix "The models in this
book".
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import math
import pathlib
import sys
import time
from dataclasses import asdict, dataclass, field

import pandas as pd
import torch

from ._validate import check_int, unknown_name
from .datafiles import data_file
from .evaluation import perplexity
from .models import Decoder, DecoderConfig, load_model, save_model
from .session import progress_bar
from .text import corpus_split, shakespeare_tokenizer
from .threads import torch_threads
from .training import TrainingRecipe, lr_at, make_optimizer, optimizer_step

__all__ = [
    "ZOO",
    "TrainResult",
    "TrainSettings",
    "ZooEntry",
    "card",
    "load",
    "lr_at",
    "model_card_markdown",
    "train",
    "val_loss",
    "zoo_names",
]


@dataclass(frozen=True)
class TrainSettings(TrainingRecipe):
    """How a zoo model is trained: the book's recipe (:class:`~unveiled.training.TrainingRecipe`: steps,
    AdamW, schedule, clipping, seed) plus the batch shape and when to evaluate."""

    batch_size: int = 16
    seq_len: int = 256
    eval_every: int = 100
    eval_chars: int = 16_384
    check_steps: tuple[int, ...] = (10, 20, 30)


@dataclass(frozen=True)
class ZooEntry:
    """A registered tiny model: its architecture, its training recipe and the stem of its files."""

    name: str
    config: DecoderConfig
    settings: TrainSettings
    stem: str
    role: str
    notes: str = field(default="")


_VOCAB = 65  # distinct characters of Tiny Shakespeare (checked by the tests)

ZOO: dict[str, ZooEntry] = {
    "S": ZooEntry(
        name="S",
        config=DecoderConfig(
            vocab_size=_VOCAB, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
            intermediate_size=352, max_seq_len=256, name="tiny-s",
        ),
        settings=TrainSettings(steps=800, lr=3e-3),
        stem="tiny-s",
        role="draft model (speculative decoding) and student (distillation)",
    ),
    "M": ZooEntry(
        name="M",
        config=DecoderConfig(
            vocab_size=_VOCAB, hidden_size=192, num_layers=4, num_heads=6, num_kv_heads=3,
            intermediate_size=512, max_seq_len=256, name="tiny-m",
        ),
        settings=TrainSettings(steps=1200, lr=2e-3),
        stem="tiny-m",
        role="target model (speculative decoding) and teacher (distillation)",
    ),
}


def zoo_names() -> list[str]:
    """Names of the tiny models (``"S"``, ``"M"``)."""
    return list(ZOO)


def _entry(name: str | ZooEntry) -> ZooEntry:
    if isinstance(name, ZooEntry):
        return name
    if not isinstance(name, str):
        raise TypeError(f"model name must be a str such as 'S', got {type(name).__name__}")
    key = name.upper() if name.upper() in ZOO else {e.stem: k for k, e in ZOO.items()}.get(name.lower())
    if key is None:
        raise unknown_name("zoo model", name, ZOO)
    return ZOO[key]


@dataclass
class TrainResult:
    """A trained model, its per-step log (``step``, ``lr``, ``train_loss``, ``val_loss``) and the time taken."""

    model: Decoder
    log: pd.DataFrame
    time_s: float
    steps: int
    entry: ZooEntry


def val_loss(model: Decoder, max_chars: int | None = None, window: int = 256) -> float:
    """Validation loss in nats per character on Tiny Shakespeare's last 10 % (or its first ``max_chars``).

    Introduced in the appendix "The models in this book".
    """
    text = corpus_split("val")
    if max_chars is not None:
        text = text[:max_chars]
    was_training = model.training
    model.eval()
    result = perplexity(model, shakespeare_tokenizer().encode(text), window=window, batch_size=16)
    model.train(was_training)
    return result.nll


def train(
    name: str | ZooEntry,
    stop_after: int | None = None,
    progress: bool = True,
    evaluate: bool = True,
) -> TrainResult:
    """Train zoo model ``name`` from scratch by its recipe; deterministic for a given machine and thread count.

    ``stop_after`` ends the run early *without* changing the schedule (the tests retrain a few steps of the
    real run). Losses are per-character cross-entropy in nats. Introduced in the appendix "The models in this
    book".
    """
    entry = _entry(name)
    s = entry.settings
    steps = s.steps if stop_after is None else check_int("stop_after", stop_after, maximum=s.steps)
    tok = shakespeare_tokenizer()
    if tok.vocab_size != entry.config.vocab_size:
        raise ValueError(f"corpus has {tok.vocab_size} characters, config expects {entry.config.vocab_size}")
    data = torch.tensor(tok.encode(corpus_split("train")), dtype=torch.long)
    model = Decoder(entry.config, seed=s.seed)
    model.train()
    opt = make_optimizer(model, s)
    gen = torch.Generator().manual_seed(s.seed)
    from .text import random_batch

    rows = []
    bar = None
    if progress:
        bar = progress_bar(total=steps, desc=f"training {entry.name}")
    t0 = time.perf_counter()
    for step in range(steps):
        x, y = random_batch(data, s.batch_size, s.seq_len, gen)
        logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))
        lr = optimizer_step(model, opt, loss, s, step)
        row = {"step": step + 1, "lr": lr, "train_loss": loss.item(), "val_loss": float("nan")}
        if evaluate and ((step + 1) % s.eval_every == 0 or step + 1 == steps):
            with torch.no_grad():
                row["val_loss"] = val_loss(model, max_chars=s.eval_chars)
        rows.append(row)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{row['train_loss']:.3f}")
    elapsed = time.perf_counter() - t0
    if bar is not None:
        bar.close()
    model.eval()
    return TrainResult(model=model, log=pd.DataFrame(rows), time_s=elapsed, steps=steps, entry=entry)


# --------------------------------------------------------------------------------------------------
# Shipped weights and cards
# --------------------------------------------------------------------------------------------------


def card(name: str) -> dict:
    """The model card of a shipped zoo model (config, recipe, losses, time, machine, versions) as a dict.

    Introduced in the appendix "The models in this book".
    """
    entry = _entry(name)
    return json.loads(data_file(f"models/{entry.stem}.json").read_text())


def load(name: str, verify: bool = True) -> Decoder:
    """Load shipped zoo model ``"S"`` or ``"M"`` (fp16 safetensors → fp32 :class:`Decoder`, eval mode).

    With ``verify`` the file's SHA-256 is checked against the card first, so a damaged file fails with a
    clear message instead of producing wrong numbers. Introduced in the appendix "The models in this book".
    """
    from importlib.resources import as_file

    entry = _entry(name)
    info = card(entry.name)
    node = data_file(f"models/{entry.stem}.safetensors")
    if verify:
        digest = hashlib.sha256(node.read_bytes()).hexdigest()
        if digest != info["weights_sha256"]:
            raise ValueError(
                f"models/{entry.stem}.safetensors is corrupt or was replaced: sha256 {digest}, "
                f"card says {info['weights_sha256']}. Retrain with `python -m unveiled.zoo train {entry.name}`."
            )
    with as_file(node) as path:
        return load_model(path, entry.config)


def _versions() -> dict[str, str]:
    import numpy

    from . import __version__

    return {
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "unveiled": __version__,
    }


def _git() -> dict | None:
    from .environment import git_revision

    return git_revision()


def _machine() -> dict:
    from .environment import machine_record

    return machine_record()


def model_card_markdown(info: dict) -> str:
    """Render a model card dict as markdown (the ``.md`` file next to the weights)."""
    cfg = info["config"]
    tr = info["training"]
    lines = [
        f"# Model card: {info['name']} ({cfg['name']})",
        "",
        f"{info['description']}",
        "",
        "## Architecture",
        "",
        "LLaMA-style decoder (`unveiled.models.Decoder`): RMSNorm, RoPE (rotate-half), SwiGLU MLP, grouped-query "
        "attention, tied embedding/head, no biases.",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in cfg.items()],
        f"| parameters | {info['parameters']:,} |",
        "",
        "## Training",
        "",
        f"Character-level on Tiny Shakespeare (first 90 %), {tr['steps']} steps of {tr['batch_size']}×{tr['seq_len']} "
        f"characters, AdamW lr {tr['lr']} (β {tuple(tr['betas'])}, weight decay {tr['weight_decay']}), clip "
        f"{tr['grad_clip']}, cosine schedule with {tr['warmup_fraction']:.0%} warm-up, seed {tr['seed']}.",
        f"Reproduce with `python -m unveiled.zoo train {info['name']} --threads {info['machine']['torch_threads']}`.",
        "",
        f"- training time: {info['train_time_s']:.0f} s on {info['machine']['cpu']} "
        f"({info['machine']['torch_threads']} torch threads, shared machine: wall time is indicative only)",
        f"- date: {info['date']}",
        f"- versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        "",
        "## Quality",
        "",
        f"Validation (last 10 % of Tiny Shakespeare, {info['val']['chars']:,} characters, non-overlapping "
        f"256-character windows): **{info['val']['nats_per_char']:.4f} nats/char** "
        f"(perplexity {info['val']['perplexity']:.3f}, {info['val']['bits_per_char']:.3f} bits/char).",
        "",
        "## Files",
        "",
        f"- `{info['file']}`: fp16 safetensors, sha256 `{info['weights_sha256']}`",
        "",
        "Licence: MIT (weights trained by this project on public-domain text).",
        "",
    ]
    return "\n".join(lines)


def _write_shipped(result: TrainResult, out: pathlib.Path) -> dict:
    entry = result.entry
    model = result.model
    out.mkdir(parents=True, exist_ok=True)
    weights = out / f"{entry.stem}.safetensors"
    save_model(model, weights, metadata={"name": entry.name, "steps": result.steps})
    tok = shakespeare_tokenizer()
    val_text = corpus_split("val")
    # The card reports the weights as shipped (fp16, reloaded), and the fp32 loss for comparison.
    shipped = load_model(weights, entry.config)
    res = perplexity(shipped, tok.encode(val_text), window=256, batch_size=16)
    res32 = perplexity(model, tok.encode(val_text), window=256, batch_size=16)
    log = result.log
    checks = [int(c) for c in entry.settings.check_steps if c <= result.steps]
    curve = log[(log.step % 10 == 0) | log.val_loss.notna()]
    info = {
        "name": entry.name,
        "description": f"Tiny character-level LLaMA-style model '{entry.name}' of Inference Unveiled: {entry.role}.",
        "file": weights.name,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "dtype": "float16",
        "parameters": model.num_parameters(),
        "config": entry.config.to_dict(),
        "tokenizer": json.loads(tok.to_json()),
        "training": {**asdict(entry.settings), "steps": result.steps, "tokens_seen":
                     result.steps * entry.settings.batch_size * entry.settings.seq_len},
        "train_time_s": round(result.time_s, 1),
        "machine": _machine(),
        "versions": _versions(),
        "git": _git(),
        "date": _dt.date.today().isoformat(),
        "val": {"chars": len(val_text), "predicted_chars": res.tokens, "nats_per_char": res.nll,
                "perplexity": res.perplexity, "bits_per_char": res.bits_per_token, "window": 256,
                "nats_per_char_fp32_before_export": res32.nll},
        "reproducibility": {
            "check_steps": checks,
            "train_loss": [float(log.train_loss.iloc[c - 1]) for c in checks],
            "tolerance": 2e-3,
            "note": "training losses of the first steps of this run; tests retrain them with "
                    "unveiled.zoo.train(name, stop_after=...) and compare within the tolerance "
                    "(float results differ slightly across CPUs and thread counts)",
        },
        "curve": [
            {"step": int(r.step), "train_loss": round(float(r.train_loss), 5),
             "val_loss_16k": None if math.isnan(r.val_loss) else round(float(r.val_loss), 5)}
            for r in curve.itertuples()
        ],
    }
    (out / f"{entry.stem}.json").write_text(json.dumps(info, indent=1) + "\n")
    (out / f"{entry.stem}.md").write_text(model_card_markdown(info))
    return info


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m unveiled.zoo train S [--threads 2] [--out data/models]``."""
    parser = argparse.ArgumentParser(prog="python -m unveiled.zoo", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="train a zoo model from scratch and write its weights and card")
    p.add_argument("name", choices=zoo_names())
    p.add_argument("--threads", type=int, default=2, help="torch threads (default 2, as for the shipped files)")
    p.add_argument("--out", default="data/models", help="output folder (default data/models)")
    p.add_argument("--steps", type=int, default=None, help="stop after this many steps (schedule unchanged)")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):  # the whole command, restored when it returns
        result = train(args.name, stop_after=args.steps)
        info = _write_shipped(result, pathlib.Path(args.out))
        print(f"{args.name}: {result.steps} steps in {result.time_s:.0f} s, val {info['val']['nats_per_char']:.4f} "
              f"nats/char -> {args.out}/{info['file']}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
