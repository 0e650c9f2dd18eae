"""The guarded way out of the sandbox: an HTTP proxy on a Unix socket.

A sandboxed program has its own, empty, network namespace. When a tool grants it the
network, the only way out is this proxy, bound into the sandbox as a socket file (a relay
inside listens where ``http_proxy`` points). Each connection names its destination — an
HTTP ``CONNECT host:port`` (HTTPS and anything tunnelled) or an absolute ``http://`` URL —
which passes ``policy.check_host`` (the rules of ``http_fetch``: public addresses only,
unless allow-listed) and is then made to the addresses that were checked, never to a
second DNS answer. A refused destination gets ``403`` and is recorded, so the tool call is
audited as denied.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from urllib.parse import urlsplit

import structlog

from concilium.agents.policy import PolicyDenied, check_host
from concilium.config import NetworkToolSettings

__all__ = ["GuardedProxy"]

log = structlog.get_logger(__name__)

_HEAD_LIMIT = 64 * 1024
_HOP_BY_HOP = (b"proxy-connection", b"proxy-authorization", b"connection", b"keep-alive")


class GuardedProxy:
    def __init__(self, path: Path, settings: NetworkToolSettings) -> None:
        self.path = path
        self.settings = settings
        #: "host:port: reason" for each refused destination.
        self.refused: list[str] = []
        #: "host:port" for each destination reached.
        self.connected: list[str] = []
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        self._server = await asyncio.start_unix_server(
            self._accept, path=str(self.path), limit=_HEAD_LIMIT
        )
        self.path.chmod(0o666)  # the sandbox's user connects; the folder keeps others out

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        try:
            await self._serve(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, ValueError):
            pass
        finally:
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async with asyncio.timeout(self.settings.timeout_seconds):
            head = await reader.readuntil(b"\r\n\r\n")
        line, _, rest = head.partition(b"\r\n")
        try:
            method, target, version = line.decode("latin-1").split(" ")
        except ValueError:
            await _answer(writer, 400, "not an HTTP proxy request")
            return
        if method == "CONNECT":
            host, _, port_text = target.rpartition(":")
            host = host.strip("[]")
            request = b""
        else:
            parts = urlsplit(target)
            if parts.scheme != "http" or not parts.hostname:
                await _answer(writer, 400, "only http:// URLs or CONNECT")
                return
            host, port_text = parts.hostname, str(parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            headers = [
                h
                for h in rest.split(b"\r\n")
                if h and h.split(b":", 1)[0].strip().lower() not in _HOP_BY_HOP
            ]
            request = (
                b"\r\n".join(
                    [f"{method} {path} {version}".encode("latin-1"), *headers, b"Connection: close"]
                )
                + b"\r\n\r\n"
            )
        destination = f"{host}:{port_text}"
        try:
            if not port_text.isdigit():
                raise PolicyDenied(f"{port_text!r} is not a port")
            port = int(port_text)
            addresses = await check_host(host, port, self.settings.allow)
        except PolicyDenied as exc:
            self.refused.append(f"{destination}: {exc}")
            log.info("sandbox_egress", destination=destination, allowed=False, reason=str(exc))
            await _answer(writer, 403, f"refused by Concilium's network policy: {exc}")
            return
        upstream = await self._connect(addresses, port)
        if upstream is None:
            await _answer(writer, 502, f"{destination} did not answer")
            return
        self.connected.append(destination)
        log.info("sandbox_egress", destination=destination, allowed=True)
        up_reader, up_writer = upstream
        try:
            if method == "CONNECT":
                writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
            else:
                up_writer.write(request)
            await asyncio.gather(_pump(reader, up_writer), _pump(up_reader, writer))
        finally:
            up_writer.close()

    async def _connect(
        self, addresses: list[str], port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        for address in addresses:
            try:
                async with asyncio.timeout(self.settings.timeout_seconds):
                    return await asyncio.open_connection(address, port)
            except (OSError, TimeoutError):
                continue
        return None


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if writer.can_write_eof():
                writer.write_eof()


async def _answer(writer: asyncio.StreamWriter, status: int, reason: str) -> None:
    body = (reason + "\n").encode()
    titles = {400: "Bad Request", 403: "Forbidden", 502: "Bad Gateway"}
    writer.write(
        f"HTTP/1.1 {status} {titles[status]}\r\nContent-Type: text/plain\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
        + body
    )
    with contextlib.suppress(OSError):
        await writer.drain()
