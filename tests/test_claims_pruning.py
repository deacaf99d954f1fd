"""Chapter 5's claims: the judging words of its Takeaways, Summary and computed paragraphs that are typed, asserted
against the library (tests/claims.py explains the registry). The chapter's verdicts about the cached sweeps are
chosen by the data in its computed paragraphs, so they need no test here."""

from __future__ import annotations

import unveiled as uv
from claims import claim
from unveiled.analyzer.sparsity import WeightForm

PAGE = "chapters/05_pruning.ipynb"
HALF_BITMASK = WeightForm("unstructured", sparsity=0.5)
HALF_CSR = WeightForm("unstructured", sparsity=0.5, storage="csr", index_bits=32)


@claim(PAGE, "Removing half of the weights is not halving the bytes.",
       "the 50 % unstructured layer keeps {} of the dense bytes, exactly as much as 2:4 with its 2-bit positions",
       "the dense bytes: more than the matrix it compresses")
def test_half_the_weights_is_not_half_the_bytes():
    # the chapter's layer: SmolLM2-135M's layers.10.mlp.down_proj, [576, 1536], 16-bit values
    shape = (576, 1536)
    dense = uv.analyzer.sparsity.weight_form_bytes(*shape, 16)
    bitmask = uv.analyzer.sparsity.weight_form_bytes(*shape, 16, HALF_BITMASK)
    nm = uv.analyzer.sparsity.weight_form_bytes(*shape, 16, "2:4")
    csr = uv.analyzer.sparsity.weight_form_bytes(*shape, 16, HALF_CSR)
    assert bitmask > 0.5 * dense and nm > 0.5 * dense  # not halving
    assert bitmask == nm  # exactly as much: one bit per position = 2 bits per kept value at 50 %
    assert csr > dense  # more than the matrix it compresses


@claim(PAGE, "CSR with 32-bit indices saves none at 50 %")
def test_csr_at_half_sparsity_saves_no_bytes_in_decode():
    for model in ("llama-2-7b", "smollm2-135m"):
        dense = uv.analyze(model, "a100", stage="decode", batch=1, seq_len=1024)
        csr = uv.analyze(model, "a100", stage="decode", batch=1, seq_len=1024, weight_form=HALF_CSR)
        assert csr.bytes >= dense.bytes and csr.time_s >= dense.time_s, model
        assert csr.memory.weights >= dense.memory.weights, model

