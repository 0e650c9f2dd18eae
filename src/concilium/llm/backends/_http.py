"""What HTTP backends share: one aiohttp session per backend, an SSE line decoder, and one
mapping of failures to errors.

aiohttp rather than httpx here: streaming 50 concurrent answers from a local upstream,
aiohttp sustained ~5,700 requests/s where httpx + httpx-sse managed ~400 on the same core
(benchmarks/chat_overhead.py measures what that means for the server).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import structlog

from concilium.config import BackendSettings, Settings
from concilium.errors import BackendError, BackendTimeout

__all__ = [
    "HTTPBackendClient",
    "ServerSentEvent",
    "count_or_none",
    "decode_object",
    "error_from_response",
    "error_from_transport",
    "iter_sse",
]

log = structlog.get_logger(__name__)
_RETRYABLE_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
_MAX_ERROR_BODY = 2000


class HTTPBackendClient:
    """A lazily created aiohttp session (sessions must be born inside the event loop)."""

    def __init__(
        self,
        config: BackendSettings,
        settings: Settings,
        *,
        connect_timeout: float,
        verify_tls: bool,
    ) -> None:
        if not config.base_url:
            raise ValueError("this backend type needs base_url")
        self.base_url = config.base_url.rstrip("/")
        self.headers = {k: v.get_secret_value() for k, v in config.headers.items()}
        if config.api_key is not None:
            self.headers["Authorization"] = f"Bearer {config.api_key.get_secret_value()}"
        self.timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=connect_timeout,
            sock_read=config.idle_timeout or settings.router.idle_timeout,
        )
        self.verify_tls = verify_tls
        self._session: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._closed:
            raise BackendError("backend is shut down", retryable=False)
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                headers=self.headers,
                timeout=self.timeout,
                connector=aiohttp.TCPConnector(limit=200, ssl=self.verify_tls),
                raise_for_status=False,
                trust_env=False,
            )
        return self._session

    def url(self, path: str) -> str:
        return self.base_url + path

    async def get_json(self, backend: str, path: str) -> Any:
        """GET a small JSON document (model lists), with errors mapped like streams'."""
        try:
            async with self.session.get(
                self.url(path), timeout=aiohttp.ClientTimeout(total=5)
            ) as response:
                if response.status >= 400:
                    raise await error_from_response(backend, response)
                return await response.json(content_type=None)
        except (TimeoutError, aiohttp.ClientError, ValueError) as exc:
            raise error_from_transport(backend, exc) from exc

    async def close(self) -> None:
        self._closed = True
        if self._session is not None and not self._session.closed:
            await self._session.close()


@dataclass(frozen=True, slots=True)
class ServerSentEvent:
    data: str
    event: str = "message"


async def iter_sse(response: aiohttp.ClientResponse) -> AsyncIterator[ServerSentEvent]:
    """Decode a ``text/event-stream`` body (the WHATWG rules that matter for LLM servers)."""
    data: list[str] = []
    event = "message"
    async for raw in response.content:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield ServerSentEvent("\n".join(data), event)
            data, event = [], "message"
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            data.append(value)
        elif field == "event":
            event = value
    if data:
        yield ServerSentEvent("\n".join(data), event)


def decode_object(backend: str, raw: str | bytes) -> dict[str, Any]:
    """One JSON object from a stream (an SSE data field, an NDJSON line)."""
    try:
        data = json.loads(raw)
    except ValueError as exc:
        raise BackendError(f"{backend}: malformed chunk {raw[:200]!r}") from exc
    if not isinstance(data, dict):
        raise BackendError(f"{backend}: malformed chunk {raw[:200]!r}")
    return data


def count_or_none(value: object) -> int | None:
    """A token count from an upstream, or None when it sent something that is not one."""
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return value if ok else None  # type: ignore[return-value]


def _retry_after(response: aiohttp.ClientResponse) -> float | None:
    value = response.headers.get("Retry-After")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        return None


def _upstream_message(body: str) -> str:
    """The upstream's own error message when it sent one (OpenAI and Ollama shapes)."""
    try:
        data = json.loads(body)
    except ValueError:
        return body[:200]
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict):
        error = error.get("message")
    return str(error)[:200] if error else body[:200]


async def error_from_response(backend: str, response: aiohttp.ClientResponse) -> BackendError:
    """An error for a non-2xx answer, carrying the upstream's message (bounded)."""
    try:
        body = (await response.content.read(_MAX_ERROR_BODY)).decode("utf-8", "replace")
    except (aiohttp.ClientError, TimeoutError):
        body = ""
    status = response.status
    log.warning("backend_http_error", backend=backend, status=status, body=body)
    return BackendError(
        f"{backend}: HTTP {status} {_upstream_message(body)}".strip(),
        retryable=status in _RETRYABLE_STATUS,
        retry_after=_retry_after(response),
        upstream_status=status,
    )


def error_from_transport(backend: str, exc: BaseException) -> BackendError:
    """Clients learn what kind of failure it was; the details (hosts, ports) go to the log."""
    log.warning("backend_transport_error", backend=backend, error=repr(exc))
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return BackendTimeout(f"{backend}: no data within the read timeout")
    if isinstance(exc, aiohttp.ClientConnectionError):
        return BackendError(f"{backend}: cannot reach the server ({type(exc).__name__})")
    return BackendError(f"{backend}: transport error ({type(exc).__name__})")
