"""A workspace's files — where the agent's tools work — through the API and the CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.support.fake_llm_servers import FakeOpenAI
from tests.support.live import Live


def test_files_go_in_and_out_of_a_workspace_under_its_roles(
    fake_live: tuple[Live, FakeOpenAI],
) -> None:
    live, _ = fake_live
    admin = live.client(live.tokens("admin")["access_token"])  # a login holds every scope
    made = admin.post("/api/workspaces", json={"name": "team"})
    assert made.status_code == 201, made.text
    wid = made.json()["id"]
    base = f"/api/workspaces/{wid}/files"
    put = admin.put(f"{base}/reports/q3.csv", content=b"month,total\nJuly,42\n")
    assert put.status_code == 201, put.text
    assert put.json()["path"] == "reports/q3.csv"
    assert put.json()["size"] == 20
    # The agent's tools see it where they work.
    assert (live.services.settings.workspaces_dir / wid / "reports" / "q3.csv").is_file()
    listed = admin.get(base).json()
    assert [(e["path"], e["kind"]) for e in listed] == [("reports", "folder")]
    inner = admin.get(base, params={"path": "reports"}).json()
    assert [(e["path"], e["size"]) for e in inner] == [("reports/q3.csv", 20)]
    got = admin.get(f"{base}/reports/q3.csv")
    assert got.status_code == 200
    assert got.content == b"month,total\nJuly,42\n"

    # Nothing outside the folder, by any spelling.
    for path in ("../escape.txt", "reports/../../x", "%2e%2e/x"):
        assert admin.put(f"{base}/{path}", content=b"x").status_code in (404, 422), path
    assert admin.get(base, params={"path": "../.."}).status_code == 422

    # A viewer reads; only members and above write; a stranger sees nothing.
    viewer, viewer_client = live.user(scopes=["chat", "tools"])
    added = admin.put(
        f"/api/workspaces/{wid}/members", json={"username": viewer["username"], "role": "viewer"}
    )
    assert added.status_code == 200, added.text
    assert viewer_client.get(f"{base}/reports/q3.csv").content == b"month,total\nJuly,42\n"
    assert viewer_client.put(f"{base}/mine.txt", content=b"x").status_code == 403
    assert viewer_client.delete(f"{base}/reports/q3.csv").status_code == 403
    _, stranger = live.user(scopes=["chat", "tools"])
    assert stranger.get(base).status_code == 404
    # An API key without the tools scope reads but does not write.
    _, chat_only = live.login("admin", ["chat"])
    assert chat_only.get(base).status_code == 200
    assert chat_only.put(f"{base}/x.txt", content=b"x").status_code == 403

    assert admin.delete(f"{base}/reports").status_code == 204
    assert admin.get(f"{base}/reports/q3.csv").status_code == 404
    assert admin.get(base).json() == []


def test_the_cli_puts_lists_gets_and_removes_files(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CONCILIUM_")}
    env["CONCILIUM_DATA_DIR"] = str(tmp_path / "data")
    env["COLUMNS"] = "200"

    def cli(*args: str, stdin: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "concilium", "files", *args],
            env=env,
            input=stdin,
            capture_output=True,
            timeout=120,
            check=False,
        )

    local = tmp_path / "notes.txt"
    local.write_text("for the agent\n")
    assert cli("put", str(local), "in/notes.txt").returncode == 0
    listed = cli("list", "in")
    assert listed.returncode == 0, listed.stderr
    assert b"in/notes.txt" in listed.stdout
    assert cli("get", "in/notes.txt").stdout == b"for the agent\n"
    assert (tmp_path / "data" / "workspaces" / "local" / "in" / "notes.txt").is_file()
    outside = cli("put", str(local), "../../escape.txt")
    assert outside.returncode == 1
    assert b"outside the workspace" in outside.stderr
    assert cli("rm", "in").returncode == 0
    missing = cli("get", "in/notes.txt")
    assert missing.returncode == 1
    assert b"does not exist" in missing.stderr
