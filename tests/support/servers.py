"""Run an ASGI app on a real loopback socket in a background thread."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from typing import Any, TypeVar

import uvicorn

T = TypeVar("T")


class _LoopCapture:
    """Remembers the event loop the app runs in, so tests can run coroutines there."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.loop: asyncio.AbstractEventLoop | None = None

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if self.loop is None:
            self.loop = asyncio.get_running_loop()
        await self.app(scope, receive, send)


class ThreadServer:
    def __init__(self, url: str, capture: _LoopCapture) -> None:
        self.url = url
        self._capture = capture

    def run(self, coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
        """Run ``coro`` on the server's event loop (where its database connections live)."""
        assert self._capture.loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._capture.loop).result(timeout)


@contextmanager
def serve_app(app: Any, **config: Any) -> Iterator[ThreadServer]:
    capture = _LoopCapture(app)
    server = uvicorn.Server(
        uvicorn.Config(
            capture,
            host="127.0.0.1",
            port=0,
            log_config=None,
            access_log=False,
            lifespan="on",
            ws="websockets-sansio",
            timeout_graceful_shutdown=5,
            proxy_headers=False,
            **config,
        )
    )
    thread = threading.Thread(target=server.run, name="test-server", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("test server did not start")
        time.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield ThreadServer(f"http://127.0.0.1:{port}", capture)
    finally:
        server.should_exit = True
        thread.join(timeout=30)


@contextmanager
def serve_in_thread(app: Any, **config: Any) -> Iterator[str]:
    """Yield the base URL of ``app`` served by uvicorn on 127.0.0.1 (a free port)."""
    with serve_app(app, **config) as server:
        yield server.url
