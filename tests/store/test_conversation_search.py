"""Searching conversations by the words of their title or messages, on SQLite and PostgreSQL."""

from __future__ import annotations

from concilium.store import conversations as repo
from concilium.store.db import Database
from concilium.store.models import Conversation


async def _conversation(database: Database, title: str, *messages: str) -> Conversation:
    async with database.session() as s:
        conversation = await repo.create_conversation(
            s, title=title, model=None, system_prompt=None
        )
        parent = None
        for content in messages:
            parent = (
                await repo.add_message(
                    s, conversation, role="user", content=content, parent_id=parent
                )
            ).id
    return conversation


async def _found(database: Database, *words: str, limit: int = 50) -> tuple[list[str], int]:
    async with database.reader() as s:
        items, total = await repo.list_conversations(s, limit=limit, offset=0, words=words)
    return [c.id for c in items], total


async def test_title_or_any_message_containing_every_word_matches(database: Database) -> None:
    by_title = await _conversation(database, "Trip to Lisbon", "where to eat?")
    by_message = await _conversation(database, "Holidays", "hello", "flights to LISBON in May")
    split_over_two_messages = await _conversation(database, "Other", "lisbon", "trip")
    await _conversation(database, "Unrelated", "nothing here")

    assert await _found(database, "lisbon") == (
        [split_over_two_messages.id, by_message.id, by_title.id],
        3,
    )
    # Every word in the same text: the title, or one message.
    assert await _found(database, "trip", "lisbon") == ([by_title.id], 1)
    assert await _found(database, "flights", "may") == ([by_message.id], 1)
    assert await _found(database, "Lisbon", "Madrid") == ([], 0)


async def test_matching_ignores_case_beyond_ascii(database: Database) -> None:
    summer = await _conversation(database, "Été à Paris")
    greek = await _conversation(database, "Notes", "ΣΟΦΊΑ and wisdom")
    assert await _found(database, "ÉTÉ") == ([summer.id], 1)
    assert await _found(database, "été", "paris") == ([summer.id], 1)
    assert await _found(database, "σοφία") == ([greek.id], 1)


async def test_like_wildcards_in_the_words_match_only_themselves(database: Database) -> None:
    percent = await _conversation(database, "Growth", "up 100% this year")
    underscore = await _conversation(database, "Code", "call snake_case here")
    backslash = await _conversation(database, "Paths", r"see C:\temp now")
    await _conversation(database, "Decoys", "up 1000 this year", "call snakeXcase here")

    assert await _found(database, "100%") == ([percent.id], 1)
    assert await _found(database, "%") == ([percent.id], 1)
    assert await _found(database, "snake_case") == ([underscore.id], 1)
    assert await _found(database, "_") == ([underscore.id], 1)
    assert await _found(database, "C:\\temp") == ([backslash.id], 1)
    assert await _found(database, "\\") == ([backslash.id], 1)


async def test_total_counts_every_match_beyond_the_page(database: Database) -> None:
    matching = [await _conversation(database, f"Budget {i}") for i in range(5)]
    await _conversation(database, "Other")
    ids, total = await _found(database, "budget", limit=2)
    assert total == 5
    assert ids == [matching[4].id, matching[3].id]


async def test_first_matching_message_of_each_conversation(database: Database) -> None:
    one = await _conversation(database, "One", "intro", "the Blue whale", "a blue sky")
    two = await _conversation(database, "Blue title only", "nothing")
    async with database.reader() as s:
        found = await repo.first_matching_messages(s, [one.id, two.id], ["blue"])
        assert await repo.first_matching_messages(s, [], ["blue"]) == {}
    assert found == {one.id: "the Blue whale"}
