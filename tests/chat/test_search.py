from __future__ import annotations

import pytest

from concilium.chat.search import MAX_QUERY_CHARS, SNIPPET_CHARS, excerpt, query_words
from concilium.errors import InvalidRequest


def test_query_words_are_distinct_and_in_order() -> None:
    assert query_words("  red  fox\tred\nDen ") == ["red", "fox", "Den"]


@pytest.mark.parametrize("query", ["", "   ", "\n\t", "x" * (MAX_QUERY_CHARS + 1)])
def test_blank_or_too_long_queries_are_refused(query: str) -> None:
    with pytest.raises(InvalidRequest):
        query_words(query)


def test_a_short_text_is_its_own_excerpt_on_one_line() -> None:
    assert excerpt("a short\n\nanswer", ["answer"]) == "a short answer"


def test_the_excerpt_starts_a_little_before_the_first_match() -> None:
    text = "lorem ipsum " * 40 + "the NEEDLE is here, " + "dolor sit amet " * 40
    snippet = excerpt(text, ["needle"])
    assert len(snippet) == SNIPPET_CHARS
    assert snippet.startswith("…")
    assert snippet.endswith("…")
    position = snippet.index("NEEDLE")
    assert 20 < position < 60


def test_a_match_near_an_end_keeps_the_excerpt_full() -> None:
    start = excerpt("needle " + "x" * 300, ["needle"])
    assert start.startswith("needle")
    assert start.endswith("…")
    assert len(start) == SNIPPET_CHARS
    end = excerpt("x" * 300 + " needle", ["needle"])
    assert end.startswith("…")
    assert end.endswith("needle")
    assert len(end) == SNIPPET_CHARS


def test_words_with_regex_characters_are_found_literally() -> None:
    text = "y" * 300 + " costs 5$ (about) " + "z" * 300
    assert "5$ (about)" in excerpt(text, ["5$", "(about)"])
