#!/usr/bin/env python3
"""Copy the web page's third-party files from npm into the package (no build step).

    cd web && npm ci && cd .. && python3 scripts/vendor-web.py

Reads ``web/node_modules`` (installed from ``web/package-lock.json``, whose integrity
hashes npm checks), copies the files the page loads into ``src/concilium/web/vendor`` and
the test-only ones into ``tests/browser/vendor``, with each package's licence, and writes
``MANIFEST.json`` (package, version, licence, file, sha256). ``tests/web/test_assets.py``
fails when a vendored file or version no longer matches the manifest and the lock.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODULES = ROOT / "web" / "node_modules"
PAGE = ROOT / "src" / "concilium" / "web" / "vendor"
TESTS = ROOT / "tests" / "browser" / "vendor"

#: package → [(file in the package, name in the vendor folder)], and where it goes.
FILES: dict[str, tuple[Path, list[tuple[str, str]]]] = {
    "preact": (PAGE, [("dist/preact.mjs", "preact.mjs"), ("hooks/dist/hooks.mjs", "hooks.mjs")]),
    "htm": (PAGE, [("dist/htm.mjs", "htm.mjs")]),
    "marked": (PAGE, [("lib/marked.esm.js", "marked.mjs")]),
    "dompurify": (PAGE, [("dist/purify.es.mjs", "purify.mjs")]),
    "@highlightjs/cdn-assets": (
        PAGE,
        [
            ("es/highlight.min.js", "highlight.mjs"),
            ("styles/github.min.css", "highlight-light.css"),
            ("styles/github-dark.min.css", "highlight-dark.css"),
        ],
    ),
    "@tanstack/virtual-core": (
        PAGE,
        [
            (f"dist/esm/{name}.js", f"virtual-core/{name}.js")
            for name in ("index", "utils", "lazy-measurements", "scroll-classifier", "ios-gesture")
        ],
    ),
    "axe-core": (TESTS, [("axe.min.js", "axe.min.js")]),
}
LICENCE_NAMES = ("LICENSE", "LICENSE.md", "LICENSE.txt", "LICENCE", "license")


def main() -> int:
    lock = json.loads((ROOT / "web" / "package-lock.json").read_text())
    for folder in (PAGE, TESTS):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    manifests: dict[Path, list[dict[str, str]]] = {PAGE: [], TESTS: []}
    for package, (folder, files) in FILES.items():
        source = MODULES / package
        meta = json.loads((source / "package.json").read_text())
        locked = lock["packages"][f"node_modules/{package}"]
        if meta["version"] != locked["version"]:
            sys.exit(f"{package}: installed {meta['version']}, locked {locked['version']}: npm ci")
        licence_file = next((source / n for n in LICENCE_NAMES if (source / n).exists()), None)
        if licence_file is None:
            sys.exit(f"{package}: no licence file")
        licence_copy = folder / "licenses" / (package.replace("/", "__") + ".txt")
        licence_copy.parent.mkdir(exist_ok=True)
        shutil.copyfile(licence_file, licence_copy)
        for inside, name in files:
            target = folder / name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / inside, target)
            manifests[folder].append(
                {
                    "file": name,
                    "package": package,
                    "version": meta["version"],
                    "license": meta.get("license", ""),
                    "source": inside,
                    "integrity": locked["integrity"],
                    "sha256": hashlib.sha256(target.read_bytes()).hexdigest(),
                }
            )
    for folder, entries in manifests.items():
        text = json.dumps(entries, indent=2) + "\n"
        (folder / "MANIFEST.json").write_text(text)
    print(f"vendored {sum(len(e) for e in manifests.values())} files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
