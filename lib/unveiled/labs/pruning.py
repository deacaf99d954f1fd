"""Lab checks of Chapter 5 (pruning, sparsity and low-rank factorization).

The reader implements four functions with PyTorch and checks each here:

* Lab 5.1 ``nm_mask(score, n, m)``: the boolean keep-mask of N:M sparsity (the ``n`` highest scores of every
  ``m`` consecutive inputs of a row), and ``wanda_score(weight, x)``: Wanda's ``|W_ij|·‖X_j‖₂`` from
  calibration inputs ``x [tokens, in]`` [Sun et al. 2024];
* Lab 5.2 ``rank_for_energy(singular_values, energy)``: the smallest rank keeping a share of the squared
  singular values, and ``sparse_weight_bytes(rows, cols, sparsity, value_bits, storage)``: the bytes a pruned
  weight occupies as a bitmask, in CSR, or in the 2:4 format.

Each check runs fixed, seeded cases against the library (:mod:`unveiled.pruning`,
:mod:`unveiled.analyzer.sparsity`) and recognises the classic mistakes, with a hint pointing at the section of
the chapter that explains the idea. Introduced in Chapter 5.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch

from ..analyzer.sparsity import WeightForm, weight_form_bytes
from ..pruning.lowrank import rank_for_energy as _rank_for_energy
from ..pruning.patterns import nm_keep_mask
from ..pruning.patterns import wanda_score as _wanda_score
from . import Case, LabReport, run_cases

__all__ = ["CHECKS", "check_nm_mask", "check_rank_for_energy", "check_sparse_weight_bytes", "check_wanda_score"]


_FORMS = "Four ways to remove parameters (survey §§3.2, 3.4)"
_SCORES = "Which weights to remove: magnitude, Wanda, SparseGPT"
_LOWRANK = "Removing structures, factoring matrices"
_ERROR = {"expected": "a ValueError", "show_result": lambda r: r}


def _scores(seed: int, rows: int, cols: int) -> torch.Tensor:
    return torch.rand(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _raises(fn: Callable, *args) -> str:
    try:
        fn(*args)
    except ValueError:
        return "raised ValueError"
    except Exception as exc:  # the reader's code may raise anything
        return f"raised {type(exc).__name__} (expected ValueError)"
    return "returned a result"


# --------------------------------------------------------------------------------------------------
# Lab 5.1: an N:M mask and the Wanda score
# --------------------------------------------------------------------------------------------------


def _nm_judge(score: torch.Tensor, n: int, m: int) -> Callable[[object], str | None]:
    rows, cols = score.shape

    def judge(keep) -> str | None:
        if not isinstance(keep, torch.Tensor):
            return f"expected a torch.Tensor, got {type(keep).__name__}"
        if keep.shape != score.shape:
            return f"expected shape {tuple(score.shape)}, got {tuple(keep.shape)}"
        if keep.dtype != torch.bool:
            return f"expected a bool tensor (True = keep), got dtype {keep.dtype}"
        groups, kept = score.reshape(rows, cols // m, m), keep.reshape(rows, cols // m, m)
        counts = kept.sum(-1)
        if not bool((counts == n).all()):
            bad = int(torch.nonzero(counts != n)[0][0]), int(torch.nonzero(counts != n)[0][1])
            base = f"row {bad[0]}, group {bad[1]}: expected {n} kept weights, got {int(counts[bad])}"
            if bool((counts == m - n).all()):
                return f"{base}; every group keeps {m - n}, not {n}: N is the number KEPT of every M."
            if rows % m == 0 and bool((keep.T.reshape(cols, rows // m, m).sum(-1) == n).all()):
                return f"{base}; your groups run down the columns: group M consecutive INPUTS of each row."
            return base
        lowest_kept = torch.where(kept, groups, torch.full_like(groups, 2.0)).amin(-1)
        highest_dropped = torch.where(~kept, groups, torch.full_like(groups, -1.0)).amax(-1)
        if bool((lowest_kept < highest_dropped).any()):
            r, g = (int(i) for i in torch.nonzero(lowest_kept < highest_dropped)[0])
            base = (f"row {r}, group {g}: expected every kept score ≥ every dropped one, got a kept "
                    f"{float(lowest_kept[r, g]):.4f} below a dropped {float(highest_dropped[r, g]):.4f}")
            if m > n and bool((lowest_kept <= highest_dropped).all()):
                return f"{base}; you kept the LOWEST scores of each group: keep the highest."
            return base
        return None

    return judge


def check_nm_mask(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``nm_mask(score, n, m)`` -> bool ``[out, in]`` keep-mask (Lab 5.1, Chapter 5)."""
    hint = "In each row, look at the inputs m at a time: how many weights does a group keep, and which ones?"
    cases = [Case(f"{n}:{m} on random scores {r}×{c}", (_scores(seed, r, c), n, m), judge=_nm_judge(_scores(seed, r, c), n, m),
                  hint=hint, section=_FORMS, expected=nm_keep_mask(_scores(seed, r, c), n, m))
             for seed, r, c, n, m in ((0, 8, 16, 2, 4), (1, 6, 24, 4, 8), (2, 5, 12, 1, 4), (3, 4, 12, 3, 4))]
    ties = torch.tensor([[1.0, 1.0, 1.0, 1.0, 0.0, 2.0, 2.0, 0.0]], dtype=torch.float64)
    cases.append(Case("ties: four equal scores, keep any two of them", (ties, 2, 4), judge=_nm_judge(ties, 2, 4),
                      hint=hint, section=_FORMS,
                      expected="two True among the first four positions, and True at positions 5 and 6"))
    cases.append(Case("a row of 10 inputs cannot be cut into groups of 4: raise ValueError",
                      (_scores(4, 2, 10), 2, 4), {"_expect_error": True},
                      judge=lambda r: None if r == "raised ValueError" else f"expected a ValueError, but it {r}",
                      hint="Before grouping, ask whether the inputs of a row can be cut into groups of m at all.",
                      section=_FORMS, **_ERROR))
    cases.append(Case("N > M (5:4) is not a pattern: raise ValueError", (_scores(5, 2, 8), 5, 4),
                      {"_expect_error": True},
                      judge=lambda r: None if r == "raised ValueError" else f"expected a ValueError, but it {r}",
                      hint="Can a group of m weights keep more than m of them?", section=_FORMS, **_ERROR))

    def call(score, n, m, _expect_error=False):
        return _raises(fn, score, n, m) if _expect_error else fn(score, n, m)

    return run_cases(call if callable(fn) else fn, cases, "Lab 5.1 nm_mask()", raise_on_fail=raise_on_fail,
                     show=show)


def _close(expected: torch.Tensor, mistakes: dict[str, torch.Tensor]) -> Callable[[object], str | None]:
    def judge(result) -> str | None:
        if not isinstance(result, torch.Tensor):
            return f"expected a torch.Tensor, got {type(result).__name__}"
        if result.shape != expected.shape:
            return f"expected shape {tuple(expected.shape)} (one score per weight), got {tuple(result.shape)}"
        if torch.allclose(result.double(), expected.double(), rtol=1e-5, atol=1e-8):
            return None
        diff = (result.double() - expected.double()).abs()
        i, j = (int(k) for k in torch.unravel_index(torch.argmax(diff), diff.shape))
        base = f"at weight ({i}, {j}): expected {float(expected[i, j]):.6g}, got {float(result[i, j]):.6g}"
        for message, wrong in mistakes.items():
            if torch.allclose(result.double(), wrong.double(), rtol=1e-5, atol=1e-8):
                return f"{base}; {message}"
        return base

    return judge


def check_wanda_score(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``wanda_score(weight, x)`` -> ``|W_ij|·‖X_j‖₂`` ``[out, in]`` (Lab 5.1, Chapter 5)."""
    cases = []
    for seed, out_f, in_f, tokens in ((0, 6, 16, 64), (1, 12, 8, 200), (2, 4, 32, 33)):
        gen = torch.Generator().manual_seed(seed)
        w = torch.randn(out_f, in_f, generator=gen, dtype=torch.float64)
        x = torch.randn(tokens, in_f, generator=gen, dtype=torch.float64) * torch.exp(
            torch.randn(in_f, generator=gen, dtype=torch.float64))  # channels of very different magnitude
        want = _wanda_score(w, x.norm(dim=0)).double()
        mistakes = {
            "you squared the activation norm: Wanda uses ‖X_j‖₂, not ‖X_j‖₂².": w.abs() * x.pow(2).sum(0)[None, :],
            "the score must not be negative: use |W_ij|.": w * x.norm(dim=0)[None, :],
            "you averaged |x| over the tokens; Wanda uses the L2 norm of each input channel.":
                w.abs() * x.abs().mean(0)[None, :],
            "you used |W|² (or the weight alone): the score is |W_ij| times the channel's norm.":
                w.pow(2) * x.norm(dim=0)[None, :],
        }
        cases.append(Case(f"{out_f}×{in_f} weight, {tokens} calibration tokens", (w, x), judge=_close(want, mistakes),
                          hint="Which quantity of the calibration inputs belongs to input channel j, over which "
                               "axis is it taken, and how does it meet the weight?", section=_SCORES,
                          expected=want))
    return run_cases(fn, cases, "Lab 5.1 wanda_score()", raise_on_fail=raise_on_fail, show=show)


# --------------------------------------------------------------------------------------------------
# Lab 5.2: a rank for an energy budget, and the bytes of sparse formats
# --------------------------------------------------------------------------------------------------


def _int_judge(expected: int, mistakes: dict[int, str]) -> Callable[[object], str | None]:
    def judge(result) -> str | None:
        if isinstance(result, torch.Tensor) and result.numel() == 1:
            result = result.item()
        if isinstance(result, bool) or not isinstance(result, numbers.Integral):
            return f"expected an integer rank, got {type(result).__name__} {result!r}"
        if int(result) == expected:
            return None
        why = mistakes.get(int(result))
        return f"expected rank {expected}, got {int(result)}" + (f": {why}" if why else "")

    return judge


def _rank_mistakes(sv: torch.Tensor, energy: float, want: int) -> dict[int, str]:
    """The ranks the classic mistakes give, each with its message (none that equals the right answer)."""
    e = sv.double() ** 2
    cum = torch.cumsum(e, 0) / e.sum()
    strict = min(int((cum <= energy).sum()) + 1, len(e))  # "share > budget" instead of "share >= budget"
    candidates = [
        (_rank_for_energy(sv.double().sqrt(), energy),
         "you summed σ, not σ²: the energy of a component is its squared singular value."),
        (strict, "the first components already reach the budget exactly: stop at the first rank whose share is "
                 "≥ the budget, not >."),
        (want - 1, "a rank counts components: return the position of the first one that reaches the budget, + 1."),
    ]
    out: dict[int, str] = {}
    for rank, message in candidates:
        if rank != want:
            out[rank] = f"{out[rank]} Or: {message}" if rank in out else message
    return out


def check_rank_for_energy(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``rank_for_energy(singular_values, energy)`` -> int (Lab 5.2, Chapter 5)."""
    hint = ("What measures one singular value's share of the matrix's energy, and where does the running share "
            "first reach the budget?")
    cases = []
    exact = torch.tensor([2.0, 1.0, 1.0, 1.0, 1.0], dtype=torch.float64)  # σ² shares 0.5, 0.625, 0.75, 0.875, 1
    for energy, want in ((0.75, 3), (0.5, 1), (0.76, 4), (1.0, 5), (0.1, 1)):
        cases.append(Case(f"σ = (2, 1, 1, 1, 1), energy {energy}", (exact.clone(), energy),
                          judge=_int_judge(want, _rank_mistakes(exact, energy, want)), hint=hint, section=_LOWRANK,
                          expected=want))
    s = torch.linspace(3.0, 0.1, 40, dtype=torch.float64) ** 2
    for energy in (0.9, 0.99):
        want = _rank_for_energy(s, energy)
        cases.append(Case(f"a decaying spectrum of 40 values, energy {energy}", (s.clone(), energy),
                          judge=_int_judge(want, _rank_mistakes(s, energy, want)), hint=hint, section=_LOWRANK,
                          expected=want))
    for bad in (0.0, 1.5):
        cases.append(Case(f"energy {bad} is outside (0, 1]: raise ValueError", (exact.clone(), bad),
                          {"_expect_error": True},
                          judge=lambda r: None if r == "raised ValueError" else f"expected a ValueError, but it {r}",
                          hint="Which shares of the energy make sense as a budget?", section=_LOWRANK, **_ERROR))

    def call(sv, energy, _expect_error=False):
        return _raises(fn, sv, energy) if _expect_error else fn(sv, energy)

    return run_cases(call if callable(fn) else fn, cases, "Lab 5.2 rank_for_energy()", raise_on_fail=raise_on_fail,
                     show=show)


def _form(sparsity: float, storage: str) -> WeightForm:
    if storage == "2:4":
        return WeightForm("n:m", n=2, m=4)
    return WeightForm("unstructured", sparsity=sparsity, storage=storage, index_bits=32)


def check_sparse_weight_bytes(fn: Callable, *, raise_on_fail: bool = True, show: bool = True) -> LabReport:
    """Check ``sparse_weight_bytes(rows, cols, sparsity, value_bits, storage)`` -> bytes, for ``storage`` in
    ``"bitmask"``, ``"csr"`` (32-bit column indices and row pointers) and ``"2:4"`` (Lab 5.2, Chapter 5)."""
    cases = []
    for rows, cols, s, bits, storage in ((4096, 4096, 0.5, 16, "csr"), (576, 1536, 0.7, 32, "csr"),
                                         (4096, 11008, 0.5, 16, "bitmask"), (1024, 1024, 0.9, 8, "bitmask"),
                                         (4096, 4096, 0.5, 16, "2:4"), (576, 1536, 0.5, 4, "2:4")):
        want = float(weight_form_bytes(rows, cols, bits, _form(s, storage)))
        nnz = (1 - s) * rows * cols
        wrong = {
            "csr": {nnz * (bits + 32) / 8: "CSR also stores one row pointer per row (plus one): rows + 1 integers.",
                    nnz * bits / 8 + (nnz + rows + 1) * 8: "the indices here are 32-bit (4 bytes), not 64-bit."},
            "bitmask": {nnz * bits / 8 + nnz / 8: "a bitmask has one bit per POSITION of the matrix, kept or not.",
                        nnz * bits / 8: "the bitmask itself costs bytes too: one bit per position."},
            "2:4": {rows * cols * bits / 16: "2:4 also stores where each kept value sits: 2 bits per kept value.",
                    rows * cols * bits / 8: "a 2:4 weight stores only half of the values."},
        }[storage]
        mistakes = {v: msg for v, msg in wrong.items() if abs(v - want) > 1e-6 * want}

        def judge(result, want=want, mistakes=mistakes) -> str | None:
            try:
                got = float(result)
            except (TypeError, ValueError):
                return f"expected a number of bytes, got {type(result).__name__}"
            if abs(got - want) <= 1e-6 * want:
                return None
            base = f"expected {want:,.0f} bytes, got {got:,.0f}"
            for v, msg in mistakes.items():
                if abs(got - v) <= 1e-6 * v:
                    return f"{base}; {msg}"
            return base

        cases.append(Case(f"{rows}×{cols}, {s:.0%} sparse, {bits}-bit values, {storage}", (rows, cols, s, bits, storage),
                          judge=judge, expected=want, section=_FORMS,
                          hint="Count what is stored: the kept values at their width, and whatever says where they "
                               "sit (per position, per kept value, per row)."))
    return run_cases(fn, cases, "Lab 5.2 sparse_weight_bytes()", raise_on_fail=raise_on_fail, show=show)


#: The reader's function name -> its check (the lab runner, tests/test_labs.py, reads this).
CHECKS: dict[str, Callable] = {
    "nm_mask": check_nm_mask,
    "wanda_score": check_wanda_score,
    "rank_for_energy": check_rank_for_energy,
    "sparse_weight_bytes": check_sparse_weight_bytes,
}
