"""What a distillation run reads: fixed text windows, a seeded batch schedule, the teacher's cached top-k
targets for exactly those batches, and the teacher's own samples for black-box (sequence-level) distillation.

Because the windows and the schedule are known before training starts, the teacher runs once per window
that will be read (:func:`build_teacher_cache`), and every student, loss and rerun reuses its outputs.
Introduced in Chapter 4.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from .._validate import check_int
from ..generation import generate
from ..session import progress_bar
from .divergences import TopKTargets, _check_temperature, topk_targets

__all__ = [
    "TeacherCache",
    "batch_schedule",
    "build_teacher_cache",
    "teacher_samples",
    "text_windows",
]

# --------------------------------------------------------------------------------------------------
# Data for the training loop
# --------------------------------------------------------------------------------------------------


def text_windows(tokens: Sequence[int] | torch.Tensor, seq_len: int, stride: int | None = None) -> torch.Tensor:
    """Cut a token stream into fixed windows ``[N, seq_len + 1]`` (inputs and shifted targets together).

    Windows start every ``stride`` tokens (default ``seq_len``: non-overlapping). A fixed list of windows is
    what lets a distillation run cache its teacher's outputs per window. Introduced in Chapter 4.
    """
    seq_len = check_int("seq_len", seq_len)
    stride = seq_len if stride is None else check_int("stride", stride)
    data = tokens.long() if isinstance(tokens, torch.Tensor) else torch.tensor(list(tokens), dtype=torch.long)
    if data.dim() != 1:
        raise ValueError(f"tokens must be 1-D, got shape {tuple(data.shape)}")
    if len(data) < seq_len + 1:
        raise ValueError(f"need at least seq_len + 1 = {seq_len + 1} tokens, got {len(data)}")
    starts = torch.arange(0, len(data) - seq_len, stride)
    return data[starts[:, None] + torch.arange(seq_len + 1)[None, :]]


def batch_schedule(num_windows: int, steps: int, batch_size: int, seed: int = 0) -> torch.Tensor:
    """The window ids of every batch of a run, ``[steps, batch_size]``, drawn from a seeded generator.

    Known before training starts, so the teacher's outputs can be precomputed for exactly these windows.
    Introduced in Chapter 4.
    """
    num_windows = check_int("num_windows", num_windows)
    steps = check_int("steps", steps)
    batch_size = check_int("batch_size", batch_size)
    gen = torch.Generator().manual_seed(int(seed))
    return torch.randint(0, num_windows, (steps, batch_size), generator=gen)


@dataclass
class TeacherCache:
    """The teacher's top-k targets for some windows of a dataset: ``window id → TopKTargets [seq_len]``.

    Built once by :func:`build_teacher_cache`; ``time_s`` is what building it cost (the teacher's forward
    passes), paid once and shared by every run that reads the same windows. Introduced in Chapter 4.
    """

    window_ids: torch.Tensor
    targets: TopKTargets
    time_s: float

    def __post_init__(self) -> None:
        self._row = {int(w): i for i, w in enumerate(self.window_ids.tolist())}

    def lookup(self, ids: torch.Tensor) -> TopKTargets:
        """The cached targets of windows ``ids`` (a 1-D tensor), stacked ``[len(ids), seq_len, ...]``."""
        try:
            rows = torch.tensor([self._row[int(i)] for i in ids.tolist()])
        except KeyError as e:
            raise ValueError(f"window {e.args[0]} is not in the teacher cache; build it from the run's "
                             "batch_schedule") from None
        return self.targets[rows]

    @property
    def nbytes(self) -> int:
        return self.targets.nbytes


@torch.inference_mode()
def build_teacher_cache(
    teacher: Callable[[torch.Tensor], torch.Tensor],
    windows: torch.Tensor,
    window_ids: torch.Tensor | Sequence[int],
    k: int = 16,
    temperature: float = 1.0,
    batch_size: int = 32,
    progress: bool = True,
) -> TeacherCache:
    """Run the teacher once over the given windows and keep its top-``k`` targets (fp16 log-probabilities).

    The cost of the teacher's forward passes moves out of the training loop: this is how distillation from a
    large model is done in practice when the same data is used more than once. Introduced in Chapter 4.
    """
    ids = torch.unique(torch.as_tensor(window_ids).long().flatten())
    k = check_int("k", k)
    temperature = _check_temperature(temperature)
    batch_size = check_int("batch_size", batch_size)
    bar = None
    if progress:
        bar = progress_bar(total=len(ids), desc="teacher top-k cache", leave=False)
    t0 = time.perf_counter()
    parts = []
    for i in range(0, len(ids), batch_size):
        x = windows[ids[i : i + batch_size], :-1]
        parts.append(topk_targets(teacher(x), k, temperature))
        if bar is not None:
            bar.update(len(x))
    if bar is not None:
        bar.close()
    targets = TopKTargets(
        torch.cat([p.indices for p in parts]),
        torch.cat([p.log_probs for p in parts]).half(),
        temperature,
        parts[0].vocab_size,
    )
    return TeacherCache(ids, targets, time.perf_counter() - t0)


@torch.inference_mode()
def teacher_samples(
    teacher,
    prompts: torch.Tensor,
    new_tokens: int,
    temperature: float = 1.0,
    seed: int = 0,
    batch_size: int = 64,
    progress: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's continuations of ``prompts`` ``[N, P]``: windows ``[N, P + new_tokens]`` and a loss mask.

    Sequence-level (black-box) distillation [Kim & Rush 2016] trains the student with plain cross-entropy on
    these sequences: it needs the teacher's text only, never its logits, so it also works through an API or
    across tokenizers. Sampling at τ = 1 makes that cross-entropy a Monte-Carlo estimate of the sequence-level
    forward KL (Kim & Rush used beam search, which a character model turns into loops). The mask ``[N,
    P + new_tokens - 1]`` is True on the positions that predict a generated token (the prompt is context
    only). Introduced in Chapter 4.
    """

    new_tokens = check_int("new_tokens", new_tokens)
    batch_size = check_int("batch_size", batch_size)
    if not isinstance(prompts, torch.Tensor) or prompts.dim() != 2:
        raise ValueError("prompts must be a [N, prompt_len] tensor of token ids")
    bar = None
    if progress:
        bar = progress_bar(total=len(prompts), desc="teacher samples", leave=False)
    out = []
    for i in range(0, len(prompts), batch_size):
        out.append(generate(teacher, prompts[i : i + batch_size], new_tokens, temperature=temperature,
                            seed=seed + i, progress=False))
        if bar is not None:
            bar.update(len(out[-1]))
    if bar is not None:
        bar.close()
    seqs = torch.cat(out).clone()
    mask = torch.zeros(seqs.shape[0], seqs.shape[1] - 1, dtype=torch.bool)
    mask[:, prompts.shape[1] - 1 :] = True
    return seqs, mask
