"""Serialising the event stream over HTTP, and stopping work when the client leaves."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import HTTPException, Request
from fastapi.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

from concilium.events import Event, event_to_dict

__all__ = [
    "SSE_HEADERS",
    "coalesced",
    "event_stream_response",
    "sse_frame",
    "sse_response",
    "until_disconnect",
]

T = TypeVar("T")

SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


def sse_frame(event: Event) -> bytes:
    data = json.dumps(event_to_dict(event), ensure_ascii=False)
    return f"event: {event.type}\ndata: {data}\n\n".encode()


async def _frames(events: AsyncIterator[Event]) -> AsyncIterator[bytes]:
    async for event in events:
        yield sse_frame(event)


_END = object()


async def coalesced(chunks: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """Pass ``chunks`` on, joining those that are ready together into one write.

    A token that arrives alone still leaves at once; tokens that arrive faster than the
    socket takes them (a burst from an upstream, a slow client) share one write instead
    of costing a system call each. Closing this iterator stops the producer.
    """
    queue: asyncio.Queue[object] = asyncio.Queue()

    async def produce() -> None:
        try:
            async for chunk in chunks:
                queue.put_nowait(chunk)
        except Exception as exc:  # handed to the consumer, raised there
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(_END)

    producer = asyncio.ensure_future(produce())
    try:
        while True:
            batch = [await queue.get()]
            while not queue.empty():
                batch.append(queue.get_nowait())
            ended = batch[-1] is _END
            parts = [b for b in batch if isinstance(b, bytes)]
            if parts:
                yield b"".join(parts)
            for item in batch:
                if isinstance(item, Exception):
                    raise item
            if ended:
                return
    finally:
        if not producer.done():
            producer.cancel()
            await asyncio.wait({producer})


class _ClosingStreamingResponse(StreamingResponse):
    """Runs ``on_close`` however the response ends — even when the client left before the
    body iterator was first advanced, in which case its own ``finally`` never runs."""

    def __init__(
        self,
        content: AsyncIterator[bytes],
        on_close: Callable[[], Awaitable[None]],
        **kwargs: Any,
    ) -> None:
        super().__init__(content, **kwargs)
        self._on_close = on_close

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            await self._on_close()


def sse_response(
    chunks: AsyncIterator[bytes], on_close: Callable[[], Awaitable[None]]
) -> StreamingResponse:
    """An event-stream response; ``on_close`` stops the work behind it when it ends."""
    return _ClosingStreamingResponse(
        coalesced(chunks), on_close, media_type="text/event-stream", headers=SSE_HEADERS
    )


def event_stream_response(
    events: AsyncIterator[Event], on_close: Callable[[], Awaitable[None]]
) -> StreamingResponse:
    """Concilium's own SSE: one ``event: <type>`` frame per event."""
    return sse_response(_frames(events), on_close)


async def until_disconnect(request: Request, work: Awaitable[T]) -> T:
    """Await ``work``, cancelling it if the client disconnects first (non-streamed answers).

    The request body has been read by then, so the next ASGI message is the disconnect.
    """
    task = asyncio.ensure_future(work)

    async def disconnected() -> None:
        while (await request.receive())["type"] != "http.disconnect":
            pass

    watcher = asyncio.ensure_future(disconnected())
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        watcher.cancel()
        if not task.done():
            task.cancel()
            await asyncio.wait({task})  # let its clean-up run (it stops the generation)
    if task.cancelled():
        # Nobody will read this response; 499 is what the access log shows.
        raise HTTPException(499, "client closed the request")
    return task.result()
