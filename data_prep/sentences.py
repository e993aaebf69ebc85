"""A small rule-based English sentence splitter (no model, no extra dependency).

A sentence ends at `.`, `!`, `?` or `…` (possibly repeated, possibly followed by closing quotes or
brackets) when whitespace and a sentence-like start follow: an uppercase letter or a digit, maybe
behind an opening quote or bracket. A period does not end a sentence after a title (Mr., Dr., Gen.),
a single initial (J.), a Latin abbreviation (e.g., i.e., cf.), or `No.`/`Art.`/`pp.` before a
number; after an ambiguous abbreviation (U.S., etc., Inc., Jr.) it ends one only when a common
sentence opener (The, We, It, …) follows. Decimals (3.5) never match because no space follows the
period.
"""

from __future__ import annotations

import re

_END = re.compile(r"(?:[.!?…]+)([\"'”’»)\]]*)\s+(?=\S)")
_OPENERS = "\"'“‘«([{"
_WS = re.compile(r"\s+")


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# Always followed by more of the same sentence.
_NEVER_END = _words(
    """mr mrs ms messrs mme mlle dr prof gen col maj capt lt sgt cpl adm cmdr gov sen rep reps
    hon rev fr pres supt atty mt ft e.g i.e cf viz vs approx fig figs eq dept"""
)
# Followed by a number when they are abbreviations ("No. 5"), by an uppercase word when not.
_BEFORE_NUMBER = _words(
    """no nos art arts sec secs vol vols p pp ch chap para
    jan feb mar apr jun jul aug sep sept oct nov dec"""
)
# May end a sentence: end one only when a common sentence opener follows.
_AMBIGUOUS = _words("etc inc co corp ltd jr sr bros st esq a.m p.m u.s u.k u.n")
_STARTERS = _words(
    """the a an this that these those there it its we i he she they you our my his her their
    in on at for but and or so yet if when while as after before since although though however
    thus then now what why how where who which let no not all some many most each every such one
    during under upon from by with without to"""
)
_ACRONYM = re.compile(r"^(?:[A-Za-z]\.)+[A-Za-z]$")


def _starts_sentence(token: str) -> bool:
    stripped = token.lstrip(_OPENERS)
    if not stripped:
        return False
    first = stripped[0]
    return first.isupper() or first.isdigit()


def _is_break(text: str, start: int, stop: int, closing: str) -> bool:
    """Whether the terminator text[start:stop] (whitespace included) ends a sentence."""
    next_token = text[stop:].split(None, 1)[0]
    if not _starts_sentence(next_token):
        return False
    terminator = text[start:stop].rstrip().rstrip("\"'”’»)]")
    if terminator != "." or closing:
        return True
    word_start = text.rfind(" ", 0, start) + 1
    word = text[word_start:start].lstrip(_OPENERS)
    lower = word.lower()
    if not word:
        return True
    if lower in _NEVER_END:
        return False
    if len(word) == 1 and word.isalpha():  # an initial: "John F. Kennedy"
        return False
    next_word = next_token.lstrip(_OPENERS)
    if lower in _BEFORE_NUMBER:
        return not next_word[:1].isdigit()
    if lower in _AMBIGUOUS or _ACRONYM.match(word):
        return next_word.rstrip(",;:").lower() in _STARTERS
    return True


def split_sentences(text: str) -> list[str]:
    """Split one line or paragraph into sentences; whitespace runs become single spaces."""
    text = _WS.sub(" ", text).strip()
    if not text:
        return []
    sentences: list[str] = []
    begin = 0
    for match in _END.finditer(text):
        if _is_break(text, match.start(), match.end(), match.group(1)):
            sentence = text[begin : match.end()].strip()
            if sentence:
                sentences.append(sentence)
            begin = match.end()
    tail = text[begin:].strip()
    if tail:
        sentences.append(tail)
    return sentences
