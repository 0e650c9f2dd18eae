"""The memory page and the "remembered" chips, in Debian's chromium."""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import Page, expect

from tests.browser.conftest import Server, axe, shot, wait_answered

pytestmark = pytest.mark.timeout(240)


def _ask(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def test_an_answer_shows_what_it_remembered_and_the_memory_page_manages_it(
    page: Page, server: Server
) -> None:
    api = server.api()
    made = api.post("/api/memories", json={"text": "The user is allergic to peanuts."})
    assert made.status_code in (200, 201), made.text
    try:
        _ask(page, "Suggest a cake recipe.")
        wait_answered(page)
        chips = page.locator(".message.assistant").last.locator(".memory-chips")
        expect(chips.locator("summary")).to_have_text("Remembered (1)")
        chips.locator("summary").click()
        chip = chips.get_by_role("link", name="The user is allergic to peanuts.")
        expect(chip).to_be_visible()
        shot(page, "memory-chips")
        chip.click()
        expect(page).to_have_url(re.compile(r"#/memory\?focus="))
        row = page.locator("table.memories tr.focus")
        expect(row).to_contain_text("The user is allergic to peanuts.")
        assert axe(page) == []

        # re-class, pin, then edit: the old text stays as a replaced version
        page.get_by_label("How long to keep « The user is allergic to peanuts. »").select_option(
            "permanent"
        )
        expect(row.get_by_text("always")).to_be_visible()
        row.get_by_role("button", name="Pin").click()
        expect(row.get_by_role("button", name="Unpin")).to_be_visible()
        row.get_by_role("button", name="Edit").click()
        dialog = page.get_by_role("dialog", name="Edit the memory")
        dialog.get_by_label("Memory", exact=True).fill(
            "The user is allergic to peanuts and cashews."
        )
        dialog.get_by_role("button", name="Save").click()
        table = page.locator("table.memories")
        expect(table).to_contain_text("The user is allergic to peanuts and cashews.")
        page.get_by_label("Show replaced versions").check()
        expect(table.locator("tr.replaced")).to_contain_text("The user is allergic to peanuts.")
        page.get_by_label("Show replaced versions").uncheck()

        # a temporary chat neither recalls nor shows memories
        page.get_by_role("link", name="Chat").click()
        page.get_by_role("link", name="New chat").click()
        page.get_by_label("Temporary chat: nothing remembered, nothing recalled").check()
        _ask(page, "Suggest a cake recipe.")
        wait_answered(page)
        expect(page.get_by_text("Temporary chat — memory is off here")).to_be_visible()
        expect(page.locator(".message.assistant").last.locator(".memory-chips")).to_have_count(0)

        # forget by words: a preview, then the deletion
        page.get_by_role("link", name="Memory").click()
        page.get_by_label("What to forget").fill("cashews")
        page.get_by_role("button", name="Find what would go").click()
        dialog = page.get_by_role("dialog", name="Forget something")
        expect(dialog).to_contain_text("The user is allergic to peanuts and cashews.")
        assert axe(page) == []
        dialog.get_by_role("button", name="Forget them").click()
        expect(page.get_by_text("Nothing remembered yet.")).to_be_visible()
        shot(page, "memory-page")
    finally:
        for memory in api.get("/api/memories", params={"history": True}).json()["items"]:
            api.delete(f"/api/memories/{memory['id']}")
