"""Citations are checked against the passages, not taken on the model's word."""

from __future__ import annotations

import pytest

from concilium.orchestrator.citations import CitationFixer, check_citations, cited_numbers

PASSAGES = [
    "Les sauvegardes sont faites chaque nuit à 2 heures. Les copies sont gardées pendant 35 jours.",
    "Le café du port ouvre à 7 heures du matin et ferme à 22 heures.",
    "The boiler was serviced on 12 March 2024. Next inspection: April 2026.",
]


def _sources(answer: str) -> list[tuple[int, ...]]:
    return [c.sources for c in check_citations(answer, PASSAGES)]


def test_a_supported_citation_is_kept() -> None:
    answer = "Les copies de sauvegarde sont gardées pendant 35 jours [1]."
    [citation] = check_citations(answer, PASSAGES)
    assert citation.sources == (1,)
    assert citation.claimed == (1,)
    assert (citation.start, citation.end) == (0, len(answer))


def test_a_citation_out_of_range_or_wrong_is_replaced_by_the_supporting_source() -> None:
    # [4] does not exist; [2] is about the café, not the backups.
    assert _sources("Les copies sont gardées 35 jours. [4]") == [(1,)]
    assert _sources("Les copies sont gardées 35 jours [2].") == [(1,)]
    citation = check_citations("Les copies sont gardées 35 jours [2].", PASSAGES)[0]
    assert citation.claimed == (2,)


def test_a_sentence_without_citation_is_attributed() -> None:
    assert _sources("Le café ouvre à 7 heures du matin.") == [(2,)]
    # Numbers carry across languages.
    assert _sources("La chaudière a été révisée le 12 mars 2024.") == [(3,)]


def test_a_number_no_passage_contains_is_not_attributed() -> None:
    assert _sources("Les copies sont gardées 55 jours [1].") == [()]


def test_each_sentence_is_checked_on_its_own() -> None:
    answer = "Les copies sont gardées 35 jours [1]. Le café ferme à 22 heures [1]."
    checked = check_citations(answer, PASSAGES)
    assert [c.sources for c in checked] == [(1,), (2,)]
    assert [c.claimed for c in checked] == [(1,), (1,)]
    assert answer[checked[1].start : checked[1].end] == "Le café ferme à 22 heures [1]."


def test_unrelated_or_empty_sentences_cite_nothing() -> None:
    assert _sources("Je ne sais pas.") == [()]
    assert _sources("[1]") == []
    assert _sources("La tour Eiffel mesure trois cents mètres.") == [()]
    assert check_citations("", PASSAGES) == []
    assert check_citations("Les copies sont gardées 35 jours [1].", [])[0].sources == ()


def test_cited_numbers_reads_lists_and_ignores_out_of_range() -> None:
    assert cited_numbers("a [2] b [1, 3] c [2;9] d [x]", 3) == [2, 1, 3]


@pytest.mark.parametrize(
    ("chunks", "shown"),
    [
        # [2] exists but is about the café: the sentence is the backups' [1].
        (["Les copies sont gardées ", "35 jours [2]."], "Les copies sont gardées 35 jours [1]."),
        # [7] points nowhere; a lone marker after the full stop belongs to that sentence.
        (["Les copies sont gardées 35 jours. [", "7]"], "Les copies sont gardées 35 jours. [1]"),
        # Nothing supports the sentence: its marker goes.
        (
            ["Il pleut souvent à Brest [4]. Le café ", "ouvre à 7 heures [2]."],
            "Il pleut souvent à Brest. Le café ouvre à 7 heures [2].",
        ),
        (
            ["Bonjour !\n\nLa chaudière a été révisée le 12 mars 2024 [1, 3]."],
            "Bonjour !\n\nLa chaudière a été révisée le 12 mars 2024 [3].",
        ),
        (
            list("Le café ouvre à 7 heures [2]. Sans source."),
            "Le café ouvre à 7 heures [2]. Sans source.",
        ),
    ],
    ids=["wrong-source", "out-of-range-lone", "unsupported-dropped", "list", "char-by-char"],
)
def test_streamed_markers_are_rewritten_before_they_reach_the_user(
    chunks: list[str], shown: str
) -> None:
    fixer = CitationFixer(PASSAGES)
    text = "".join(fixer.feed(c) for c in chunks) + fixer.flush()
    assert text == shown
    # Whatever is left cites only sources that support it.
    assert all(c.claimed == c.sources for c in check_citations(text, PASSAGES) if c.claimed)
