"""The book's distillation experiments: student S distilled from teacher M on Tiny Shakespeare, and
black-box distillation from SmolLM2-135M into S.

Nine tiny runs (data only, forward and reverse KL, JSD, TV, black-box, on-policy GKD) share one seeded
initialisation, one batch schedule and one teacher cache; their curves and students are cached
(``python -m unveiled.results run distill.tiny_runs``), evaluated (``distill.tiny_eval``), and the chapter
reruns two short runs live (``distill.live_check``). The experiments register under ``distill.<name>``
(the package names them, as ``quant.<name>``). Introduced in Chapter 4.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from importlib.resources import as_file

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from .._validate import check_int, unknown_name
from ..datafiles import data_file
from ..evaluation import perplexity
from ..generation import generate
from ..models import Decoder, load_model, save_model
from ..results import cached, experiment
from ..session import progress_bar
from ..text import corpus_split, shakespeare_tokenizer
from ..threads import torch_threads
from ..zoo import ZOO, card, load
from .acceptance import expected_acceptance
from .data import TeacherCache, batch_schedule, build_teacher_cache, teacher_samples, text_windows
from .loop import DistillResult, DistillSettings, distill

__all__ = [
    "EXPERIMENT_THREADS",
    "LIVE_SETTINGS",
    "ROUNDING_SEEDS",
    "TINY_BASE",
    "TINY_RUNS",
    "TINY_SEQ_LEN",
    "TinyRun",
    "live_check",
    "live_runs",
    "load_student",
    "smollm2_blackbox",
    "smollm2_continuations",
    "step_costs",
    "student_report",
    "tiny_data",
    "tiny_eval",
    "tiny_runs",
    "tiny_sample_windows",
    "tiny_val_loss",
    "train_tiny_run",
]

# --------------------------------------------------------------------------------------------------
# The book's experiment: student S distilled from teacher M on Tiny Shakespeare
# --------------------------------------------------------------------------------------------------

def _experiment(name: str, description: str):
    """Register under ``distill.<name>`` (the package, not this sub-module, names the cached tables)."""
    return experiment(name, description, module="distill")


#: Torch threads of the cached experiments. One: on a shared 2-core machine, two OpenMP threads that spin while
#: waiting for each other were measured ten times slower than one thread for these small tensors.
EXPERIMENT_THREADS = 1

#: Context of the tiny distillation runs (characters per training window).
TINY_SEQ_LEN = 128
#: Shared settings of the tiny runs: 400 steps of 16 × 128 characters (819,200 characters, under one pass
#: over the training split), the zoo's optimiser, and α = 0.9 for the white-box runs (mostly teacher, a
#: little ground truth).
TINY_BASE = DistillSettings(steps=400, lr=3e-3, batch_size=16, alpha=0.0, top_k=16, eval_every=100)


@dataclass(frozen=True)
class TinyRun:
    """One run of the tiny distillation experiment: a name, what it is, its settings and its data."""

    name: str
    method: str
    settings: DistillSettings
    data: str = "text"  # "text": Tiny Shakespeare windows; "teacher_samples": M's continuations (black-box)
    description: str = ""


def _tiny_runs() -> dict[str, TinyRun]:
    kd = replace(TINY_BASE, alpha=0.9)
    runs = [
        TinyRun("data-400", "data only", TINY_BASE, description="cross-entropy on the text, 400 steps"),
        TinyRun("data-800", "data only", replace(TINY_BASE, steps=800),
                description="cross-entropy on the text, 800 steps (the cost of a KD run with a live teacher)"),
        TinyRun("fkl-online", "forward KL (full logits, live teacher)", replace(kd, teacher_mode="online", top_k=None),
                description="word-level KD, the teacher runs inside every step"),
        TinyRun("fkl", "forward KL", kd, description="word-level KD from the cached top-16"),
        TinyRun("rkl", "reverse KL", replace(kd, loss="reverse_kl"), description="MiniLLM's divergence, cached top-16"),
        TinyRun("jsd", "JSD (β = 0.5)", replace(kd, loss="jsd", beta=0.5), description="GKD's divergence, cached"),
        TinyRun("tv", "total variation", replace(kd, loss="tv"), description="DistillSpec's TVD, cached top-16"),
        TinyRun("seqkd", "teacher samples (black-box)", TINY_BASE, data="teacher_samples",
                description="cross-entropy on M's sampled continuations; no logits"),
        TinyRun("gkd", "on-policy JSD (λ = 0.5)",
                replace(kd, loss="jsd", beta=0.5, on_policy_fraction=0.5, prompt_len=96),
                description="GKD: on half the steps the student continues 96 characters of text by 32 of its "
                            "own, which the live teacher scores"),
    ]
    return {r.name: r for r in runs}


#: The runs of the tiny experiment, by name (see :func:`tiny_runs`).
TINY_RUNS: dict[str, TinyRun] = _tiny_runs()


def tiny_data(seq_len: int = TINY_SEQ_LEN) -> tuple[torch.Tensor, torch.Tensor]:
    """Tiny Shakespeare as fixed training windows ``[N, seq_len + 1]`` and the validation characters.

    Introduced in Chapter 4.
    """

    tok = shakespeare_tokenizer()
    train = torch.tensor(tok.encode(corpus_split("train")), dtype=torch.long)
    val = torch.tensor(tok.encode(corpus_split("val")), dtype=torch.long)
    return text_windows(train, seq_len), val


def tiny_val_loss(model: torch.nn.Module, val: torch.Tensor, max_chars: int | None = None,
                  window: int = TINY_SEQ_LEN) -> float:
    """Validation loss (nats per character) over fixed windows of the training context. Introduced in Chapter 4."""

    tokens = val if max_chars is None else val[:max_chars]
    return perplexity(model, tokens, window=window, batch_size=32).nll


def tiny_sample_windows(teacher, windows: torch.Tensor, n: int = 2048, prompt_len: int = 32, seed: int = 0,
                        progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """The black-box training set: ``n`` teacher continuations of ``prompt_len``-character prompts.

    Prompts are the starts of ``n`` seeded training windows; each continues at τ = 1 to the window length.
    Introduced in Chapter 4.
    """
    ids = torch.randperm(len(windows), generator=torch.Generator().manual_seed(seed))[:n]
    new = windows.shape[1] - prompt_len
    # Large batches: generation is one forward call per token, and on a CPU the per-call overhead dominates.
    return teacher_samples(teacher, windows[ids, :prompt_len], new, temperature=1.0, seed=seed, batch_size=256,
                           progress=progress)


def train_tiny_run(
    run: str | TinyRun,
    teacher: torch.nn.Module,
    windows: torch.Tensor,
    val: torch.Tensor,
    cache: TeacherCache | None = None,
    samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    settings: DistillSettings | None = None,
    progress: bool = True,
) -> DistillResult:
    """Train one run of the tiny experiment from the S architecture's seeded initialisation.

    ``settings`` overrides the run's own (the chapter's short live rerun). Every run starts from the same
    weights and, for text runs, reads the same batches. Introduced in Chapter 4.
    """

    spec = TINY_RUNS[run] if isinstance(run, str) and run in TINY_RUNS else run
    if not isinstance(spec, TinyRun):
        raise unknown_name("tiny distillation run", run, TINY_RUNS)
    s = settings or spec.settings
    student = Decoder(ZOO["S"].config, seed=s.seed)
    mask = None
    data = windows
    if spec.data == "teacher_samples":
        if samples is None:
            raise ValueError("the black-box run trains on teacher samples: pass samples=tiny_sample_windows(...)")
        data, mask = samples
    eval_chars = s.eval_chars
    return distill(student, data, s, teacher=teacher, cache=cache, mask=mask,
                   val_loss=lambda m: tiny_val_loss(m, val, eval_chars), progress=progress)


def _checkpoint_dir():

    return pathlib.Path("data") / "distill"


def load_student(run: str) -> torch.nn.Module:
    """A shipped student of the tiny experiment (fp16 safetensors → fp32 Decoder), e.g. ``"fkl"``.

    Introduced in Chapter 4.
    """


    if run not in TINY_RUNS:
        raise unknown_name("tiny distillation run", run, TINY_RUNS)
    node = data_file(f"distill/{run}.safetensors")
    with as_file(node) as path:
        return load_model(path)


@_experiment("tiny_runs", "Student S distilled from teacher M on Tiny Shakespeare: nine runs, curves, checkpoints")
@torch_threads(EXPERIMENT_THREADS)
def tiny_runs() -> pd.DataFrame:
    """Train every run of :data:`TINY_RUNS`; return their curves and save the students under data/distill/.

    One teacher cache (top-16 of M on exactly the windows the 400-step schedule reads) serves every cached
    run; its build time is reported once. Rows: ``run``, ``step``, ``loss``, ``ce``, ``kd``, ``time_s``
    (training loop, cumulative), ``val_loss_16k`` (first 16,384 validation characters, every 100 steps) and,
    on each run's last row, ``val_loss`` on the full validation split, ``teacher_time_s``, ``cache_time_s``
    and ``samples_time_s``. Run from the repository root. Introduced in Chapter 4.
    """

    teacher = load("M")
    windows, val = tiny_data()
    sched = batch_schedule(len(windows), TINY_BASE.steps, TINY_BASE.batch_size, TINY_BASE.seed)
    cache = build_teacher_cache(teacher, windows, sched, k=TINY_BASE.top_k, temperature=TINY_BASE.temperature)
    t0 = time.perf_counter()
    samples = tiny_sample_windows(teacher, windows)
    samples_time = time.perf_counter() - t0
    out = _checkpoint_dir()
    out.mkdir(parents=True, exist_ok=True)
    frames = []
    for name, spec in TINY_RUNS.items():
        res = train_tiny_run(spec, teacher, windows, val, cache=cache, samples=samples)
        log = res.log.rename(columns={"val_loss": "val_loss_16k"}).assign(run=name)
        for col in ("val_loss", "teacher_time_s", "cache_time_s", "samples_time_s"):
            log[col] = np.nan
        last = log.index[-1]
        log.loc[last, "val_loss"] = tiny_val_loss(res.model, val)
        log.loc[last, "teacher_time_s"] = res.teacher_time_s
        log.loc[last, "cache_time_s"] = res.cache_time_s
        log.loc[last, "samples_time_s"] = samples_time if spec.data == "teacher_samples" else 0.0
        frames.append(log)
        save_model(res.model, out / f"{name}.safetensors",
                   metadata={"run": name, "method": spec.method, "settings": res.summary()})
    cols = ["run", "step", "lr", "loss", "ce", "kd", "on_policy", "time_s", "val_loss_16k", "val_loss",
            "teacher_time_s", "cache_time_s", "samples_time_s"]
    out = pd.concat(frames, ignore_index=True)[cols]
    out["teacher_sha256"] = _teacher_sha()
    return out


def _teacher_sha() -> str:
    """The SHA-256 of the shipped teacher M the cached tables were made with (tests compare it with the card)."""

    return card("M")["weights_sha256"]


#: The chapter's short live rerun: 60 steps of 16 × 128 characters, plain vs forward KL from the cached top-16.
LIVE_SETTINGS = replace(TINY_BASE, steps=60, batch_size=16, eval_every=60, eval_chars=8192)


def live_runs(progress: bool = True) -> pd.DataFrame:
    """The short runs the chapter trains live (data only vs forward KL from M's cached top-16, 60 steps).

    Returns one row per run with the validation loss on the first 8,192 characters, the training-loop time
    and the cache build time. :func:`live_check` caches the same table, so the chapter (and a test) can put
    the live numbers next to the cached ones. Introduced in Chapter 4.
    """

    teacher = load("M")
    windows, val = tiny_data()
    s = LIVE_SETTINGS
    sched = batch_schedule(len(windows), s.steps, s.batch_size, s.seed)
    cache = build_teacher_cache(teacher, windows, sched, k=s.top_k, temperature=s.temperature, progress=progress)
    rows = []
    for name, settings in (("data-60", s), ("fkl-60", replace(s, alpha=0.9))):
        res = train_tiny_run("fkl" if settings.alpha else "data-400", teacher, windows, val, cache=cache,
                             settings=settings, progress=progress)
        rows.append({"run": name, "alpha": settings.alpha, "steps": settings.steps, "batch_size": settings.batch_size,
                     "val_loss_8k": res.final_val_loss, "final_train_loss": float(res.log.loss.iloc[-1]),
                     "time_s": res.time_s, "cache_time_s": res.cache_time_s if settings.alpha else 0.0,
                     "teacher_sha256": _teacher_sha()})
    return pd.DataFrame(rows)


@_experiment("live_check", "The chapter's short live distillation runs (60 steps), cached for comparison")
@torch_threads(EXPERIMENT_THREADS)
def live_check() -> pd.DataFrame:
    """:func:`live_runs`, cached. Introduced in Chapter 4."""
    return live_runs()


#: Perturbed reruns of the live runs in :func:`live_rounding`.
ROUNDING_SEEDS = 6


@_experiment("live_rounding", "How far rounding-level perturbations move the live runs' validation loss")
@torch_threads(EXPERIMENT_THREADS)
def live_rounding() -> pd.DataFrame:
    """The live runs unperturbed and under :data:`ROUNDING_SEEDS` seeded rounding-level perturbations of every
    embedding (:func:`~unveiled.evaluation.rounding_perturbation`): ``spread`` is the largest move of the
    validation loss, what 60 steps of training make of float32 differences between CPUs, and so the
    tolerance of a live rerun on another machine. Introduced in Chapter 4."""
    from ..evaluation import rounding_perturbation

    base = live_runs(progress=False).set_index("run").val_loss_8k
    moved = []
    for seed in range(1, ROUNDING_SEEDS + 1):
        with rounding_perturbation(seed):
            moved.append(live_runs(progress=False).set_index("run").val_loss_8k)
    moved = pd.concat(moved, axis=1)
    return pd.DataFrame({"run": base.index, "val_loss_8k": base.values, "val_loss_min": moved.min(axis=1).values,
                         "val_loss_max": moved.max(axis=1).values, "perturbed_runs": moved.shape[1],
                         "spread": (moved.sub(base, axis=0)).abs().max(axis=1).values})


def step_costs(
    teacher: torch.nn.Module,
    windows: torch.Tensor,
    settings: DistillSettings = TINY_BASE,
    steps: int = 3,
    rounds: int = 3,
    progress: bool = True,
) -> pd.DataFrame:
    """Time a training step of the S student three ways, interleaved so that machine noise hits all alike.

    Modes: ``plain`` (cross-entropy only), ``live teacher`` (the teacher's forward pass inside every step, full
    logits) and ``cached top-k`` (targets read from a cache built beforehand). Also times the teacher's
    inference pass over one batch, the one-off cost per batch of building the cache. Returns per mode the
    median and best seconds per step over ``rounds`` rounds of ``steps`` steps, and the ratio of medians to
    the plain step. Introduced in Chapter 4.
    """

    steps = check_int("steps", steps)
    rounds = check_int("rounds", rounds)
    s = replace(settings, steps=steps, eval_every=steps)
    sched = batch_schedule(len(windows), steps, s.batch_size, s.seed)
    cache = build_teacher_cache(teacher, windows, sched, k=s.top_k or 16, temperature=s.temperature, progress=False)
    modes = {"plain": replace(s, alpha=0.0),
             "live teacher": replace(s, alpha=0.9, teacher_mode="online", top_k=None),
             "cached top-k": replace(s, alpha=0.9, teacher_mode="cached", top_k=s.top_k or 16)}
    times: dict[str, list[float]] = {m: [] for m in [*modes, "teacher pass (cache build)"]}
    bar = None
    if progress:
        bar = progress_bar(total=rounds * (len(modes) + 1), desc="timing training steps", leave=False)
    for _ in range(rounds):
        for mode, ms in modes.items():
            res = distill(Decoder(ZOO["S"].config, seed=ms.seed), windows, ms, teacher=teacher, cache=cache,
                          schedule=sched, progress=False)
            times[mode].append(res.time_s / steps)
            if bar is not None:
                bar.update(1)
        t0 = time.perf_counter()
        build_teacher_cache(teacher, windows, sched[0], k=s.top_k or 16, temperature=s.temperature,
                            batch_size=s.batch_size, progress=False)
        times["teacher pass (cache build)"].append(time.perf_counter() - t0)
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    plain = float(np.median(times["plain"]))
    return pd.DataFrame([{"mode": m, "median_s": float(np.median(v)), "best_s": float(np.min(v)),
                          "ratio_to_plain": float(np.median(v)) / plain} for m, v in times.items()])


@_experiment("tiny_eval", "Tiny distillation students vs teacher M: val loss, entropy, precision, acceptance")
@torch_threads(EXPERIMENT_THREADS)
def tiny_eval() -> pd.DataFrame:
    """Evaluate the shipped students of :func:`tiny_runs` (and the teacher itself) with :func:`student_report`.

    Adds each run's training cost from the cached curves. Introduced in Chapter 4.
    """

    teacher = load("M")
    windows, val = tiny_data()
    samples = tiny_sample_windows(teacher, windows, n=256, seed=1)
    students = {"teacher": teacher, **{name: load_student(name) for name in TINY_RUNS}}
    report = student_report(students, teacher, val, samples=samples)
    report = report[report.student != "teacher"].reset_index(drop=True).pipe(
        lambda df: pd.concat([df, report[report.student == "teacher"]], ignore_index=True))
    curves = cached("distill.tiny_runs")
    last = curves.groupby("run").tail(1).set_index("run")
    runs = [r for r in report.student if r in TINY_RUNS]
    report["method"] = [TINY_RUNS[r].method if r in TINY_RUNS else "teacher M itself" for r in report.student]
    report["steps"] = [TINY_RUNS[r].settings.steps if r in TINY_RUNS else np.nan for r in report.student]
    for col in ("time_s", "teacher_time_s", "cache_time_s", "samples_time_s"):
        report[col] = [float(last.loc[r, col]) if r in runs else np.nan for r in report.student]
    return report


# --------------------------------------------------------------------------------------------------
# Black-box distillation from the real pretrained model (SmolLM2) into a character model
# --------------------------------------------------------------------------------------------------


def smollm2_continuations(n: int = 160, prompt_tokens: int = 48, new_tokens: int = 64, temperature: float = 1.0,
                          seed: int = 0, batch_size: int = 32, progress: bool = True) -> pd.DataFrame:
    """SmolLM2-135M's continuations of ``n`` passages of Tiny Shakespeare's training split (black-box outputs).

    Each prompt is the first ``prompt_tokens`` BPE tokens of a seeded 600-character passage; SmolLM2 samples
    ``new_tokens`` more at ``temperature``. Returns ``prompt`` and ``continuation`` texts. Only text crosses
    over: this is how a character model can learn from a BPE model. Introduced in Chapter 4.
    """
    from ..smollm2 import load_smollm2, smollm2_tokenizer

    model = load_smollm2(progress=progress)
    tok = smollm2_tokenizer()
    text = corpus_split("train")
    gen = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, len(text) - 600, (n,), generator=gen).tolist()
    prompts = torch.tensor([tok.encode(text[s : s + 600])[:prompt_tokens] for s in starts])
    rows = []
    bar = None
    if progress:
        bar = progress_bar(total=n, desc="SmolLM2 continuations", leave=False)
    for i in range(0, n, batch_size):
        out = generate(model, prompts[i : i + batch_size], new_tokens, temperature=temperature, seed=seed + i,
                       progress=False)
        for row in out.tolist():
            rows.append({"prompt": tok.decode(row[:prompt_tokens]), "continuation": tok.decode(row[prompt_tokens:])})
        if bar is not None:
            bar.update(len(out))
    if bar is not None:
        bar.close()
    return pd.DataFrame(rows)


def _char_windows(texts: Sequence[str], seq_len: int) -> tuple[torch.Tensor, int, int]:
    """Character windows of the concatenated texts (characters outside the 65-character vocabulary dropped)."""

    tok = shakespeare_tokenizer()
    joined = "\n".join(texts)
    ids = tok.encode(joined, errors="skip")
    return text_windows(torch.tensor(ids), seq_len, stride=seq_len // 2), len(joined), len(ids)


@_experiment("smollm2_blackbox", "Black-box distillation from SmolLM2-135M into the character student S")
@torch_threads(EXPERIMENT_THREADS)
def smollm2_blackbox(steps: int = 80, held_out: int = 32) -> pd.DataFrame:
    """Fine-tune the shipped student S on SmolLM2's text and measure how far it moves towards its teacher.

    SmolLM2 (49,152 BPE tokens) and S (65 characters) share no vocabulary, so no token-level loss applies; the
    student can still train on SmolLM2's text (sequence-level distillation [Kim & Rush 2016]). S is
    fine-tuned for ``steps`` steps (16 × 128 characters, lr 1e-3) on the continuations of 128 passages and
    evaluated, before and after, on ``held_out`` other continuations (the teacher's distribution) and on
    Tiny Shakespeare's validation text. The continuations are kept in ``data/distill/smollm2_continuations.csv``
    and reused when present (generating them is the slow part). Rows: ``model`` (before/after), ``teacher_text_loss``,
    ``shakespeare_val_loss`` (nats/char), plus the characters dropped as out of vocabulary.
    Introduced in Chapter 4.
    """

    saved = _checkpoint_dir() / "smollm2_continuations.csv"
    t0 = time.perf_counter()
    if saved.is_file():  # generating is the slow part (SmolLM2 on a CPU): reuse the shipped continuations
        conts = pd.read_csv(saved, keep_default_na=False)
    else:
        conts = smollm2_continuations()
        saved.parent.mkdir(parents=True, exist_ok=True)
        conts.to_csv(saved, index=False)
    gen_time = time.perf_counter() - t0
    texts = conts.continuation.tolist()
    train, _, _ = _char_windows(texts[held_out:], TINY_SEQ_LEN)
    test, chars, kept = _char_windows(texts[:held_out], TINY_SEQ_LEN)
    _, val = tiny_data()
    student = load("S")
    rows = []

    def evaluate(label: str, model) -> None:
        with torch.inference_mode():
            logits = model(test[:, :-1])
            nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), test[:, 1:].reshape(-1)).item()
        rows.append({"model": label, "teacher_text_loss": nll, "shakespeare_val_loss": tiny_val_loss(model, val),
                     "generation_time_s": gen_time, "train_windows": len(train),
                     "dropped_char_fraction": 1 - kept / chars, "student_sha256": card("S")["weights_sha256"]})

    evaluate("S before", student)
    settings = replace(TINY_BASE, steps=steps, lr=1e-3, warmup_fraction=0.1)
    distill(student, train, settings, progress=True)
    evaluate("S after black-box distillation from SmolLM2", student)
    return pd.DataFrame(rows)


def student_report(
    students: dict[str, torch.nn.Module],
    teacher: torch.nn.Module,
    val: torch.Tensor,
    samples: tuple[torch.Tensor, torch.Tensor] | None = None,
    max_chars: int | None = None,
    sample_count: int = 64,
    seed: int = 0,
) -> pd.DataFrame:
    """Compare students against their teacher: quality, coverage vs precision, and draft acceptance.

    Columns: ``val_loss`` (nats/char on the validation text: how well the student *covers* real text),
    ``entropy`` (mean entropy of its next-character distribution: low = mode seeking), ``teacher_nll`` (the
    teacher's nats/char on text the student samples at τ = 1: the *precision* MiniLLM argues reverse KL
    improves), ``acceptance_text`` and ``acceptance_greedy`` (α = E[Σ min(p, q)] as a speculative draft
    for the teacher, at τ = 1 and τ = 0, teacher-forced on the validation text) and ``acceptance_samples``
    (α at τ = 1 on the teacher's own samples, the text speculative sampling actually sees; ``samples`` is
    :func:`teacher_samples`'s pair, and only the generated positions count). Introduced in Chapter 4.
    """

    tokens = val if max_chars is None else val[:max_chars]
    chunks = tokens[: (len(tokens) // TINY_SEQ_LEN) * TINY_SEQ_LEN].reshape(-1, TINY_SEQ_LEN)
    rows = []
    with torch.inference_mode():
        teacher_logits = [teacher(chunks[i : i + 32]) for i in range(0, len(chunks), 32)]
        seqs, smask = (None, None) if samples is None else samples
        sample_logits = None if seqs is None else [teacher(seqs[i : i + 32, :-1]) for i in range(0, len(seqs), 32)]
        prompts = chunks[:sample_count, :16] if len(chunks) >= sample_count else chunks[:, :16]
        for name, model in students.items():
            ent, acc1, acc0, n = 0.0, 0.0, 0.0, 0
            for i, t_logits in zip(range(0, len(chunks), 32), teacher_logits, strict=True):
                s_logits = model(chunks[i : i + 32]).float()
                logq = torch.log_softmax(s_logits, -1)
                ent += float(-(logq.exp() * logq).sum(-1).double().sum())
                acc1 += float(expected_acceptance(t_logits, s_logits, 1.0, reduction="sum"))
                acc0 += float(expected_acceptance(t_logits, s_logits, 0.0, reduction="sum"))
                n += t_logits.shape[0] * t_logits.shape[1]
            acc_s = float("nan")
            if seqs is not None:
                tot, cnt = 0.0, 0
                for i, t_logits in zip(range(0, len(seqs), 32), sample_logits, strict=True):
                    acc = expected_acceptance(t_logits, model(seqs[i : i + 32, :-1]), 1.0, reduction="none")
                    keep = smask[i : i + 32]
                    tot += float(acc[keep].double().sum())
                    cnt += int(keep.sum())
                acc_s = tot / cnt

            written = generate(model, prompts, TINY_SEQ_LEN - 16, temperature=1.0, seed=seed, progress=False)
            # the teacher scores only what the student wrote (the 16-character prompt is context)
            lp = torch.log_softmax(teacher(written[:, :-1]).double(), -1).gather(-1, written[:, 1:, None])[..., 0]
            teacher_nll = float(-lp[:, 15:].mean())
            rows.append({"student": name, "val_loss": perplexity(model, tokens, window=TINY_SEQ_LEN,
                                                                  batch_size=32).nll,
                         "entropy": ent / n, "teacher_nll": teacher_nll, "acceptance_text": acc1 / n,
                         "acceptance_greedy": acc0 / n, "acceptance_samples": acc_s})
    return pd.DataFrame(rows)
