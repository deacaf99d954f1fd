"""Claims: the words of the book that judge its own results, and the tests that assert them.

A *claim word* is a word or number in a claim zone (a Takeaway, the Summary, a caption, the typed words of a
computed paragraph; see ``booktext.claim_zones``) that judges a result: a verdict ("beats", "pays",
"recovers", "collapses"), a degree ("most", "close", "nearly", "far", "little", "free"), a comparison ("costs
more than"), an approximate or typed quantity ("about 200", "a third", "twice", and in Takeaways, Summaries and
computed paragraphs any typed decimal, percentage or multiple like "1.7×"). Such a word must not be typed on
faith. It either

* is computed: chosen by the data in a computed paragraph (``"beats" if a < b else "does not beat"``, or the
  branches of an ``if`` statement) or interpolated (``{ratio:.2f}×``), so it is no typed word at all; or
* sits inside a sentence that cites its source (``{cite}``): then it reports the literature's finding; or
* is covered by a registered claim: a test decorated with ``@claim(page, "fragment", ...)`` whose fragments,
  copied from the page, contain the word, and whose body asserts what the words say (against a cached table,
  a live rerun or the library).

``tests/test_claims.py`` enforces this on every notebook of the table of contents, so a new chapter is
checked the day it lands. The lexicon is a net, not a proof: a causal claim or a misquoted paper without any of
these words passes it, and reviewers still read the text.
"""

from __future__ import annotations

import ast
import pathlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from booktext import Zone
from conftest import ROOT

# Verdicts and degrees: the words that judge a result.
VERDICT_WORDS = (
    r"most|much|close|closely|closer|near|nearly|almost|barely|little|far|free|cheap|costly|expensive|negligible|"
    r"usable|unusable|strongly|largely|slightly|(?<!as )well(?![- ]known)|rarely|poor|poorly|beats?|beaten|"
    r"wins?|winning|won|"
    r"loses?|lost|losing|pays?|paid|recovers?|recovered|collapse[sd]?|destroy(?:s|ed)?|breaks|broken|fails?|"
    r"succeeds?|helps?|hurts?|"
    r"tolerates?|explains?|outperforms?|better|worse|best(?! of )|worst|faster|slower|identical|exactly|matches|"
    r"agrees?"
)
QUANTITY_WORDS = (
    r"half|halves|halved|doubles?|doubled|quarters|(?:a|one|two) thirds?|(?:a|one|three) quarters?|an eighth|"
    r"a fifth|a tenth|twice|thrice|"
    r"(?:two|three|four|five|six|eight|ten|several|many) times"
)
COMPARATIVE = (r"(?:more|less|fewer|higher|lower|smaller|larger|greater|longer|shorter|cheaper|costlier)"
               r"(?: [a-z-]+)? than")
NUMBER = r"\d[\d,]*(?:\.\d+)?"
APPROXIMATE = rf"(?:about|around|roughly|approximately|nearly|almost|~|≈)\s+(?:a |an )?(?:{NUMBER}|{QUANTITY_WORDS}|one|two|three|four|five|ten|a few|hundreds?|thousands?)"
WORD_TRIGGER = re.compile(
    rf"(?<![\w-])(?<!how )(?:{APPROXIMATE}|{COMPARATIVE}|{QUANTITY_WORDS}|{VERDICT_WORDS})(?![\w-])", re.I)
# A typed result number: a decimal, a percentage or a multiple, not a setting ("α = 0.5") or a model size.
TYPED_NUMBER = re.compile(r"(?<![\w.=/-])(?<!= )(?:\d[\d,]*(?:\.\d+)?\s?(?:%|×(?!\s?[\d{]))|\d+\.\d+)(?![\w.]*[A-Za-z])")
REFERENCE = re.compile(
    r"(?:Figures?|Figs?\.?|Tables?|Chapters?|Labs?|[Ss]ections?|§)\s?\d+(?:\.\d+)*(?:\s?[–-]\s?\d+(?:\.\d+)*)?")
MASKED = [
    re.compile(r"\$\$.*?\$\$"), re.compile(r"\$[^$]*\$"), re.compile(r"\{[a-z-]+\}`[^`]*`"),
    re.compile(r"`[^`]*`"), re.compile(r"\]\([^)]*\)"), re.compile(r"<[^>]+>"), re.compile(r"\"[^\"]*\"|“[^”]*”"),
    REFERENCE,
]


@dataclass(frozen=True, order=True)
class Trigger:
    start: int
    end: int
    word: str


def _mask(text: str) -> str:
    """The text with maths, code, citations, links, quotations and cross-references blanked (same length)."""
    for pattern in MASKED:
        text = pattern.sub(lambda m: "\x00" * len(m.group(0)), text)
    return text


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Sentences and clauses (split after . ; ! ? and at list bullets), as (start, end) offsets."""
    spans, start = [], 0
    for m in re.finditer(r"(?<=[.;!?])\s+(?=[A-Z(*\"“])|\s[*-]\s(?=[A-Z*`])", text):
        spans.append((start, m.start()))
        start = m.end()
    spans.append((start, len(text)))
    return spans


def triggers(zone: Zone) -> list[Trigger]:
    """The claim words of a zone that no source stands behind (sentences with a {cite} are the literature's)."""
    masked = _mask(zone.text)
    found = [Trigger(m.start(), m.end(), m.group(0)) for m in WORD_TRIGGER.finditer(masked)]
    if zone.kind in ("takeaway", "summary", "computed"):
        found += [Trigger(m.start(), m.end(), m.group(0)) for m in TYPED_NUMBER.finditer(masked)]
    cited = [(a, b) for a, b in sentence_spans(zone.text)  # a cited finding, or a question (no claim at all)
             if "{cite}" in zone.text[a:b] or zone.text[a:b].rstrip().endswith("?")]
    return sorted(t for t in found if not any(a <= t.start < b for a, b in cited)) if found else []


def sentence_of(zone: Zone, pos: int) -> str:
    for a, b in sentence_spans(zone.text):
        if a <= pos < b or b == len(zone.text):
            return zone.text[a:b].strip()
    return zone.text


# ----------------------------------------------------------------------------------------------------------------
# The registry


def claim(page: str, *fragments: str) -> Callable:
    """Mark a test as the assertion behind claim words of `page` (e.g. ``"chapters/03_quantization.ipynb"``).

    Each fragment is copied from the page's Takeaway, Summary, caption or computed paragraph (emphasis ``*``
    removed, whitespace collapsed; in a computed paragraph ``{}`` stands for each interpolated value) and covers
    the claim words inside it. The test's body must assert what the fragments say."""

    def mark(fn: Callable) -> Callable:
        fn.claims = (page, fragments)
        return fn

    return mark


@dataclass(frozen=True)
class Registered:
    page: str
    fragment: str
    test: str  # "tests/test_claims_quant.py::test_..."
    asserts: bool


def registered_claims(folder: pathlib.Path = ROOT / "tests") -> list[Registered]:
    """Every ``@claim(...)`` of the test suite, read from the source (no test module is imported)."""
    out = []
    for f in sorted(folder.glob("test_*.py")):
        tree = ast.parse(f.read_text())
        constants = {t.id: node.value.value for node in tree.body if isinstance(node, ast.Assign)
                     and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
                     for t in node.targets if isinstance(t, ast.Name)}
        for fn in ast.walk(tree):
            if not isinstance(fn, ast.FunctionDef):
                continue
            for dec in fn.decorator_list:
                if isinstance(dec, ast.Call) and getattr(dec.func, "id", None) == "claim":
                    args = [a.value if isinstance(a, ast.Constant) else constants.get(getattr(a, "id", None))
                            for a in dec.args]
                    if not all(isinstance(a, str) for a in args) or len(args) < 2:
                        raise ValueError(f"{f.name}::{fn.name}: @claim takes a page and fragments, all strings "
                                         f"(literals or module-level string constants)")
                    asserts = fn.name.startswith("test_") and any(isinstance(n, ast.Assert) for n in ast.walk(fn))
                    out.extend(Registered(args[0], frag, f"tests/{f.name}::{fn.name}", asserts) for frag in args[1:])
    return out
