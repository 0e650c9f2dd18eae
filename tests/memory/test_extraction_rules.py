"""What extraction keeps of a model's reply and of the user's words, whatever the model."""

from __future__ import annotations

import pytest

from concilium.memory.extraction import kind_of, parse_notes, statements, third_person


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "not json",
        "[]",
        '{"notes": "a string"}',
        '{"notes": [42, null, {"keep": "normal"}, {"text": "  "}]}',
    ],
)
def test_malformed_replies_give_no_note(raw: str) -> None:
    assert parse_notes(raw) == []


def test_notes_are_parsed_bounded_and_put_in_the_third_person() -> None:
    raw = (
        '{"notes": [{"text": "The user  likes jazz.", "keep": "normal"},'
        ' {"text": "I am O negative", "keep": "permanent"},'
        ' {"text": "Je suis végétarienne depuis trois ans"},'
        ' {"text": "a"}, {"text": "b"}, {"text": "c"}]}'
    )
    notes = parse_notes(raw)
    assert len(notes) == 4  # at most four
    assert notes[0].text == "The user likes jazz."
    assert notes[0].kind == "preference"
    assert notes[1].text == 'The user said: "I am O negative"'
    assert notes[2].text == "L'utilisateur a dit : « Je suis végétarienne depuis trois ans »"


def test_the_users_own_statements_are_kept_not_questions_requests_or_small_talk() -> None:
    said = (
        "Hey, quick question — is it normal to feel lightheaded? The nurse mentioned I'm O "
        "negative, so they were happy to see me. Thanks! Can you tell me what to eat now? "
        "My coworker Dan fainted last year."
    )
    kept = [n.text for n in statements(said)]
    assert kept == [
        'The user said: "The nurse mentioned I\'m O negative, so they were happy to see me."',
        'The user said: "My coworker Dan fainted last year."',
    ]
    assert statements("Propose-moi une recette de gâteau pour ce soir.") == []
    assert statements("Peux-tu me donner une idée de dessert pour ce soir ?") == []
    assert [n.text for n in statements("J'ai déménagé à Rennes le mois dernier.")] == [
        "L'utilisateur a dit : « J'ai déménagé à Rennes le mois dernier. »"
    ]


def test_kinds_come_from_the_words() -> None:
    assert kind_of("The user prefers tea to coffee.") == "preference"
    assert kind_of("L'utilisateur déteste la coriandre.") == "preference"
    assert kind_of("The user has a dentist appointment on May 3.") == "event"
    assert kind_of("The user wants answers in bullet points.") == "instruction"
    assert kind_of("The user has two cats.") == "fact"
    assert third_person("The user has two cats.") == "The user has two cats."
