"""The web page end to end, in Debian's chromium, against ``concilium serve``."""

from __future__ import annotations

import json
import re
import sqlite3
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect

from tests.browser.conftest import (
    ARTIFACTS,
    CHROMIUM,
    PASSWORD,
    Server,
    Watch,
    axe,
    new_page,
    shot,
    sign_in,
    wait_answered,
)
from tests.support.documents import text_pdf
from tests.support.fake_llm_servers import Behaviour

pytestmark = pytest.mark.timeout(240)


def _ask(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def test_first_administrator_is_made_on_the_page_then_signs_out_and_in(
    browser: Browser, fresh_server: Server
) -> None:
    watch = Watch(fresh_server.url)
    context, page = new_page(browser, fresh_server, watch, locale="en-US")
    try:
        # The address the server prints carries the token; the page asks for the rest.
        page.goto("/")
        expect(page.get_by_role("heading", name="Create the administrator")).to_be_visible()
        shot(page, "setup")
        assert axe(page) == []
        page.goto(f"/#/setup?token={fresh_server.setup_token()}")
        expect(page.get_by_label("Setup token")).to_have_value(fresh_server.setup_token())
        # Read once, then out of the address bar and the history.
        expect(page).not_to_have_url(re.compile("token="))
        page.get_by_label("User name").fill("boss")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_label("Confirm the password").fill(PASSWORD + "x")
        page.get_by_role("button", name="Create and sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("The two passwords differ")
        page.get_by_label("Confirm the password").fill(PASSWORD)
        page.get_by_role("button", name="Create and sign in").click()
        expect(page.get_by_role("link", name="Administration")).to_be_visible()
        assert page.url.endswith("#/chat")

        page.get_by_role("button", name="Sign out").click()
        expect(page.get_by_role("heading", name="Sign in to Concilium")).to_be_visible()
        # Signed out means the cookie no longer works, not just a page that forgot.
        assert page.request.get("/api/me").status == 401
        page.get_by_label("User name").fill("boss")
        page.get_by_label("Password", exact=True).fill("wrong password here")
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("Wrong user name or password")
        shot(page, "login")
        assert axe(page) == []
        sign_in(page, "boss")
        # The token worked once.
        again = httpx.post(
            f"{fresh_server.url}/api/auth/setup",
            json={"setup_token": fresh_server.setup_token(), "username": "x", "password": PASSWORD},
        )
        assert again.status_code == 409
    finally:
        context.close()
    assert not watch.foreign, watch.foreign
    assert not watch.errors, watch.errors


def test_a_streamed_answer_is_edited_regenerated_and_its_branches_navigated(
    page: Page, server: Server
) -> None:
    _ask(page, "Say hello in one word.")
    first = page.locator(".message.assistant").last
    wait_answered(page)
    expect(first.locator(".markdown")).not_to_be_empty()
    assert re.search(r"#/chat/[0-9a-f]{32}$", page.url)
    expect(page.locator(".conversation-items li")).to_have_count(1)

    # Regenerate: a second answer to the same question, version 2 of 2.
    page.get_by_role("button", name="Regenerate").click()
    wait_answered(page)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".branches")).to_contain_text("2 / 2")
    answer.get_by_role("button", name="Previous version").click()
    expect(page.locator(".message.assistant").last.locator(".branches")).to_contain_text("1 / 2")

    # Edit the question: a sibling question with its own answer.
    page.locator(".message.user").last.get_by_role("button", name="Edit").click()
    editor = page.get_by_label("Edit the message")
    editor.fill("Say goodbye in one word.")
    page.get_by_role("button", name="Save and send").click()
    wait_answered(page)
    question = page.locator(".message.user").last
    expect(question.locator(".bubble")).to_have_text("Say goodbye in one word.")
    expect(question.locator(".branches")).to_contain_text("2 / 2")
    question.get_by_role("button", name="Previous version").click()
    expect(page.locator(".message.user").last.locator(".bubble")).to_have_text(
        "Say hello in one word."
    )
    # The branch chosen is the conversation's, not the page's: it survives a reload.
    page.reload()
    expect(page.locator(".message.user").last.locator(".bubble")).to_have_text(
        "Say hello in one word."
    )
    shot(page, "chat")


def test_stop_ends_a_slow_answer_and_keeps_what_was_written(page: Page, server: Server) -> None:
    server.fake.push(Behaviour(text=" ".join(["word"] * 400), chunk_delay=0.05))
    page.get_by_label("Model").select_option("fake-model")
    _ask(page, "Write a very long text.")
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".markdown")).to_contain_text("word word")
    page.get_by_role("button", name="Stop").click()
    wait_answered(page)
    expect(page.locator(".message.assistant").last).to_contain_text("Stopped.")
    stored = page.locator(".message.assistant").last.locator(".markdown").inner_text()
    assert 0 < stored.count("word") < 400


def _agent_step(action: str, **fields: object) -> Behaviour:
    return Behaviour(text=json.dumps({"thought": f"use {action}", "action": action, **fields}))


def _choose(page: Page, mode: str, model: str | None = None) -> None:
    page.get_by_label("Mode", exact=True).select_option(label=mode)
    if model is not None:
        page.get_by_label("Model", exact=True).select_option(model)


def test_a_french_pdf_dropped_on_the_page_answers_with_a_citation_that_opens_its_passage(
    page: Page, server: Server
) -> None:
    page.get_by_role("link", name="Knowledge").click()
    page.get_by_role("button", name="New collection").click()
    page.get_by_label("Name").fill("reglement")
    page.get_by_role("button", name="Create").click()
    expect(page.get_by_role("heading", name="reglement")).to_be_visible()

    pdf = text_pdf(
        [
            ["Règlement intérieur du club de voile.", "Article 1. Les adhérents paient leur"],
            ["cotisation avant le 31 mars.", "Article 2. Le comité se réunit chaque mardi à 18 h."],
        ]
    )
    # Dropped together: the good file is indexed, the broken one fails with its reason.
    files = [
        {"name": "reglement.pdf", "type": "application/pdf", "data": list(pdf)},
        {"name": "casse.pdf", "type": "application/pdf", "data": list(b"%PDF-1.4 broken")},
    ]
    transfer = page.evaluate_handle(
        """(files) => {
            const transfer = new DataTransfer();
            for (const f of files) {
                transfer.items.add(new File([new Uint8Array(f.data)], f.name, {type: f.type}));
            }
            return transfer;
        }""",
        files,
    )
    page.locator(".dropzone").dispatch_event("drop", {"dataTransfer": transfer})
    uploads = page.get_by_role("list", name="Uploads")
    expect(uploads.locator("li", has_text="reglement.pdf")).to_contain_text("ready", timeout=90_000)
    broken = uploads.locator("li", has_text="casse.pdf")
    expect(broken).to_contain_text("failed", timeout=90_000)
    expect(broken.get_by_role("alert")).not_to_be_empty()
    expect(page.get_by_role("button", name="reglement", exact=False).first).to_be_visible()
    shot(page, "knowledge")

    # Search shows the hit with its score.
    page.get_by_label("Query").fill("comité mardi")
    page.get_by_role("button", name="Search", exact=True).click()
    hits = page.get_by_role("list", name="Results")
    expect(hits.locator("li").first).to_contain_text("mardi")
    expect(hits.locator("li").first).to_contain_text("score")

    page.get_by_role("link", name="Chat").click()
    page.get_by_role("link", name="New chat").click()
    _choose(page, "RAG (documents)", "fake-model")
    page.get_by_label("reglement").check()
    server.fake.push(Behaviour(text="Le comité se réunit chaque mardi à 18 h [1]."))
    _ask(page, "Quand le comité se réunit-il ?")
    wait_answered(page)
    answer = page.locator(".message.assistant").last
    expect(answer.locator(".markdown")).to_contain_text("Le comité se réunit chaque mardi")
    cite = answer.get_by_role("button", name=re.compile(r"^Source 1"))
    cite.hover()
    card = page.get_by_role("tooltip")
    expect(card).to_contain_text("reglement")
    expect(card).to_contain_text("version 1")
    expect(card).to_contain_text("mardi")
    shot(page, "citation")
    cite.click()
    dialog = page.get_by_role("dialog")
    expect(dialog.locator("mark")).to_contain_text("Le comité se réunit chaque mardi")
    expect(dialog).to_contain_text("pp. 1-2")  # where in the document: both pages
    link = dialog.get_by_role("link", name="Open the original file")
    assert page.request.get(link.get_attribute("href") or "").body() == pdf
    page.keyboard.press("Escape")
    expect(dialog).to_be_hidden()


def test_agent_calls_wait_for_approval_one_approved_one_denied(page: Page, server: Server) -> None:
    _choose(page, "Agent (tools)", "fake-model")
    server.fake.push(_agent_step("shell", arguments={"command": "echo approved-run"}))
    _ask(page, "Run echo approved-run")
    wait_answered(page)
    approval = page.get_by_role("group", name="Approval for shell")
    expect(approval).to_contain_text("echo approved-run")
    server.fake.push(
        _agent_step("answer", answer="It printed approved-run."),
        Behaviour(text="The command printed approved-run."),
    )
    approval.get_by_role("button", name="Approve", exact=True).click()
    wait_answered(page)
    timeline = page.get_by_role("list", name="Agent steps").last
    expect(timeline).to_contain_text("approved-run\n")
    expect(timeline.locator(".outcome").last).to_have_text("done")
    expect(page.locator(".message.assistant").last.locator(".markdown")).to_contain_text(
        "The command printed approved-run."
    )
    expect(page.get_by_role("button", name="Approve", exact=True)).to_have_count(0)
    shot(page, "agent")

    server.fake.push(_agent_step("shell", arguments={"command": "echo never"}))
    _ask(page, "Now run echo never")
    wait_answered(page)
    server.fake.push(
        _agent_step("answer", answer="I was not allowed."),
        Behaviour(text="I was not allowed to run it."),
    )
    page.get_by_role("group", name="Approval for shell").get_by_role(
        "button", name="Deny", exact=True
    ).click()
    wait_answered(page)
    last = page.get_by_role("list", name="Agent steps").last
    expect(last.locator(".outcome").last).to_have_text("denied")
    expect(page.locator(".message.assistant").last.locator(".markdown")).to_contain_text(
        "I was not allowed to run it."
    )


def test_consensus_workers_are_shown_side_by_side_with_the_chosen_answer(
    page: Page, server: Server
) -> None:
    _choose(page, "Consensus")
    page.get_by_label("Profile").select_option("panel")
    _ask(page, "Say something.")
    wait_answered(page)
    panel = page.get_by_role("region", name="Consensus workers").last
    expect(panel.get_by_role("article")).to_have_count(3)
    chosen = panel.locator(".worker.won")
    expect(chosen).to_have_count(1)
    expect(chosen).to_contain_text("Hello from the fake server.")
    expect(panel.locator(".badge", has_text="agrees")).to_have_count(1)
    expect(panel).to_contain_text("67 % agreement")
    shot(page, "consensus")


def test_theme_and_language_follow_the_system_then_the_choice_which_is_kept(
    browser: Browser, server: Server, watch: Watch
) -> None:
    server.ensure_admin()
    context, page = new_page(browser, server, watch, locale="fr-FR", color_scheme="dark")
    try:
        sign_in_fr = page.goto("/#/login")
        assert sign_in_fr is not None
        # French browser, dark system: the page follows both.
        expect(page.get_by_role("heading", name="Connexion à Concilium")).to_be_visible()
        assert page.evaluate("document.documentElement.lang") == "fr"
        dark = page.evaluate("getComputedStyle(document.body).backgroundColor")
        page.get_by_label("Nom d'utilisateur").fill("admin")
        page.get_by_label("Mot de passe", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Se connecter").click()
        expect(page.get_by_role("link", name="Discussion", exact=True)).to_be_visible()
        shot(page, "chat-fr-dark")
        assert axe(page) == []  # the dark colours keep their contrast too

        page.get_by_label("Thème").select_option("light")
        light = page.evaluate("getComputedStyle(document.body).backgroundColor")
        assert light != dark
        assert page.evaluate("document.documentElement.dataset.theme") == "light"
        page.get_by_label("Langue").select_option("en")
        expect(page.get_by_role("link", name="Knowledge")).to_be_visible()
        assert page.evaluate("document.documentElement.lang") == "en"
        page.reload()
        expect(page.get_by_role("link", name="Knowledge")).to_be_visible()
        assert page.evaluate("getComputedStyle(document.body).backgroundColor") == light
    finally:
        context.close()


def test_on_a_phone_the_page_fits_and_the_conversations_fold_away(
    browser: Browser, server: Server, watch: Watch
) -> None:
    server.ensure_admin()
    context, page = new_page(
        browser,
        server,
        watch,
        locale="en-US",
        viewport={"width": 390, "height": 844},
        is_mobile=True,
        has_touch=True,
        device_scale_factor=2,
    )
    try:
        sign_in(page)
        width = page.evaluate("document.documentElement.clientWidth")
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        sidebar = page.get_by_role("complementary", name="Conversations")
        expect(sidebar).to_be_hidden()
        toggle = page.get_by_role("button", name="Conversations")
        toggle.click()
        expect(sidebar).to_be_visible()
        expect(toggle).to_have_attribute("aria-expanded", "true")
        toggle.click()
        _ask(page, "Hi")
        wait_answered(page)
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot(page, "phone-chat")
        page.get_by_role("link", name="Knowledge").click()
        expect(page.get_by_role("heading", name="Knowledge", exact=True)).to_be_visible()
        assert page.evaluate("document.documentElement.scrollWidth") <= width
        shot(page, "phone-knowledge")
    finally:
        context.close()


def _focused(page: Page) -> str:
    return str(
        page.evaluate(
            "(() => { const e = document.activeElement;"
            " return (e.getAttribute('aria-label') || e.textContent || e.tagName).trim(); })()"
        )
    )


def _tab_to(page: Page, name: str, key: str = "Tab", limit: int = 60) -> None:
    for _ in range(limit):
        if _focused(page) == name:
            return
        page.keyboard.press(key)
    raise AssertionError(f"{name!r} cannot be reached with {key}; last: {_focused(page)!r}")


def test_chat_works_with_the_keyboard_alone(page: Page) -> None:
    page.goto("/#/chat")
    page.locator(".composer").wait_for()
    page.evaluate("document.activeElement && document.activeElement.blur()")
    _tab_to(page, "Message")
    page.keyboard.type("Hello from the keyboard")
    page.keyboard.press("Enter")
    wait_answered(page)
    # The answer was announced for screen readers.
    expect(page.locator("#announcer")).to_contain_text("Answer:")
    assert _focused(page) == "Message"  # back in the box for the next question
    _tab_to(page, "Regenerate", key="Shift+Tab")
    page.keyboard.press("Enter")
    wait_answered(page)
    expect(page.locator(".message.assistant").last.locator(".branches")).to_contain_text("2 / 2")
    # The conversation list: rename with the keyboard.
    _tab_to(page, "Rename “Hello from the keyboard”", key="Shift+Tab", limit=80)
    page.keyboard.press("Enter")
    page.keyboard.press("Control+A")
    page.keyboard.type("Keyboard chat")
    page.keyboard.press("Enter")
    expect(page.locator(".conversation-items")).to_contain_text("Keyboard chat")


def test_every_page_passes_axe_and_the_admin_pages_work(page: Page, server: Server) -> None:
    problems: dict[str, list[dict[str, object]]] = {}

    def check(name: str) -> None:
        page.locator(".loading").first.wait_for(state="detached")
        shot(page, name)
        found = axe(page)
        if found:
            problems[name] = found

    _ask(page, "Write a list of two fruits and a line of Python code.")
    wait_answered(page)
    check("chat-answer")

    page.get_by_role("link", name="Knowledge").click()
    page.get_by_role("heading", name="Knowledge", exact=True).wait_for()
    # A new view says where the reader is: its title, and the focus on the content.
    expect(page).to_have_title("Knowledge — Concilium")
    expect(page.locator("#main")).to_be_focused()
    check("knowledge-page")

    page.get_by_role("link", name="Administration").click()
    expect(page.get_by_role("tab", name="Statistics")).to_have_attribute("aria-selected", "true")
    stats = page.get_by_role("tabpanel")
    expect(stats).to_contain_text("Requests since start")
    expect(stats).to_contain_text("Latency p95")
    check("admin-stats")

    page.get_by_role("tab", name="Users").click()
    page.get_by_role("button", name="New user").click()
    dialog = page.get_by_role("dialog")
    dialog.get_by_label("User name").fill("reader")
    dialog.get_by_label("Password").fill(PASSWORD)
    check("admin-new-user")
    dialog.get_by_role("button", name="Create").click()
    expect(page.get_by_role("row", name=re.compile("reader"))).to_be_visible()
    check("admin-users")

    page.get_by_role("tab", name="Workspaces").click()
    page.get_by_label("Name").fill("team")
    page.get_by_role("button", name="Create a workspace").click()
    page.get_by_role("button", name="team").click()
    member = page.get_by_role("dialog")
    member.get_by_label("User", exact=True).select_option(label="reader")
    member.get_by_role("button", name="Add or change").click()
    expect(member.get_by_role("row", name=re.compile("reader"))).to_be_visible()
    check("admin-workspace")
    page.keyboard.press("Escape")

    page.get_by_role("tab", name="Backends").click()
    expect(page.get_by_role("cell", name="remote").first).to_be_visible()
    expect(page.get_by_role("tabpanel")).to_contain_text("closed (healthy)")
    check("admin-backends")

    page.get_by_role("tab", name="Audit log").click()
    page.get_by_role("button", name="Verify the chain").click()
    expect(page.get_by_role("status").filter(has_text="intact")).to_be_visible()
    check("admin-audit")

    page.get_by_role("link", name="Account").click()
    page.get_by_label("Name", exact=True).fill("laptop")
    page.get_by_role("button", name="Create the key").click()
    secret = page.get_by_label("The key")
    expect(secret).to_contain_text("ck_")
    key = secret.inner_text().strip()
    check("account-new-key")
    page.get_by_role("button", name="Done").click()
    # The key works, then is revoked from the page.
    assert httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {key}"}).is_success
    page.get_by_role("button", name="Revoke laptop").click()
    expect(page.get_by_role("row", name=re.compile("laptop"))).to_contain_text("revoked")
    assert (
        httpx.get(f"{server.url}/api/me", headers={"Authorization": f"Bearer {key}"}).status_code
        == 401
    )
    page.get_by_role("link", name="Administration").click()
    page.get_by_role("tab", name="API keys").click()
    expect(page.get_by_role("row", name=re.compile("laptop"))).to_be_visible()
    check("admin-keys")
    page.get_by_role("link", name="Account").click()
    check("account")
    assert problems == {}, json.dumps(problems, indent=1)


LONG_TASKS = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    window.__longTasks.push({ start: entry.startTime, duration: entry.duration });
  }
}).observe({ type: "longtask", buffered: true });
new MutationObserver((_, observer) => {
  const box = document.querySelector(".composer textarea");
  if (box) {
    window.__composerAt = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""


def _seed_long_conversation(server: Server, turns: int) -> str:
    """A conversation of ``2 * turns`` messages written straight into the server's
    database (answering them would take an hour): Markdown of every kind, code included."""
    with server.api() as api:
        conversation = api.post("/api/conversations", json={"title": "Long chat"}).json()
        database = sqlite3.connect(server.data_dir / "concilium.db")
        start = datetime(2026, 1, 1, tzinfo=UTC)
        rows = []
        parent = None
        for n in range(2 * turns):
            user = n % 2 == 0
            if user:
                content = f"Question {n // 2}: how does part {n} work?"
            elif n % 10 == 1:
                content = (
                    f"Here is code for part {n}:\n\n```python\ndef part_{n}(x):\n"
                    f"    return x * {n}\n```\n\nIt multiplies."
                )
            elif n % 10 == 3:
                content = (
                    f"Three points about {n}:\n\n- **first** point\n- second, with `code`\n"
                    f"- third\n\n| a | b |\n|---|---|\n| {n} | {n + 1} |"
                )
            else:
                content = " ".join([f"Answer {n}: the part works as described."] * (1 + n % 4))
            if n == 2 * turns - 1:
                content += " END-OF-CONVERSATION"
            message_id = uuid.uuid4().hex
            created = (start + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S.%f")
            rows.append(
                (
                    message_id,
                    conversation["id"],
                    parent,
                    n + 1,
                    "user" if user else "assistant",
                    content,
                    "complete",
                    created,
                )
            )
            parent = message_id
        with database:
            database.executemany(
                "INSERT INTO messages (id, conversation_id, parent_id, seq, role, content, status,"
                " created_at, cancel_requested) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 0)",
                rows,
            )
        database.close()
        switched = api.patch(
            f"/api/conversations/{conversation['id']}", json={"active_leaf_id": parent}
        )
        assert switched.status_code == 200, switched.text
        assert (
            len(api.get(f"/api/conversations/{conversation['id']}").json()["messages"]) == 2 * turns
        )
    return str(conversation["id"])


OPEN_AND_SCROLL = """async (id) => {
    const frame = () => new Promise((r) => requestAnimationFrame(r));
    const found = () => [...document.querySelectorAll('.message-row')]
        .some((row) => row.textContent.includes('END-OF-CONVERSATION'));
    const start = performance.now();
    location.hash = '#/chat/' + id;
    while (!found()) await frame();
    await frame();
    const opened = performance.now() - start;
    const rows = document.querySelectorAll('.message-row').length;
    const list = document.querySelector('.messages');
    const began = performance.now();
    let frames = 0;
    // Up to the first message in big jumps, then down again a wheel turn at a time.
    while (list.scrollTop > 0) {
        list.scrollTop = Math.max(0, list.scrollTop - 2400);
        await frame(); await frame(); frames += 2;
    }
    for (let i = 0; i < 120; i++) {
        list.scrollBy(0, 400);
        await frame(); frames += 1;
    }
    const tasks = window.__longTasks.filter((t) => t.start >= began);
    const longest = Math.max(0, ...tasks.map((t) => t.duration));
    return {
        open_ms: Math.round(opened), rows, frames, scroll_ms: Math.round(performance.now() - began),
        long_tasks: tasks.length, longest_ms: Math.round(longest),
    };
}"""


def test_a_conversation_of_2000_messages_opens_within_a_second_and_scrolls_without_long_tasks(
    page: Page, server: Server
) -> None:
    conversation = _seed_long_conversation(server, 1000)
    page.context.add_init_script(LONG_TASKS)
    page.reload()
    page.locator(".composer textarea").wait_for()
    ready_ms = round(page.evaluate("window.__composerAt"))
    # A measurement, not a race: the best of three, since the suite shares the machine's
    # two cores with model runs that can stall any page.
    attempts = []
    for _ in range(3):
        page.goto("/#/chat")
        page.locator(".composer textarea").wait_for()
        attempts.append(page.evaluate(OPEN_AND_SCROLL, conversation))
        shot(page, "long-conversation")
        if attempts[-1]["open_ms"] <= 1000 and attempts[-1]["long_tasks"] == 0:
            break
    best = min(attempts, key=lambda a: (a["long_tasks"], a["open_ms"]))
    figures = {"messages": 2000, "ready_ms": ready_ms, "best": best, "attempts": attempts}
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "long-conversation.json").write_text(json.dumps(figures, indent=1))
    # Code blocks are coloured (in the worker) and have their copy button.
    code = page.locator("pre code.hljs").first
    expect(code).to_be_visible()
    expect(code.locator("span").first).to_be_attached()
    expect(page.locator("pre button.copy").first).to_have_text("Copy")
    assert best["rows"] < 60, f"{best['rows']} messages in the page: the list is not virtualised"
    assert best["open_ms"] <= 1000, figures
    assert best["long_tasks"] == 0, figures


def test_a_plain_http_address_that_drops_the_session_cookie_says_why(
    browser: Browser, server: Server
) -> None:
    """Over plain HTTP on another address than this machine's, the browser refuses the
    Secure session cookie: the page says so instead of staying on the sign-in form."""
    server.ensure_admin()
    port = server.url.rsplit(":", 1)[1]
    lan = browser.browser_type.launch(
        executable_path=str(CHROMIUM), args=["--host-resolver-rules=MAP lan.test 127.0.0.1"]
    )
    try:
        page = lan.new_page(locale="en-US")
        page.goto(f"http://lan.test:{port}/#/login")
        page.get_by_label("User name").fill("admin")
        page.get_by_label("Password", exact=True).fill(PASSWORD)
        page.get_by_role("button", name="Sign in").click()
        expect(page.get_by_role("alert")).to_contain_text("refused the session cookie")
    finally:
        lan.close()
