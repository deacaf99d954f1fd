"""Decoding algorithms (survey §4): fewer parameters per token, more tokens per forward pass.

* :mod:`.speculative` — speculative sampling (accept/reject with the residual ``max(0, p − q)``, KV rollback)
  and its drafts: a small model, the target with layers skipped, n-gram prompt lookup;
* :mod:`.exactness` — the identities and the seeded chi-square test that prove it exact;
* :mod:`.analytic` — expected tokens per pass, the speedup model, the verification pass on the roofline, and
  the roofline of dynamic parameter reduction (early exit, contextual sparsity, mixture of experts);
* :mod:`.timing` — measured verification passes and plain vs speculative decoding on this machine;
* :mod:`.medusa` (extra heads, tree attention), :mod:`.jacobi` (Jacobi iteration), :mod:`.early_exit`
  (CALM-style), :mod:`.sparsity` (Deja Vu-style), :mod:`.moe` (top-k mixture of experts);
* :mod:`.smol_draft` — the distilled draft model for SmolLM2; :mod:`.toy` — a table model for fast exactness
  tests; :mod:`.experiments` — the cached measurements of the chapter.

Introduced in Chapter 7.
"""

from . import early_exit, jacobi, medusa, moe, smol_draft, sparsity, toy  # sub-modules as dec.medusa, ...
from .analytic import (
    best_draft_length,
    dynamic_reduction_table,
    expected_distinct_experts,
    expected_speedup,
    expected_tokens_per_pass,
    moe_decode_table,
    simulate_distinct_experts,
    simulate_tokens_per_pass,
    verification_cost,
)
from .exactness import (
    acceptance_probability,
    chi_square_test,
    output_distribution,
    resample_from_target_accept,
    speculative_exactness_test,
)
from .speculative import (
    Draft,
    LayerSkipDraft,
    ModelDraft,
    PromptLookupDraft,
    Proposal,
    SpeculativeResult,
    explain_round,
    plain_generate,
    residual_distribution,
    speculative_accept,
    speculative_generate,
)
from .timing import TransposedLinear, compare_decoding, measure_verification, transpose_linears

__all__ = [
    "Draft",
    "LayerSkipDraft",
    "ModelDraft",
    "PromptLookupDraft",
    "Proposal",
    "SpeculativeResult",
    "TransposedLinear",
    "acceptance_probability",
    "best_draft_length",
    "chi_square_test",
    "compare_decoding",
    "dynamic_reduction_table",
    "early_exit",
    "expected_distinct_experts",
    "expected_speedup",
    "expected_tokens_per_pass",
    "explain_round",
    "jacobi",
    "measure_verification",
    "medusa",
    "moe",
    "moe_decode_table",
    "output_distribution",
    "plain_generate",
    "resample_from_target_accept",
    "residual_distribution",
    "simulate_distinct_experts",
    "simulate_tokens_per_pass",
    "smol_draft",
    "sparsity",
    "speculative_accept",
    "speculative_exactness_test",
    "speculative_generate",
    "toy",
    "transpose_linears",
    "verification_cost",
]
