"""The web page's files: vendored libraries match the npm lock, every string exists in
both languages, imports resolve, the first load stays small, and the server serves them
with the right headers."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from concilium.api.app import create_app
from concilium.api.web import WebAssets
from tests.conftest import REPO, SettingsFactory

WEB = REPO / "src" / "concilium" / "web"
LOCK = json.loads((REPO / "web" / "package-lock.json").read_text())
PACKAGE = json.loads((REPO / "web" / "package.json").read_text())
IMPORT = re.compile(
    r"""(?:import|export)\s[^'"]*?from\s*["']([^"']+)["']|import\(\s*["']([^"']+)["']\s*\)|^import\s+["']([^"']+)["']""",
    re.M,
)
KEY = re.compile(r"""(?<![\w.])t\(\s*["']([a-z][\w.]*)["']""")
DYNAMIC = re.compile(r"""(?<![\w.])t\(\s*`([a-z][\w.]*)\.\$\{""")
#: What the first visit loads before it shows anything: the page, its style, the modules
#: main.js imports (not the views it loads on demand) and one language.
INITIAL_BUDGET = 200 * 1024


def _manifests() -> list[tuple[Path, dict[str, str]]]:
    out = []
    for folder in (WEB / "vendor", REPO / "tests" / "browser" / "vendor"):
        out += [(folder, entry) for entry in json.loads((folder / "MANIFEST.json").read_text())]
    return out


@pytest.mark.parametrize(
    ("folder", "entry"), _manifests(), ids=lambda v: getattr(v, "get", lambda _: "")("file")
)
def test_each_vendored_file_is_the_locked_release_unchanged(
    folder: Path, entry: dict[str, str]
) -> None:
    locked = LOCK["packages"][f"node_modules/{entry['package']}"]
    assert entry["version"] == locked["version"], "re-run scripts/vendor-web.py after npm ci"
    assert entry["integrity"] == locked["integrity"]
    data = (folder / entry["file"]).read_bytes()
    assert hashlib.sha256(data).hexdigest() == entry["sha256"], f"{entry['file']} was edited"
    licence = folder / "licenses" / (entry["package"].replace("/", "__") + ".txt")
    assert licence.is_file()
    assert licence.stat().st_size > 100
    assert entry["license"], "every vendored package names its licence"


def test_every_declared_package_is_vendored_and_pinned_exactly() -> None:
    vendored = {entry["package"] for _, entry in _manifests()}
    declared = {**PACKAGE["dependencies"], **PACKAGE["devDependencies"]}
    assert set(declared) == vendored
    assert all(re.fullmatch(r"\d+\.\d+\.\d+", version) for version in declared.values())


def _locales() -> dict[str, dict[str, str]]:
    return {p.stem: json.loads(p.read_text()) for p in sorted((WEB / "locales").glob("*.json"))}


def test_every_string_exists_in_english_and_french() -> None:
    locales = _locales()
    assert set(locales) == {"en", "fr"}
    en, fr = locales["en"], locales["fr"]
    assert sorted(set(en) ^ set(fr)) == [], "keys missing in one language"
    assert [k for k, v in {**en, **fr}.items() if not v.strip()] == []
    for key in en:  # the same placeholders on both sides
        assert set(re.findall(r"\{\w+\}", en[key])) == set(re.findall(r"\{\w+\}", fr[key])), key
    sources = "\n".join(p.read_text() for p in (WEB / "js").glob("*.js"))
    used = set(KEY.findall(sources))
    assert used, "the scan found no t() call"
    assert sorted(used - set(en)) == [], "t() keys missing from the locale files"
    for prefix in DYNAMIC.findall(sources):
        assert any(k.startswith(prefix + ".") for k in en), f"no key under {prefix}."


def _resolve(module: Path, target: str, imports: dict[str, str]) -> Path:
    if target in imports:
        return WEB / imports[target].removeprefix("/assets/")
    if target.startswith("/assets/"):
        return WEB / target.removeprefix("/assets/")
    return (module.parent / target).resolve()


def _import_map() -> dict[str, str]:
    page = (WEB / "index.html").read_text()
    found = re.search(r'<script type="importmap">(.*?)</script>', page, re.S)
    assert found is not None
    imports: dict[str, str] = json.loads(found.group(1))["imports"]
    return imports


def _graph(start: Path, imports: dict[str, str], dynamic: bool) -> set[Path]:
    seen: set[Path] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        text = module.read_text()
        for static, lazy, bare in IMPORT.findall(text):
            target = static or bare or (lazy if dynamic else "")
            if target:
                todo.append(_resolve(module, target, imports))
    return seen


def test_every_import_resolves_to_a_file_of_the_package() -> None:
    imports = _import_map()
    for target in imports.values():
        assert (WEB / target.removeprefix("/assets/")).is_file(), target
    modules = _graph(WEB / "js" / "main.js", imports, dynamic=True)
    assert {p.name for p in modules} >= {"chat.js", "knowledge.js", "admin.js", "account.js"}
    assert all(p.is_file() for p in modules)


def test_the_first_load_is_under_200_kb_gzipped() -> None:
    imports = _import_map()
    first = _graph(WEB / "js" / "main.js", imports, dynamic=False)
    page = (WEB / "index.html").read_text()
    preloaded = {WEB / h for h in re.findall(r'rel="modulepreload" href="/assets/([^"]+)"', page)}
    files = [*(first | preloaded), WEB / "index.html", WEB / "app.css", WEB / "locales" / "en.json"]
    size = sum(len(gzip.compress(p.read_bytes(), 9)) for p in files)
    assert size <= INITIAL_BUDGET, f"{size} bytes gzipped"


def test_the_page_and_its_files_are_served_with_their_policy(
    make_settings: SettingsFactory,
) -> None:
    with TestClient(create_app(make_settings())) as client:
        page = client.get("/", headers={"Accept": "text/html"})
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        policy = page.headers["content-security-policy"]
        assert "script-src 'self' 'sha256-" in policy
        assert "unsafe" not in policy
        assert "connect-src 'self'" in policy
        assert "default-src 'none'" in policy
        assert len(page.headers.get_list("content-security-policy")) == 1
        assert page.headers["x-frame-options"] == "DENY"
        # API clients still get the description of the server.
        assert client.get("/").json()["name"] == "Concilium"

        script = client.get("/assets/js/main.js", headers={"Accept-Encoding": "gzip"})
        assert script.status_code == 200
        assert script.headers["content-type"].startswith("text/javascript")
        assert script.headers["content-encoding"] == "gzip"
        assert script.content == (WEB / "js" / "main.js").read_bytes()  # decoded by httpx
        again = client.get("/assets/js/main.js", headers={"If-None-Match": script.headers["etag"]})
        assert again.status_code == 304
        assert again.content == b""
        missing = client.get("/assets/js/nope.js")
        assert missing.status_code == 404
        assert missing.headers["content-type"] == "application/problem+json"
        assert client.get("/assets/../pyproject.toml").status_code == 404


def test_the_policy_hash_is_the_import_map_s() -> None:
    assets = WebAssets()
    body = assets.assets["index.html"].body
    found = re.search(rb'<script type="importmap">(.*?)</script>', body, re.S)
    assert found is not None
    digest = base64.b64encode(hashlib.sha256(found.group(1)).digest()).decode()
    assert f"'sha256-{digest}'" in assets.policy


def test_every_preloaded_module_exists() -> None:
    page = (WEB / "index.html").read_text()
    for href in re.findall(r'rel="modulepreload" href="/assets/([^"]+)"', page):
        assert (WEB / href).is_file(), href
