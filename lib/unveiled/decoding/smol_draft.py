"""A tiny draft model for SmolLM2-135M: same tokenizer, a small fraction of the cost, distilled on Shakespeare.

Speculative decoding needs a draft that shares the target's vocabulary and costs a small fraction ``c`` of a
target step. The book's character models cannot draft for SmolLM2 (different tokenizer), so this module
trains one: a 2-block LLaMA-style decoder (h = 128) over SmolLM2's byte-level BPE tokens. To stay a few MB it
keeps only the ``4096`` most frequent SmolLM2 tokens of the Tiny Shakespeare training split (most of the
validation tokens) plus one "other" id; :class:`SubVocabDraft` maps ids in and scatters its logits back into
SmolLM2's 49,152-token vocabulary (other tokens get probability 0, which speculative sampling allows: any
``q`` keeps the output exact, a poor ``q`` only lowers acceptance).

Training is distillation [Hinton et al. 2015] from SmolLM2 itself: every training window is scored once by
the teacher (its top-8 next-token probabilities, :func:`unveiled.distill.build_teacher_cache`), and the draft
minimises ``(1 − a)·CE(text) + a·CE(teacher top-k)`` for a fixed number of steps (DistillSpec's point: align
the draft with the target, not with the data [Zhou et al. 2024]). Run it with
``python -m unveiled.decoding.smol_draft train``; the weights ship in ``data/models/smol-draft.safetensors``
(fp16) with a JSON/markdown model card. Introduced in Chapter 7.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import hashlib
import json
import os
import pathlib
import time
from collections import Counter
from dataclasses import asdict, dataclass

import pandas as pd
import torch

from .._validate import check_int
from ..distill import build_teacher_cache, text_windows
from ..models import Decoder, DecoderConfig, model_from_state
from ..session import progress_bar
from ..threads import torch_threads
from ..training import TrainingRecipe, make_optimizer, optimizer_step

__all__ = [
    "DRAFT_CONFIG",
    "DRAFT_SETTINGS",
    "DraftTrainSettings",
    "SubVocabDraft",
    "build_draft_vocabulary",
    "load_smol_draft",
    "smol_draft_card",
    "train_smol_draft",
]

STEM = "smol-draft"
#: Kept SmolLM2 tokens (the draft's vocabulary is these plus one "other" id).
DRAFT_VOCAB = 4096

#: The draft's architecture: LLaMA-style, 2 blocks, h = 128, GQA 4/2 heads, vocabulary 4096 + 1.
DRAFT_CONFIG = DecoderConfig(
    vocab_size=DRAFT_VOCAB + 1, hidden_size=128, num_layers=2, num_heads=4, num_kv_heads=2,
    intermediate_size=352, max_seq_len=256, rope_theta=10_000.0, name="smol-draft",
)


@dataclass(frozen=True)
class DraftTrainSettings(TrainingRecipe):
    """How the SmolLM2 draft is trained: the book's recipe (:class:`~unveiled.training.TrainingRecipe`) for
    ``steps`` steps of ``batch_size`` windows of ``seq_len`` tokens, with distillation weight ``kd_weight`` on
    the teacher's ``top_k`` probabilities (renormalised over the kept tokens). The teacher scores every
    ``teacher_every``-th window (its pass is the expensive part); the others train on the text alone."""

    steps: int = 1500
    batch_size: int = 32
    seq_len: int = 128
    kd_weight: float = 0.7
    top_k: int = 8
    teacher_batch: int = 8
    teacher_every: int = 6


DRAFT_SETTINGS = DraftTrainSettings()




def _train_tokens() -> list[int]:
    from ..smollm2 import smollm2_tokenizer
    from ..text import corpus_split

    return smollm2_tokenizer().encode(corpus_split("train"))


def build_draft_vocabulary(tokens: list[int], size: int = DRAFT_VOCAB) -> list[int]:
    """The ``size`` most frequent token ids of ``tokens`` (ties broken by the smaller id), most frequent first.

    Introduced in Chapter 7.
    """
    size = check_int("size", size)
    counts = Counter(int(t) for t in tokens)
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]


class SubVocabDraft:
    """A small decoder over a subset of a big vocabulary, seen from outside as a full-vocabulary model.

    ``vocab_map[i]`` is the full-vocabulary id of draft id ``i``; every other full id enters as the extra
    "other" id (the last one). Calling it returns logits ``[B, T, full_vocab]`` with ``-inf`` outside the
    kept tokens, so :class:`~unveiled.decoding.ModelDraft` and speculative sampling use it unchanged.
    Introduced in Chapter 7.
    """

    def __init__(self, model: Decoder, vocab_map: torch.Tensor, full_vocab_size: int):
        if model.config.vocab_size != len(vocab_map) + 1:
            raise ValueError(f"the draft model has {model.config.vocab_size} ids; vocab_map has {len(vocab_map)} "
                             "(it needs one more, for 'other')")
        self.model = model
        self.vocab_map = torch.as_tensor(vocab_map, dtype=torch.long)
        self.full_vocab_size = check_int("full_vocab_size", full_vocab_size)
        if int(self.vocab_map.max()) >= full_vocab_size:
            raise ValueError("vocab_map holds ids beyond full_vocab_size")
        other = len(self.vocab_map)
        self.to_draft = torch.full((full_vocab_size,), other, dtype=torch.long)
        self.to_draft[self.vocab_map] = torch.arange(other)
        self.config = DecoderConfig(**{**model.config.to_dict(), "vocab_size": full_vocab_size,
                                       "name": model.config.name})

    def new_cache(self):
        return self.model.new_cache()

    def draft_logits(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        """Logits over the draft's own ids (kept tokens + "other")."""
        return self.model(self.to_draft[tokens], cache)

    def __call__(self, tokens: torch.Tensor, cache=None) -> torch.Tensor:
        small = self.draft_logits(tokens, cache)[..., :-1]
        out = torch.full((*small.shape[:-1], self.full_vocab_size), float("-inf"), dtype=small.dtype)
        out[..., self.vocab_map] = small
        return out

    def num_parameters(self) -> int:
        return self.model.num_parameters()


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


def _teacher_targets(windows: torch.Tensor, s: DraftTrainSettings, cache_path: pathlib.Path | None,
                     progress: bool) -> tuple[torch.Tensor, torch.Tensor, float]:
    """Teacher top-k (ids, log-probs) for every window, computed once and optionally kept in a file."""
    from safetensors.torch import load_file, save_file

    if cache_path is not None and cache_path.is_file():
        data = load_file(str(cache_path))
        if data["indices"].shape[0] == windows.shape[0] and torch.equal(data["windows"], windows):
            return data["indices"].long(), data["log_probs"].float(), float(data["time_s"])
    from ..smollm2 import load_smollm2

    teacher = load_smollm2(progress=progress)
    tc = build_teacher_cache(teacher, windows, torch.arange(len(windows)), k=s.top_k, batch_size=s.teacher_batch,
                             progress=progress)
    idx, logp = tc.targets.indices.long(), tc.targets.log_probs.float()
    if cache_path is not None:
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"indices": idx.to(torch.int32).contiguous(), "log_probs": logp.half().contiguous(),
                   "windows": windows.contiguous(), "time_s": torch.tensor(tc.time_s)}, str(cache_path))
    return idx, logp, tc.time_s


@dataclass
class DraftTrainResult:
    """The trained draft (wrapped), its per-step log, the time and the settings."""

    draft: SubVocabDraft
    log: pd.DataFrame
    time_s: float
    teacher_time_s: float
    settings: DraftTrainSettings


def train_smol_draft(settings: DraftTrainSettings = DRAFT_SETTINGS, teacher_cache: str | os.PathLike | None = None,
                     stop_after: int | None = None, progress: bool = True) -> DraftTrainResult:
    """Train the SmolLM2 draft from scratch by ``settings`` (deterministic for a machine and thread count).

    Windows of ``seq_len + 1`` SmolLM2 tokens cover the Tiny Shakespeare training split without overlap; the
    teacher's top-k targets for all of them are computed first (the slow part: one SmolLM2 pass over ~300 k
    tokens; ``teacher_cache`` keeps them in a safetensors file for reruns). ``stop_after`` ends early without
    changing the schedule. Introduced in Chapter 7.
    """
    s = settings
    steps = s.steps if stop_after is None else check_int("stop_after", stop_after, maximum=s.steps)
    tokens = _train_tokens()
    vocab_map = torch.tensor(build_draft_vocabulary(tokens, DRAFT_VOCAB))
    windows = text_windows(tokens, s.seq_len)
    labelled = torch.arange(0, len(windows), s.teacher_every)
    t_idx, t_logp, teacher_time = _teacher_targets(
        windows[labelled], s, None if teacher_cache is None else pathlib.Path(teacher_cache), progress)
    from ..smollm2 import SMOLLM2_CONFIG

    wrap = SubVocabDraft(Decoder(DRAFT_CONFIG, seed=s.seed), vocab_map, SMOLLM2_CONFIG.vocab_size)
    model = wrap.model
    other = DRAFT_VOCAB
    d_windows = wrap.to_draft[windows]
    # teacher targets in draft ids; tokens outside the kept set get weight 0 and the rest is renormalised
    kd_ids = torch.full((len(windows), s.seq_len, s.top_k), other, dtype=torch.long)
    kd_w = torch.zeros(len(windows), s.seq_len, s.top_k)
    kd_ids[labelled] = wrap.to_draft[t_idx]
    kd_w[labelled] = torch.exp(t_logp[..., : s.top_k]) * (kd_ids[labelled] != other)
    kd_w = kd_w / kd_w.sum(-1, keepdim=True).clamp_min(1e-12)
    has_kd = torch.zeros(len(windows), dtype=torch.bool)
    has_kd[labelled] = True
    model.train()
    opt = make_optimizer(model, s)
    gen = torch.Generator().manual_seed(s.seed)
    bar = None
    if progress:
        bar = progress_bar(total=steps, desc="training the SmolLM2 draft", leave=False)
    rows = []
    t0 = time.perf_counter()
    for step in range(steps):
        ids = torch.randint(0, len(windows), (s.batch_size,), generator=gen)
        x, y = d_windows[ids, :-1], d_windows[ids, 1:]
        logp = torch.log_softmax(model(x).float(), -1)
        ce = -logp.gather(-1, y[..., None]).mean()
        rows_kd = has_kd[ids]
        kd = (-(logp[rows_kd].gather(-1, kd_ids[ids][rows_kd]) * kd_w[ids][rows_kd]).sum(-1).mean()
              if bool(rows_kd.any()) else logp.new_zeros(()))
        loss = (1 - s.kd_weight) * ce + s.kd_weight * kd
        lr = optimizer_step(model, opt, loss, s, step)
        rows.append({"step": step + 1, "lr": lr, "loss": loss.item(), "ce": ce.item(), "kd": kd.item()})
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{rows[-1]['loss']:.3f}")
    if bar is not None:
        bar.close()
    model.eval()
    return DraftTrainResult(wrap, pd.DataFrame(rows), time.perf_counter() - t0, teacher_time, s)


# --------------------------------------------------------------------------------------------------
# Shipped weights
# --------------------------------------------------------------------------------------------------


def smol_draft_card() -> dict:
    """The model card of the shipped SmolLM2 draft (config, recipe, losses, acceptance, machine) as a dict.

    Introduced in Chapter 7.
    """
    from ..datafiles import data_file

    return json.loads(data_file(f"models/{STEM}.json").read_text())


def load_smol_draft(verify: bool = True) -> SubVocabDraft:
    """Load the shipped SmolLM2 draft (fp16 safetensors → fp32), wrapped as a full-vocabulary model.

    With ``verify`` the file's SHA-256 is checked against its card first. Introduced in Chapter 7.
    """
    from safetensors.torch import load

    from ..datafiles import data_file
    from ..smollm2 import SMOLLM2_CONFIG

    raw = data_file(f"models/{STEM}.safetensors").read_bytes()
    if verify:
        digest = hashlib.sha256(raw).hexdigest()
        want = smol_draft_card()["weights_sha256"]
        if digest != want:
            raise ValueError(f"models/{STEM}.safetensors is corrupt or was replaced (sha256 {digest[:16]}..., card "
                             f"says {want[:16]}...); retrain with `python -m unveiled.decoding.smol_draft train`")
    state = {k: v.float() if v.is_floating_point() else v for k, v in load(raw).items()}
    vocab_map = state.pop("vocab_map").long()
    model = model_from_state(DRAFT_CONFIG, state, source=f"{STEM}.safetensors")
    return SubVocabDraft(model, vocab_map, SMOLLM2_CONFIG.vocab_size)


def _card_markdown(info: dict) -> str:
    tr = info["training"]
    return "\n".join([
        f"# Model card: {info['name']}",
        "",
        info["description"],
        "",
        "## Architecture",
        "",
        "LLaMA-style decoder (`unveiled.models.Decoder`), tied embedding/head, over SmolLM2's BPE tokens:",
        f"the {DRAFT_VOCAB} most frequent tokens of the Tiny Shakespeare training split plus one 'other' id "
        "(`vocab_map` in the file gives the SmolLM2 id of each draft id).",
        "",
        "| field | value |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in info["config"].items()],
        f"| parameters | {info['parameters']:,} |",
        "",
        "## Training",
        "",
        f"{tr['steps']} steps of {tr['batch_size']}×{tr['seq_len']} tokens from non-overlapping windows of the "
        f"training split; loss (1 − {tr['kd_weight']})·CE(text) + {tr['kd_weight']}·CE(SmolLM2 top-{tr['top_k']}, "
        f"renormalised over kept tokens); AdamW lr {tr['lr']}, cosine schedule, seed {tr['seed']}.",
        "Reproduce with `python -m unveiled.decoding.smol_draft train`.",
        "",
        f"- teacher pass: {info['teacher_time_s']:.0f} s; training: {info['train_time_s']:.0f} s on "
        f"{info['machine']} (shared machine: wall times are indicative only)",
        f"- date: {info['date']}; versions: {', '.join(f'{k} {v}' for k, v in info['versions'].items())}",
        "",
        "## Quality as a draft",
        "",
        f"Teacher-forced on the first {info['eval']['tokens']:,} SmolLM2 tokens of the validation split: greedy "
        f"agreement with SmolLM2 (arg-max equal) **{info['eval']['greedy_agreement']:.3f}**, expected acceptance "
        f"at temperature 1 (Σ min(p, q)) **{info['eval']['acceptance_t1']:.3f}**; cross-entropy on the text "
        f"{info['eval']['ce_nats']:.3f} nats/token (kept tokens only).",
        "",
        "## Files",
        "",
        f"- `{info['file']}`: fp16 safetensors, sha256 `{info['weights_sha256']}`",
        "",
        "Licence: Apache-2.0 (distilled from SmolLM2-135M-Instruct, Apache-2.0; text in the public domain).",
        "",
    ])


@torch.inference_mode()
def evaluate_draft(draft: SubVocabDraft, teacher, tokens: list[int], window: int = 128) -> dict:
    """Teacher-forced agreement of the draft with the target on ``tokens``: greedy agreement, expected
    acceptance at temperature 1, and the draft's cross-entropy on the kept tokens. Introduced in Chapter 7."""
    n = (len(tokens) // (window + 1)) * (window + 1)
    w = torch.tensor(tokens[:n]).reshape(-1, window + 1)
    agree, acc, ce, count, ce_count = 0.0, 0.0, 0.0, 0, 0
    for i in range(0, len(w), 8):
        x, y = w[i:i + 8, :-1], w[i:i + 8, 1:]
        tl, dl = teacher(x).float(), draft(x).float()
        agree += float((tl.argmax(-1) == dl.argmax(-1)).sum())
        acc += float(torch.minimum(tl.softmax(-1), dl.softmax(-1)).sum(-1).sum())
        count += y.numel()
        logp = torch.log_softmax(draft.draft_logits(x).float(), -1)
        yd = draft.to_draft[y]
        kept = yd != len(draft.vocab_map)
        ce -= float(logp.gather(-1, yd[..., None])[..., 0][kept].sum())
        ce_count += int(kept.sum())
    return {"tokens": count, "greedy_agreement": agree / count, "acceptance_t1": acc / count,
            "ce_nats": ce / max(1, ce_count)}


def _write_shipped(result: DraftTrainResult, out: pathlib.Path, eval_tokens: int = 4096) -> dict:
    from safetensors.torch import save_file

    from ..environment import git_revision, machine_record
    from ..smollm2 import load_smollm2, smollm2_tokenizer
    from ..text import corpus_split
    from ..zoo import _versions

    out.mkdir(parents=True, exist_ok=True)
    path = out / f"{STEM}.safetensors"
    state = {k: v.detach().half().contiguous() for k, v in result.draft.model.state_dict().items()
             if k != "lm_head.weight"}
    state["vocab_map"] = result.draft.vocab_map.to(torch.int32)
    save_file(state, str(path), metadata={"config": json.dumps(DRAFT_CONFIG.to_dict()), "format": "unveiled.SubVocabDraft"})
    teacher = load_smollm2(progress=False)
    val = smollm2_tokenizer().encode(corpus_split("val"))[:eval_tokens + eval_tokens // 128 + 1]
    ev = evaluate_draft(result.draft, teacher, val)
    info = {
        "name": STEM,
        "description": "Draft model for speculative decoding with SmolLM2-135M-Instruct (Inference Unveiled, "
                       "Chapter 7): shares SmolLM2's tokenizer, distilled from it on Tiny Shakespeare.",
        "file": path.name,
        "weights_sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
        "dtype": "float16",
        "parameters": result.draft.num_parameters(),
        "config": DRAFT_CONFIG.to_dict(),
        "kept_tokens": DRAFT_VOCAB,
        "training": {**asdict(result.settings), "steps": len(result.log)},
        "teacher_time_s": round(result.teacher_time_s, 1),
        "train_time_s": round(result.time_s, 1),
        "machine": machine_record(),
        "versions": _versions(),
        "git": git_revision(),
        "date": _dt.date.today().isoformat(),
        "final_loss": {k: round(float(result.log[k].tail(50).mean()), 4) for k in ("loss", "ce", "kd")},
        "curve": [{"step": int(r.step), "loss": round(float(r.loss), 4)} for r in result.log.itertuples()
                  if r.step % 50 == 0],
        "eval": ev,
    }
    (out / f"{STEM}.json").write_text(json.dumps(info, indent=1) + "\n")
    (out / f"{STEM}.md").write_text(_card_markdown(info))
    return info


def main(argv: list[str] | None = None) -> int:
    """``python -m unveiled.decoding.smol_draft train [--threads 2] [--out data/models] [--teacher-cache F]``."""
    parser = argparse.ArgumentParser(prog="python -m unveiled.decoding.smol_draft", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("train", help="distil the draft from SmolLM2 and write its weights and card")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="data/models")
    p.add_argument("--teacher-cache", default=None, help="safetensors file keeping the teacher's top-k targets")
    p.add_argument("--teacher-only", action="store_true", help="only compute (and cache) the teacher targets")
    args = parser.parse_args(argv)
    with torch_threads(args.threads):  # the whole command, restored when it returns
        if args.teacher_only:
            windows = text_windows(_train_tokens(), DRAFT_SETTINGS.seq_len)
            windows = windows[torch.arange(0, len(windows), DRAFT_SETTINGS.teacher_every)]
            _, _, t = _teacher_targets(windows, DRAFT_SETTINGS, pathlib.Path(args.teacher_cache), True)
            print(f"teacher targets for {len(windows)} windows in {t:.0f} s -> {args.teacher_cache}")
            return 0
        result = train_smol_draft(teacher_cache=args.teacher_cache)
        info = _write_shipped(result, pathlib.Path(args.out))
        print(f"{STEM}: {len(result.log)} steps in {result.time_s:.0f} s; greedy agreement "
              f"{info['eval']['greedy_agreement']:.3f}, acceptance(T=1) {info['eval']['acceptance_t1']:.3f} -> {args.out}")
        return 0


if __name__ == "__main__":
    raise SystemExit(main())
