"""The SmolLM2 draft: sub-vocabulary mapping, the shipped weights and card, exact greedy output with SmolLM2,
and the cached experiments' live reruns."""

from __future__ import annotations

import pytest
import torch
from test_decoding import tiny_decoder

from unveiled import results
from unveiled.decoding import ModelDraft, plain_generate, speculative_generate
from unveiled.decoding.smol_draft import (
    DRAFT_CONFIG,
    DRAFT_VOCAB,
    SubVocabDraft,
    build_draft_vocabulary,
    load_smol_draft,
    smol_draft_card,
)
from unveiled.models import Decoder, DecoderConfig
from unveiled.threads import torch_threads

pytestmark = pytest.mark.usefixtures("one_torch_thread")  # as the cached experiments ran (conftest)



def small_subvocab(seed: int = 0) -> SubVocabDraft:
    cfg = DecoderConfig(vocab_size=11, hidden_size=16, num_layers=1, num_heads=2, num_kv_heads=1,
                        intermediate_size=32, max_seq_len=64)
    return SubVocabDraft(Decoder(cfg, seed=seed).eval(), torch.tensor([3, 1, 4, 15, 9, 2, 6, 5, 23, 7]), 24)


def test_vocabulary_is_most_frequent_first_with_ties_by_id():
    assert build_draft_vocabulary([5, 3, 3, 9, 9, 1], 3) == [3, 9, 1]


def test_subvocab_mapping_and_logits():
    d = small_subvocab()
    assert d.config.vocab_size == 24
    assert d.to_draft[15].item() == 3 and d.to_draft[0].item() == 10  # unknown ids enter as "other"
    logits = d(torch.tensor([[3, 0, 15]]))
    assert logits.shape == (1, 3, 24)
    kept = torch.zeros(24, dtype=torch.bool)
    kept[d.vocab_map] = True
    assert torch.isinf(logits[..., ~kept]).all() and torch.isfinite(logits[..., kept]).all()
    assert torch.equal(logits[..., d.vocab_map], d.draft_logits(torch.tensor([[3, 0, 15]]))[..., :-1])
    with pytest.raises(ValueError, match="one more"):
        SubVocabDraft(d.model, torch.arange(5), 24)


def test_subvocab_draft_keeps_greedy_output_exact():
    target = tiny_decoder(0)
    prompt = [1, 2, 3, 4, 5, 1, 2, 3, 7, 9]
    plain = plain_generate(target, prompt, 40).new_tokens
    res = speculative_generate(target, ModelDraft(small_subvocab()), prompt, 40, k=3)
    assert res.new_tokens == plain


def test_subvocab_draft_sampling_is_exact_over_its_zero_probability_tokens():
    """q is 0 outside the kept tokens; sampling must still follow p (checked on a table target)."""
    from unveiled.decoding import chi_square_test
    from unveiled.decoding.toy import TableLM

    t = TableLM(4, seed=3)
    cfg = DecoderConfig(vocab_size=3, hidden_size=8, num_layers=1, num_heads=2, num_kv_heads=1, intermediate_size=16)
    d = ModelDraft(SubVocabDraft(Decoder(cfg, seed=1).eval(), torch.tensor([0, 2]), 4))
    exact = t.sequence_distribution([1, 2], 2)
    counts = torch.zeros(16)
    for s in range(1500):
        a, b = speculative_generate(t, d, [1, 2], 2, k=2, temperature=1.0, seed=s).new_tokens
        counts[4 * a + b] += 1
    assert chi_square_test(counts, exact)["p_value"] >= 1e-3


def test_shipped_draft_is_small_and_matches_its_card():
    card = smol_draft_card()
    draft = load_smol_draft()  # verifies the SHA-256 against the card
    assert draft.model.config == DRAFT_CONFIG and len(draft.vocab_map) == DRAFT_VOCAB
    assert card["parameters"] == draft.num_parameters() < 2_000_000
    from unveiled import data_file

    assert len(data_file("models/smol-draft.safetensors").read_bytes()) < 5e6
    assert 0 < card["eval"]["greedy_agreement"] < 1 and card["training"]["steps"] > 0
    assert len(set(draft.vocab_map.tolist())) == DRAFT_VOCAB


@pytest.mark.slow
def test_smollm2_with_every_draft_gives_plain_greedy_output():
    from unveiled.decoding.experiments import shakespeare_prompt_ids, smollm2_drafts
    from unveiled.smollm2 import load_smollm2, smollm2_tokenizer

    with torch_threads(2):
        target = load_smollm2(progress=False)
        prompt = shakespeare_prompt_ids(smollm2_tokenizer())[:120]
        plain = plain_generate(target, prompt, 24).new_tokens
        for name, draft in smollm2_drafts(target).items():
            assert speculative_generate(target, draft, prompt, 24, k=3).new_tokens == plain, name


# ---- cached experiments: deterministic rows rerun live -----------------------------------------------------


def test_cached_tiny_acceptance_row_reruns_identically():
    """Greedy decoding is deterministic, so a live rerun reproduces the cached tokens per pass exactly (the
    tolerance only absorbs float formatting in the CSV)."""
    from unveiled.decoding import ModelDraft as MD
    from unveiled.text import corpus_split, shakespeare_tokenizer
    from unveiled.zoo import load

    tab = results.cached("decoding.experiments.tiny_acceptance")
    row = tab[(tab.draft == "small model") & (tab.k == 4) & (tab.temperature == 0)].iloc[0]
    prompt = shakespeare_tokenizer().encode(corpus_split("val")[:256])
    r = speculative_generate(load("M"), MD(load("S")), prompt, 300, k=4)
    assert r.tokens_per_pass == pytest.approx(row.tokens_per_pass, rel=1e-9)
    assert r.acceptance_rate == pytest.approx(row.acceptance_rate, rel=1e-9)
    assert bool(row.identical)


def test_cached_early_exit_row_reruns_identically():
    from unveiled.decoding.early_exit import early_exit_generate
    from unveiled.text import corpus_split, shakespeare_tokenizer
    from unveiled.zoo import load

    tab = results.cached("decoding.experiments.early_exit_sweep").set_index("threshold")
    prompt = shakespeare_tokenizer().encode(corpus_split("val")[:256])
    r = early_exit_generate(load("M"), prompt, 300, threshold=0.9)
    assert r.extra["mean_layers"] == pytest.approx(tab.mean_layers[0.9], rel=1e-9)


def test_cached_smollm2_speculative_outputs_were_identical():
    tab = results.cached("decoding.experiments.smollm2_speculative")
    assert tab.identical.all()
    assert set(tab.draft) == {"small model", "prompt lookup", "layer skip"}
    # the analytic model at the measured α, c, v is a prediction, not a fit: it must be in the right range
    assert ((tab.predicted_speedup / tab.speedup).between(0.5, 2.0)).all()


def test_cached_smollm2_tables_say_what_section_6_4_says():
    """The words around Figures 6.2 and 6.3 and the takeaway (the numbers themselves are printed from the tables)."""
    tab = results.cached("decoding.experiments.smollm2_speculative")
    shakes = tab[tab.prompt == "Shakespeare continuation"]
    best = shakes.groupby("draft").speedup.max()
    assert best["prompt lookup"] >= 1.5  # the chapter's goal, reached by n-gram drafting
    assert best["small model"] < best["prompt lookup"] and best["layer skip"] < 1  # "costs too much"
    small = shakes[shakes.draft == "small model"]
    assert small.acceptance_rate.max() < 0.5  # "accepted about a third of the time", "agrees rarely"
    assert (small.cost_ratio < 0.1).all() and (shakes[shakes.draft == "layer skip"].cost_ratio > 0.5).all()
    chat = tab[tab.prompt == "chat request"].set_index("draft").speedup
    assert chat["prompt lookup"] < best["prompt lookup"]  # "gains less on the chat prompt"
    verif = results.cached("decoding.experiments.smollm2_verification").set_index(["layout", "tokens"])
    for t in (4, 8, 16):  # "not flat" although the roofline predicts almost flat up to 16 tokens
        assert verif.relative_time["nn.Linear", t] > 1.3 > verif.predicted_relative_time["nn.Linear", t]
