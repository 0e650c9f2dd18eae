"""The web page: ``/`` and ``/assets/…``, every file from inside the package.

No build step: the page is ES modules and the third-party libraries vendored from npm
(``web/package-lock.json``, copied by ``scripts/vendor-web.py``). The files are read once,
gzipped once, and served with an ETag; the page's Content-Security-Policy allows scripts
from this origin and the one inline import map (by its hash), nothing from elsewhere.
"""

from __future__ import annotations

import base64
import functools
import gzip
import hashlib
import mimetypes
import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse

__all__ = ["WebAssets", "package_assets", "router", "wants_page"]

router = APIRouter(include_in_schema=False)

_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".mjs": "text/javascript; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": "application/json",
    ".svg": "image/svg+xml",
    ".png": "image/png",
    ".html": "text/html; charset=utf-8",
    ".txt": "text/plain; charset=utf-8",
}
_COMPRESSIBLE = {".js", ".mjs", ".css", ".json", ".svg", ".html", ".txt"}
_IMPORT_MAP = re.compile(rb'<script type="importmap">(.*?)</script>', re.S)


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    gzipped: bytes | None
    etag: str
    media_type: str


class WebAssets:
    """The page's files, loaded from the package once."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = root or Path(str(resources.files("concilium") / "web"))
        self.assets: dict[str, Asset] = {}
        for path in sorted(self.root.rglob("*")):
            if path.is_file() and not path.name.startswith("."):
                self.assets[path.relative_to(self.root).as_posix()] = _load(path)
        page = self.assets["index.html"].body
        scripts = [
            "'sha256-" + base64.b64encode(hashlib.sha256(m).digest()).decode() + "'"
            for m in _IMPORT_MAP.findall(page)
        ]
        self.policy = (
            "default-src 'none'; "
            f"script-src 'self' {' '.join(scripts)}; "
            "style-src 'self'; img-src 'self' data: blob:; connect-src 'self'; "
            "font-src 'self'; manifest-src 'self'; media-src 'self' blob:; "
            "frame-ancestors 'none'; base-uri 'none'; form-action 'self'"
        )

    def response(self, name: str, request: Request) -> Response:
        asset = self.assets.get(name)
        if asset is None:
            return JSONResponse(
                {
                    "type": "urn:concilium:problem:not_found",
                    "title": "Not found",
                    "status": 404,
                    "detail": f"no asset {name!r}",
                    "code": "not_found",
                },
                status_code=404,
                media_type="application/problem+json",
            )
        headers = {
            "ETag": asset.etag,
            # Revalidated every time: a 304 on loopback costs less than a stale page
            # after an upgrade.
            "Cache-Control": "no-cache",
            # "/" is the page for browsers and a JSON description for others.
            "Vary": "Accept, Accept-Encoding" if name == "index.html" else "Accept-Encoding",
        }
        if name == "index.html":
            headers["Content-Security-Policy"] = self.policy
        if request.headers.get("if-none-match") == asset.etag:
            return Response(status_code=304, headers=headers)
        body = asset.body
        if asset.gzipped is not None and "gzip" in request.headers.get("accept-encoding", ""):
            body = asset.gzipped
            headers["Content-Encoding"] = "gzip"
        return Response(body, media_type=asset.media_type, headers=headers)


@functools.cache
def package_assets() -> WebAssets:
    """The package's page, loaded once per process (every app of the process shares it)."""
    return WebAssets()


def _load(path: Path) -> Asset:
    body = path.read_bytes()
    suffix = path.suffix.lower()
    media = _TYPES.get(suffix) or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    packed = gzip.compress(body, compresslevel=9, mtime=0) if suffix in _COMPRESSIBLE else None
    if packed is not None and len(packed) >= len(body):
        packed = None
    etag = '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    return Asset(body, packed, etag, media)


def wants_page(request: Request) -> bool:
    """A browser navigating here (it asks for HTML), not an API client."""
    return "text/html" in request.headers.get("accept", "")


def _assets(request: Request) -> WebAssets:
    web: WebAssets = request.app.state.web
    return web


@router.get("/assets/{name:path}")
async def asset(name: str, request: Request) -> Response:
    return _assets(request).response(name, request)


@router.get("/favicon.ico")
async def favicon(request: Request) -> Response:
    return _assets(request).response("icon.svg", request)
