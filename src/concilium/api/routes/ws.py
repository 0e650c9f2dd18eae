"""``/ws/chat``: turns over a WebSocket; events come back as JSON text frames.

Client frames (JSON objects):
  ``{"type": "message", "content": "…", "conversation_id"?, "parent_id"?, <generation fields>}``
  ``{"type": "edit", "conversation_id", "message_id", "content", …}``
  ``{"type": "regenerate", "conversation_id", "message_id", …}``
  ``{"type": "cancel"}`` stops the answer in progress.
A ``message`` without ``conversation_id`` starts a new conversation. Bad frames get an
``error`` event and the socket stays open; a frame larger than the body limit closes it (1009).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Annotated, Literal

from fastapi import APIRouter, WebSocket, WebSocketDisconnect
from pydantic import BaseModel, Field, TypeAdapter, ValidationError

from concilium.api.deps import authenticate, owner
from concilium.api.schemas import GenerationFields, Id, SafeText
from concilium.auth.principal import Principal, Scope
from concilium.auth.quotas import Account
from concilium.chat.service import ChatService, Generation
from concilium.errors import ConciliumError, Forbidden
from concilium.events import ErrorEvent, event_to_dict
from concilium.orchestrator.request import check_scopes
from concilium.services import Services

__all__ = ["router"]

router = APIRouter()

Content = Annotated[SafeText, Field(min_length=1)]


class _Turn(GenerationFields):
    pass


class SendFrame(_Turn):
    type: Literal["message"]
    content: Content
    conversation_id: Id | None = None
    parent_id: Id | None = None


class EditFrame(_Turn):
    type: Literal["edit"]
    conversation_id: Id
    message_id: Id
    content: Content


class RegenerateFrame(_Turn):
    type: Literal["regenerate"]
    conversation_id: Id
    message_id: Id


class CancelFrame(BaseModel):
    type: Literal["cancel"]


Frame = Annotated[
    SendFrame | EditFrame | RegenerateFrame | CancelFrame, Field(discriminator="type")
]
_frames: TypeAdapter[Frame] = TypeAdapter(Frame)


async def _send_error(ws: WebSocket, code: str, message: str) -> None:
    await ws.send_text(json.dumps(event_to_dict(ErrorEvent(code, message))))


async def _pump(ws: WebSocket, generation: Generation) -> None:
    """Send the answer's events; a client gone mid-answer stops it (closing the events)."""
    async with contextlib.aclosing(generation.events()) as events:
        try:
            async for event in events:
                await ws.send_text(json.dumps(event_to_dict(event), ensure_ascii=False))
        except WebSocketDisconnect:
            return


async def _start(
    chat: ChatService,
    who: Account,
    principal: Principal,
    frame: SendFrame | EditFrame | RegenerateFrame,
) -> Generation:
    options = frame.answer_options()
    if isinstance(frame, SendFrame):
        conversation_id = frame.conversation_id
        if conversation_id is None:
            chat.check_content(frame.content)  # before creating anything
            check_scopes(principal, options)
            conversation_id = (await chat.create(who, model=frame.model)).id
        return await chat.post(
            who,
            conversation_id,
            frame.content,
            parent_id=frame.parent_id,
            options=options,
            principal=principal,
        )
    if isinstance(frame, EditFrame):
        return await chat.edit(
            who,
            frame.conversation_id,
            frame.message_id,
            frame.content,
            options=options,
            principal=principal,
        )
    return await chat.regenerate(
        who, frame.conversation_id, frame.message_id, options=options, principal=principal
    )


def _same_origin(ws: WebSocket, services: Services) -> bool:
    """Browsers send cookies with cross-site WebSocket handshakes: only our own pages, or
    origins allowed by CORS, may use cookie authentication here."""
    origin = ws.headers.get("origin")
    if origin is None:
        return True  # not a browser
    host = ws.headers.get("host", "")
    return origin.split("://", 1)[-1] == host or origin in services.settings.server.cors_origins


@router.websocket("/ws/chat")
async def chat_socket(ws: WebSocket) -> None:
    services: Services = ws.app.state.services
    chat = services.chat
    limit = services.settings.server.max_body_bytes
    try:
        if ws.headers.get("authorization") is None and not _same_origin(ws, services):
            raise Forbidden("cross-site WebSocket refused")
        principal = await authenticate(ws, method="GET")
        principal.require(Scope.CHAT)
    except ConciliumError as exc:
        # Before accepting, closing answers the handshake with HTTP 403.
        await ws.close(code=1008, reason=exc.code)
        return
    who = owner(principal)
    await ws.accept()
    generation: Generation | None = None
    pump: asyncio.Task[None] | None = None
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                break
            raw = message.get("text")
            if raw is None:
                data = message.get("bytes") or b""
                if len(data) > limit:
                    await ws.close(code=1009, reason="frame too large")
                    break
                try:
                    raw = data.decode("utf-8")
                except UnicodeDecodeError:
                    await _send_error(ws, "invalid_request", "frame is not valid UTF-8")
                    continue
            if len(raw.encode("utf-8", "surrogatepass")) > limit:
                await ws.close(code=1009, reason="frame too large")
                break
            try:
                frame = _frames.validate_json(raw)
            except ValidationError as exc:
                first = exc.errors()[0] if exc.errors() else {"msg": "invalid frame", "loc": ()}
                where = ".".join(str(p) for p in first.get("loc", ()))
                await _send_error(ws, "invalid_request", f"{where}: {first['msg']}".strip(": "))
                continue
            busy = generation is not None and not generation.finished
            if isinstance(frame, CancelFrame):
                if generation is not None and busy:
                    generation.cancel()
                continue
            if busy:
                await _send_error(ws, "busy", "an answer is in progress; cancel it first")
                continue
            try:
                generation = await _start(chat, who, principal, frame)
            except ConciliumError as exc:
                await _send_error(ws, exc.code, exc.detail)
                continue
            pump = asyncio.create_task(_pump(ws, generation))
    except WebSocketDisconnect:
        pass
    finally:
        if generation is not None:
            generation.cancel()  # no-op once finished; covers a pump that never started
        if pump is not None and not pump.done():
            pump.cancel()  # leaving the events iterator cancels the generation
            with contextlib.suppress(asyncio.CancelledError, WebSocketDisconnect, RuntimeError):
                await pump
