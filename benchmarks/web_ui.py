"""The web page in Debian's chromium: what the first visit downloads, how soon the chat
page answers the keyboard, and a conversation of 2,000 messages — opened and scrolled by
Concilium's page versus the same messages rendered all at once (Markdown parsed and
sanitised for every message, as a page without a virtualised list does), in one run.

Usage: ``python benchmarks/web_ui.py [--write] [--quick]`` (``--quick``: 200 messages,
one repetition). Needs ``make test-deps`` (chromium) and the dev extra (Playwright).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
from playwright.sync_api import Browser, sync_playwright

from knowledge_common import measured_line, refuse_quick_write, write_section

CHROMIUM = "/usr/bin/chromium"
PASSWORD = "a long enough benchmark passphrase"
PROBE = """
window.__longTasks = [];
new PerformanceObserver((list) => {
  for (const e of list.getEntries()) {
    window.__longTasks.push({ start: e.startTime, duration: e.duration });
  }
}).observe({ type: "longtask", buffered: true });
new MutationObserver((_, observer) => {
  if (document.querySelector(".composer textarea")) {
    window.__composerAt = performance.now();
    observer.disconnect();
  }
}).observe(document, { childList: true, subtree: true });
"""
OPEN_AND_SCROLL = """async (id) => {
  const frame = () => new Promise((r) => requestAnimationFrame(r));
  const found = () => [...document.querySelectorAll('.message-row')]
    .some((row) => row.textContent.includes('END-OF-CONVERSATION'));
  const start = performance.now();
  location.hash = '#/chat/' + id;
  while (!found()) await frame();
  await frame();
  const opened = performance.now() - start;
  const list = document.querySelector('.messages');
  const began = performance.now();
  const gaps = [];
  let last = performance.now();
  const tick = async () => {
    await frame();
    const now = performance.now();
    gaps.push(now - last);
    last = now;
  };
  while (list.scrollTop > 0) {
    list.scrollTop = Math.max(0, list.scrollTop - 2400);
    await tick();
    await tick();
  }
  for (let i = 0; i < 120; i++) {
    list.scrollBy(0, 400);
    await tick();
  }
  await new Promise((r) => setTimeout(r, 300));  // long-task entries arrive after the task
  const tasks = window.__longTasks.filter((t) => t.start >= began);
  gaps.sort((a, b) => a - b);
  return {
    open_ms: opened, long_tasks: tasks.length,
    longest_ms: Math.max(0, ...tasks.map((t) => t.duration)),
    frame_p95_ms: gaps[Math.floor(gaps.length * 0.95)],
    rows: document.querySelectorAll('.message-row').length,
  };
}"""
RENDER_ALL = """async (id) => {
  const { marked } = await import('/assets/vendor/marked.mjs');
  const DOMPurify = (await import('/assets/vendor/purify.mjs')).default;
  const began = performance.now();
  const detail = await (await fetch('/api/conversations/' + id)).json();
  const host = document.querySelector('.messages') || document.body;
  const container = document.createElement('div');
  for (const m of detail.messages) {
    const row = document.createElement('article');
    row.innerHTML = DOMPurify.sanitize(marked.parse(m.content));
    container.append(row);
  }
  host.replaceChildren(container);
  host.getBoundingClientRect();
  await new Promise((r) => requestAnimationFrame(() => setTimeout(r)));
  const opened = performance.now() - began;
  await new Promise((r) => setTimeout(r, 300));  // long-task entries arrive after the task
  const tasks = window.__longTasks.filter((t) => t.start >= began);
  return { open_ms: opened, long_tasks: tasks.length,
           longest_ms: Math.max(0, ...tasks.map((t) => t.duration)),
           rows: container.children.length };
}"""


#: Bytes over the wire for the page and its files (API answers left out).
TRANSFERRED = """[
  ...performance.getEntriesByType('navigation'),
  ...performance.getEntriesByType('resource').filter((e) => e.name.includes('/assets/')),
].reduce((n, e) => n + e.transferSize, 0)"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _serve(data: Path) -> tuple[subprocess.Popen[str], str, list[str]]:
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env.update(
        CONCILIUM_DATA_DIR=str(data),
        # Dozens of page loads a minute by one user from one address (a person makes a
        # few): the per-address and per-user limits would measure themselves.
        CONCILIUM_LIMITS=json.dumps({"ip_per_minute": 0, "user_per_minute": 0}),
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "concilium", "serve", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    lines: list[str] = []

    def drain() -> None:  # the log is read to its end, or the server blocks writing it
        assert process.stderr is not None
        for line in process.stderr:
            lines.append(line)

    threading.Thread(target=drain, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if any('"setup_token"' in line for line in lines):
            return process, url, lines
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server printed no setup token:\n" + "".join(lines))


def _admin(url: str, lines: list[str]) -> None:
    token = next(json.loads(line)["setup_token"] for line in lines if '"setup_token"' in line)
    for _ in range(600):
        try:
            made = httpx.post(
                f"{url}/api/auth/setup",
                json={"setup_token": token, "username": "admin", "password": PASSWORD},
            )
            made.raise_for_status()
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise SystemExit("the server did not answer")


def _seed(url: str, data: Path, messages: int) -> str:
    login = httpx.post(f"{url}/api/auth/login", json={"username": "admin", "password": PASSWORD})
    headers = {"Authorization": f"Bearer {login.json()['access_token']}"}
    conversation = httpx.post(
        f"{url}/api/conversations", json={"title": "Long"}, headers=headers
    ).json()
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows, parent = [], None
    for n in range(messages):
        if n % 2 == 0:
            content = f"Question {n // 2}: how does part {n} work?"
        elif n % 10 == 1:
            content = f"Code for {n}:\n\n```python\ndef part_{n}(x):\n    return x * {n}\n```"
        elif n % 10 == 3:
            content = f"- **first** of {n}\n- second, `code`\n\n| a | b |\n|---|---|\n| {n} | 1 |"
        else:
            content = " ".join([f"Answer {n}: the part works as described."] * (1 + n % 4))
        if n == messages - 1:
            content += " END-OF-CONVERSATION"
        message_id = uuid.uuid4().hex
        created = (start + timedelta(seconds=n)).strftime("%Y-%m-%d %H:%M:%S.%f")
        role = "user" if n % 2 == 0 else "assistant"
        rows.append((message_id, conversation["id"], parent, n + 1, role, content, created))
        parent = message_id
    database = sqlite3.connect(data / "concilium.db")
    with database:
        database.executemany(
            "INSERT INTO messages (id, conversation_id, parent_id, seq, role, content, status,"
            " created_at, cancel_requested) VALUES (?, ?, ?, ?, ?, ?, 'complete', ?, 0)",
            rows,
        )
    database.close()
    httpx.patch(
        f"{url}/api/conversations/{conversation['id']}",
        json={"active_leaf_id": parent},
        headers=headers,
    ).raise_for_status()
    return str(conversation["id"])


def _signed_in(browser: Browser, url: str) -> Any:
    context = browser.new_context(base_url=url, viewport={"width": 1280, "height": 800})
    context.add_init_script(PROBE)
    page = context.new_page()
    page.goto("/#/login")
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".composer textarea").wait_for()
    return context, page


def _first_visit(browser: Browser, url: str) -> dict[str, float]:
    """A browser with nothing cached opens the address: bytes over the wire (gzip) until the
    sign-in form, then after signing in until the chat page answers the keyboard."""
    context = browser.new_context(base_url=url)
    context.add_init_script(PROBE)
    page = context.new_page()
    page.goto("/")
    page.get_by_label("User name").wait_for()
    before = page.evaluate(TRANSFERRED)
    page.get_by_label("User name").fill("admin")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in").click()
    page.locator(".composer textarea").wait_for()
    after = page.evaluate(TRANSFERRED)
    context.close()
    return {"sign_in_kb": before / 1024, "chat_kb": after / 1024}


def _ready(browser: Browser, url: str, runs: int) -> list[float]:
    """Loading the chat page (signed in, files revalidated): until the message box exists."""
    context, page = _signed_in(browser, url)
    times = []
    for _ in range(runs):
        page.reload()
        page.locator(".composer textarea").wait_for()
        times.append(page.evaluate("window.__composerAt"))
    context.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--write", action="store_true", help="rewrite BENCHMARKS.md's section")
    parser.add_argument("--quick", action="store_true", help="200 messages, one repetition")
    args = parser.parse_args()
    refuse_quick_write(parser, args)
    messages, runs = (200, 1) if args.quick else (2000, 5)
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder)
        process, url, lines = _serve(data)
        try:
            _admin(url, lines)
            conversation = _seed(url, data, messages)
            with sync_playwright() as playwright:
                browser = playwright.chromium.launch(executable_path=CHROMIUM)
                first = _first_visit(browser, url)
                ready = _ready(browser, url, runs)
                ours, naive = [], []
                context, signed = _signed_in(browser, url)
                signed.close()
                for _ in range(runs):
                    for probe, results in ((OPEN_AND_SCROLL, ours), (RENDER_ALL, naive)):
                        page = context.new_page()  # a fresh page, the same session
                        page.goto("/#/chat")
                        page.locator(".composer textarea").wait_for()
                        results.append(page.evaluate(probe, conversation))
                        page.close()
                context.close()
                browser.close()
        finally:
            process.terminate()
            process.wait(timeout=30)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    result = {
        "messages": messages,
        "first_visit": first,
        "ready_ms": statistics.median(ready),
        "concilium": {
            k: median(ours, k)
            for k in ("open_ms", "long_tasks", "longest_ms", "frame_p95_ms", "rows")
        },
        "render_all": {
            k: median(naive, k) for k in ("open_ms", "long_tasks", "longest_ms", "rows")
        },
    }
    print(json.dumps(result, indent=1), file=sys.stderr)
    text = _table(result, runs)
    print(text)
    if args.write:
        write_section("web_ui", "Web page", text)
    return 0


def _table(result: dict[str, Any], runs: int) -> str:
    c, n, first = result["concilium"], result["render_all"], result["first_visit"]
    times = n["open_ms"] / c["open_ms"]
    rows = [
        (
            "bytes to the sign-in form (first visit, gzip)",
            f"{first['sign_in_kb']:.0f} KB",
            "—",
            "≤ 200 KB",
        ),
        (
            "bytes to the chat page after sign-in (every view)",
            f"{first['chat_kb']:.0f} KB",
            "—",
            "—",
        ),
        (
            "chat page load until the message box exists",
            f"{result['ready_ms']:.0f} ms",
            "—",
            "≤ 500 ms",
        ),
        (
            f"open a conversation of {result['messages']:,} messages",
            f"{c['open_ms']:.0f} ms",
            f"{n['open_ms']:.0f} ms ({times:.1f} times)",
            "≤ 1,000 ms",
        ),
        ("messages in the page", f"{c['rows']:.0f}", f"{n['rows']:.0f}", "—"),
        (
            "long tasks (> 50 ms) opening and scrolling",
            f"{c['long_tasks']:.0f} (longest {c['longest_ms']:.0f} ms)",
            f"{n['long_tasks']:.0f} (longest {n['longest_ms']:.0f} ms)",
            "0",
        ),
        ("frame interval p95 while scrolling", f"{c['frame_p95_ms']:.1f} ms", "—", "—"),
    ]
    return "\n".join(
        [
            measured_line("python benchmarks/web_ui.py --write"),
            "",
            "Headless Debian chromium on loopback against `concilium serve` (defaults, "
            f"SQLite); medians of {runs} runs. The alternative, in the same browser and run: "
            "the same messages rendered all at once (marked and DOMPurify for each, then laid "
            "out), as a page without a virtualised list does.",
            "",
            "| figure | Concilium | render everything | target |",
            "|---|---|---|---|",
            *(f"| {a} | {b} | {c_} | {d} |" for a, b, c_, d in rows),
        ]
    )


if __name__ == "__main__":
    raise SystemExit(main())
