"""Searching one's conversations: the words of a query, and excerpts around them."""

from __future__ import annotations

import re
from collections.abc import Sequence

from concilium.errors import InvalidRequest

__all__ = ["MAX_QUERY_CHARS", "SNIPPET_CHARS", "excerpt", "query_words"]

MAX_QUERY_CHARS = 200
SNIPPET_CHARS = 160
_ELLIPSIS = "…"


def query_words(query: str) -> list[str]:
    """The distinct words of ``query``, in order; a blank or too long query is refused."""
    query = query.strip()
    if not query:
        raise InvalidRequest("the search must not be blank")
    if len(query) > MAX_QUERY_CHARS:
        raise InvalidRequest(f"the search is longer than {MAX_QUERY_CHARS} characters")
    return list(dict.fromkeys(query.split()))


def excerpt(text: str, words: Sequence[str], width: int = SNIPPET_CHARS) -> str:
    """At most ``width`` characters of ``text`` on one line, from a little before the first
    of ``words`` found in it (ignoring case); ``…`` marks what is cut off."""
    text = " ".join(text.split())
    if len(text) <= width:
        return text
    found = re.search("|".join(re.escape(word) for word in words), text, re.IGNORECASE)
    # Some context before the match, but no less text than fits after it.
    start = max(0, min(found.start() - width // 4 if found else 0, len(text) - width + 1))
    head = _ELLIPSIS if start > 0 else ""
    room = width - len(head)
    if len(text) - start <= room:
        return head + text[start:]
    return head + text[start : start + room - 1].rstrip() + _ELLIPSIS
