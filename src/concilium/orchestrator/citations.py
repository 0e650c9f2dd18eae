"""Checking an answer's citations against the passages it was given.

Small models cite loosely: a number that is not among the sources, the wrong source, or
none at all. Each sentence of the answer is compared with the passages (content words
and numbers); a citation counts only when its passage supports the sentence, and a
sentence without a supported citation is attributed to the passage that supports it
best, if one does. The result says which sources back which sentences.

``CitationFixer`` rewrites a streamed answer sentence by sentence so that no marker points
nowhere: a number outside the sources, or one whose passage does not support its
sentence, becomes the source that does (when one does) or goes.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence

from concilium.events import Citation

__all__ = ["Citation", "CitationFixer", "check_citations", "cited_numbers"]

_CITATION = re.compile(r"\[(\d{1,3}(?:\s*[,;]\s*\d{1,3})*)\]")
_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+|\n+")
_WORD = re.compile(r"\d+(?:[.,]\d+)*|\w+")
_NUMBER = re.compile(r"\d")
#: Words that say nothing about which passage a sentence comes from (fr and en).
_STOPWORDS_TEXT = """
les des une que qui quoi dans pour par sur avec sans est sont etait etaient ete etre
avoir ont cette ces ses son leur leurs aux mais donc car elle elles ils nous vous
lui pas plus tres tout tous toute toutes comme aussi selon source sources reponse
the and for are was were been being with without from that this these those which
what when where who whom whose into onto than then there their they them its has
have had not but also according answer
"""
_STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
#: Share of a sentence's content words its passage must contain.
SUPPORT = 0.5
_PREFIX = 6  # characters compared: "sauvegarde" and "sauvegardes" are the same word


def cited_numbers(text: str, count: int) -> list[int]:
    """The source numbers ``text`` cites (between 1 and ``count``), in order."""
    seen: dict[int, None] = {}
    for number in _claims(text):
        if 1 <= number <= count:
            seen.setdefault(number, None)
    return list(seen)


def _claims(text: str) -> list[int]:
    return [
        int(part.strip())
        for match in _CITATION.finditer(text)
        for part in re.split(r"[,;]", match.group(1))
    ]


def _fold(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _terms(text: str) -> tuple[set[str], set[str]]:
    """(content word prefixes, numbers) of a text."""
    words: set[str] = set()
    numbers: set[str] = set()
    for token in _WORD.findall(_fold(_CITATION.sub(" ", text))):
        if _NUMBER.match(token):
            numbers.add(token.replace(",", ".").replace(" ", ""))
        elif len(token) >= 3 and token not in _STOPWORDS:
            words.add(token[:_PREFIX])
    return words, numbers


def _support(sentence: tuple[set[str], set[str]], passage: tuple[set[str], set[str]]) -> float:
    words, numbers = sentence
    if numbers - passage[1]:
        return 0.0  # a number the passage does not contain: not from there
    share = len(words & passage[0]) / len(words) if words else 0.0
    # Every number found there is evidence even across languages ("12 mars 2024" from
    # "serviced on 12 March 2024").
    return max(share, SUPPORT) if numbers else share


def _sentences(text: str) -> list[tuple[int, int]]:
    """Spans of sentences; a citation standing alone joins the sentence before it."""
    spans: list[tuple[int, int]] = []
    start = 0
    for match in [*_SENTENCE_END.finditer(text), None]:
        end = match.start() if match else len(text)
        piece = text[start:end]
        if piece.strip():
            if spans and not _CITATION.sub("", piece).strip(" .,;:!?"):
                spans[-1] = (spans[-1][0], end)
            else:
                spans.append((start, end))
        if match is not None:
            start = match.end()
    return spans


def check_citations(answer: str, passages: Sequence[str]) -> list[Citation]:
    """Which passages (numbered from 1) back each sentence of ``answer``."""
    terms = [_terms(p) for p in passages]
    out = []
    for start, end in _sentences(answer):
        sentence = answer[start:end]
        own = _terms(sentence)
        claimed = tuple(dict.fromkeys(_claims(sentence)))
        if not own[0] and not own[1]:
            continue  # nothing to check ("Je ne sais pas.")
        scores = [_support(own, t) for t in terms]
        backed = tuple(n for n in claimed if 1 <= n <= len(terms) and scores[n - 1] >= SUPPORT)
        if not backed and scores:
            best = max(range(len(scores)), key=lambda i: scores[i])
            if scores[best] >= SUPPORT:
                backed = (best + 1,)
        out.append(Citation(start, end, backed, claimed))
    return out


def _backing(sentence: str, terms: Sequence[tuple[set[str], set[str]]]) -> tuple[int, ...]:
    """The sources that back ``sentence``: its own valid, supporting citations, else the
    one passage that supports it best (if any does)."""
    own = _terms(sentence)
    if not own[0] and not own[1]:
        return ()
    scores = [_support(own, t) for t in terms]
    claimed = dict.fromkeys(_claims(sentence))
    backed = tuple(n for n in claimed if 1 <= n <= len(terms) and scores[n - 1] >= SUPPORT)
    if not backed and scores:
        best = max(range(len(scores)), key=lambda i: scores[i])
        if scores[best] >= SUPPORT:
            backed = (best + 1,)
    return backed


def _rewrite(sentence: str, terms: Sequence[tuple[set[str], set[str]]]) -> str:
    """``sentence`` with one marker naming the sources that back it, or none."""
    markers = list(_CITATION.finditer(sentence))
    if not markers:
        return sentence
    backed = _backing(sentence, terms)
    if len(markers) == 1 and tuple(dict.fromkeys(_claims(sentence))) == backed:
        return sentence
    pieces: list[str] = []
    last = 0
    for i, marker in enumerate(markers):
        before = sentence[last : marker.start()]
        if i == 0 and backed:
            pieces.append(before + "[" + ", ".join(str(n) for n in backed) + "]")
        else:
            pieces.append(before.rstrip(" "))  # the marker goes, with the space before it
        last = marker.end()
    pieces.append(sentence[last:])
    return "".join(pieces)


#: A sentence end, or a newline; what follows may still be a citation of that sentence.
_BOUNDARY = re.compile(r"(?<=[.!?…])\s+|\n+")
_PENDING_MARKER = re.compile(r"\s*\[[\d\s,;]*")
_LONE_MARKER = re.compile(r"\[\d{1,3}(?:\s*[,;]\s*\d{1,3})*\]")


class CitationFixer:
    """Rewrites a streamed answer's citation markers sentence by sentence (see the module
    docstring). A sentence is released once what follows it is known not to be its own
    trailing citation, so text arrives a sentence at a time."""

    def __init__(self, passages: Sequence[str]) -> None:
        self.terms = [_terms(p) for p in passages]
        self._held = ""

    def feed(self, text: str) -> str:
        self._held += text
        out: list[str] = []
        while (boundary := _BOUNDARY.search(self._held)) is not None:
            after = self._held[boundary.end() :]
            if not after or _PENDING_MARKER.fullmatch(after):
                break  # unknown yet, or perhaps this sentence's own citation
            lone = _LONE_MARKER.match(after)
            if lone is not None:  # "… six mois. [2]": it cites the sentence before it
                end = boundary.end() + lone.end()
                out.append(_rewrite(self._held[:end], self.terms))
                self._held = self._held[end:]
            else:
                out.append(_rewrite(self._held[: boundary.start()], self.terms))
                out.append(boundary.group(0))
                self._held = after
        return "".join(out)

    def flush(self) -> str:
        """The last sentence, rewritten."""
        held, self._held = self._held, ""
        return _rewrite(held, self.terms)
