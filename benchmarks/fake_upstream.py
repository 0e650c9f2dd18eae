"""A minimal OpenAI-protocol upstream for load tests: canned streamed answers, near-zero cost.

Written on raw asyncio streams (no framework) so that, in a load test, the time measured is
the proxy's, not the upstream's. Usage: ``python benchmarks/fake_upstream.py PORT [CHUNKS]``.
"""

from __future__ import annotations

import asyncio
import json
import sys


def canned_body(chunks: int) -> bytes:
    def event(delta: dict[str, str], finish: str | None = None) -> str:
        data = {
            "id": "chatcmpl-bench",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        return f"data: {json.dumps(data)}\n\n"

    parts = [event({"role": "assistant", "content": ""})]
    parts += [event({"content": f" word{i}"}) for i in range(chunks)]
    parts.append(event({}, "stop"))
    usage = {"prompt_tokens": 12, "completion_tokens": chunks, "total_tokens": 12 + chunks}
    parts.append(f"data: {json.dumps({'choices': [], 'usage': usage})}\n\n")
    parts.append("data: [DONE]\n\n")
    return "".join(parts).encode()


def response(status: str, content_type: str, body: bytes) -> bytes:
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: {content_type}\r\n"
        f"content-length: {len(body)}\r\nconnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


async def serve(port: int, chunks: int) -> None:
    chat = response("200 OK", "text/event-stream", canned_body(chunks))
    models = response(
        "200 OK",
        "application/json",
        b'{"object":"list","data":[{"id":"fake-model","object":"model"}]}',
    )

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                if length:
                    await reader.readexactly(length)
                writer.write(models if head.startswith(b"GET") else chat)
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=1024)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    import uvloop

    uvloop.run(serve(int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 16))
