"""The guard against hand-typed claims: every word of a Takeaway, a Summary, a caption or a computed paragraph
that judges the book's own results is computed, cited or asserted by a test (see ``tests/claims.py``).

It reads every notebook of the table of contents, so chapters that land later are checked the same way."""

from __future__ import annotations

import pytest

import booktext
import claims

PAGES = booktext.claim_pages()
HOW_TO_FIX = """
What to do, for each sentence above (see CONTRIBUTING.md, "Claims"):
  1. If the words judge a table or a measurement, compute them: a hide-input cell ending in Markdown(f"...")
     that interpolates the numbers and lets the data choose the verdict ("beats" if a < b else "does not beat").
  2. Or keep them typed and assert them: in tests/test_claims_<concept>.py, add a test decorated with
     @claim("<page>", "<the words, copied from the sentence>") that asserts, against the cached table, a live
     rerun or the library, exactly what they say (with the margin the words imply: "close" = within how much?).
  3. Or reword: state the numbers (computed) or the fact without judging it. A sentence that reports a cited
     source's finding carries its {cite}.
"""


def _uncovered(page, zones, registered):
    frags = [r.fragment for r in registered if r.page == page]
    out = []
    for zone in zones:
        spans = [(i, i + len(f)) for f in frags for i in _find_all(zone.text, f)]
        for t in claims.triggers(zone):
            if not any(a <= t.start and t.end <= b for a, b in spans):
                out.append((zone, t))
    return out


def _find_all(text, fragment):
    i = text.find(fragment)
    while i >= 0:
        yield i
        i = text.find(fragment, i + 1)


@pytest.fixture(scope="module")
def registered():
    return claims.registered_claims()


@pytest.mark.parametrize("path", PAGES, ids=[booktext.rel(p) for p in PAGES])
def test_every_claim_word_is_computed_cited_or_asserted(path, registered):
    page = booktext.rel(path)
    missing = _uncovered(page, booktext.claim_zones(path), registered)
    if missing:
        lines, seen = [], set()
        for zone, t in missing:
            sentence = claims.sentence_of(zone, t.start)
            key = (zone.where, sentence)
            words = [x.word for z, x in missing if z is zone and claims.sentence_of(z, x.start) == sentence]
            if key not in seen:
                seen.add(key)
                lines.append(f"  {zone.where}: \"{sentence}\"\n      hand-typed claim words: {sorted(set(words))}")
        pytest.fail(f"{page}: {len(missing)} claim words about the book's results are neither computed, nor "
                    f"cited, nor asserted by a @claim test:\n" + "\n".join(lines) + HOW_TO_FIX)


def test_every_registered_claim_is_in_its_page_and_asserted(registered):
    pages = {booktext.rel(p): p for p in PAGES}
    errors = []
    for r in registered:
        if r.page not in pages:
            errors.append(f"{r.test}: page {r.page!r} is not a notebook of _toc.yml")
            continue
        zones = booktext.claim_zones(pages[r.page])
        hits = [z for z in zones if r.fragment in z.text]
        if not hits:
            errors.append(f"{r.test}: {r.fragment!r} is no longer in a Takeaway, Summary, caption or computed "
                          f"paragraph of {r.page}: update the fragment to the new words (and the assertion to "
                          f"what they say), or delete the claim")
        elif not any(any(a <= t.start < a + len(r.fragment) for a in _find_all(z.text, r.fragment))
                     for z in hits for t in claims.triggers(z)):
            errors.append(f"{r.test}: {r.fragment!r} contains no claim word; register only the words that judge")
        if not r.asserts:
            errors.append(f"{r.test}: a claim test must assert what its words say (no assert statement found)")
    assert not errors, "\n".join(errors)


def test_the_guard_flags_typed_verdicts_and_spares_computed_and_cited_ones():
    """The guard's own negative and positive controls, on made-up cells."""
    zone = booktext.Zone("x", "x", "takeaway", booktext.normalize(
        "GPTQ and AWQ recover most of it. Decoding is 1.66× faster. The formula gives $\\min(\\pi, \\beta I)$."))
    words = [t.word for t in claims.triggers(zone)]
    assert words == ["recover", "most", "1.66×", "faster"]
    cited = booktext.Zone("x", "x", "summary", "DistillSpec makes decoding faster {cite}`zhou2024distillspec`.")
    assert claims.triggers(cited) == []
    src = 'v = "beats" if a < b else "does not beat"\nMarkdown(f"GPTQ {v} RTN by {d:.0%}, close to the roofline.")'
    typed = booktext.typed_strings(src)
    assert typed == ["GPTQ {} RTN by {}, close to the roofline."]
    words = [t.word for s in typed for t in claims.triggers(booktext.Zone("x", "x", "computed", s))]
    assert words == ["close"]
    branch = 'if a < b:\n    v = f"GPTQ beats RTN by {d:.0%}."\nelse:\n    v = "It does not."\nMarkdown(v)'
    assert booktext.typed_strings(branch) == []  # an if statement's branches are chosen by the data
    settings = booktext.Zone("x", "x", "summary", "At α = 0.5 and batch 16, Llama-3.1-8B and SmolLM2-135M run.")
    assert claims.triggers(settings) == []
