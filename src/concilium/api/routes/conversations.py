"""Conversations and turns: JSON or server-sent events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request, Response, status
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from concilium.api.deps import ChatDep, ChatPrincipal, owner
from concilium.api.schemas import (
    ID_PATTERN,
    GenerationFields,
    Id,
    ModelId,
    SafeText,
    problem_responses,
)
from concilium.api.streaming import event_stream_response, until_disconnect
from concilium.auth.audit import Actor
from concilium.auth.quotas import Account
from concilium.chat.search import MAX_QUERY_CHARS, SNIPPET_CHARS
from concilium.chat.service import ChatService, Generation, error_for
from concilium.errors import Conflict, NotFound
from concilium.events import Event
from concilium.orchestrator.request import AnswerOptions, check_scopes
from concilium.store.conversations import branch_path
from concilium.store.models import Conversation, Message, MessageStatus

__all__ = ["router"]

router = APIRouter(
    prefix="/api/conversations", tags=["conversations"], responses=problem_responses()
)

Title = Annotated[SafeText, Field(min_length=1, max_length=200)]
SystemPrompt = Annotated[SafeText, Field(max_length=20_000)]
Content = Annotated[SafeText, Field(min_length=1)]
ModelName = ModelId
SearchText = Annotated[
    SafeText, StringConstraints(strip_whitespace=True, min_length=1, max_length=MAX_QUERY_CHARS)
]


class ConversationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    workspace_id: Id | None = Field(None, description="Default: the caller's workspace.")
    title: Title | None = None
    model: ModelName | None = None
    system_prompt: SystemPrompt | None = None
    temporary: bool = Field(
        False, description="A temporary chat: long-term memory neither recalled nor learnt."
    )


class ConversationUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    title: Title | None = None
    model: ModelName | None = None
    system_prompt: SystemPrompt | None = None
    active_leaf_id: Id | None = Field(None, description="Switch to the branch ending here.")


class ConversationOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    workspace_id: str | None
    title: str
    model: str | None
    system_prompt: str | None
    active_leaf_id: str | None
    temporary: bool
    created_at: datetime
    updated_at: datetime


class MessageOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)
    id: str
    parent_id: str | None
    role: str
    content: str
    status: str
    model: str | None
    backend: str | None
    finish_reason: str | None
    error: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    latency_ms: int | None
    ttft_ms: int | None
    sources: list[dict[str, Any]] | None = Field(
        None,
        description="Grounded answers: the passages [n] refers to (n, document, "
        "location, snippet, cited…).",
    )
    steps: list[dict[str, Any]] | None = Field(
        None,
        description="Agent answers: thoughts, tool calls, their results and approvals, "
        "in order (also those after an approval resumed the run).",
    )
    created_at: datetime


class ConversationDetail(ConversationOut):
    messages: list[MessageOut] = Field(description="Every message of every branch, oldest first.")
    active_path: list[str] = Field(description="Ids from the root to the active leaf.")


class ConversationListItem(ConversationOut):
    snippet: str | None = Field(
        None,
        description=f"With `q`: up to {SNIPPET_CHARS} characters of the first message "
        "that matches, around the match (null when only the title matches).",
    )


class ConversationPage(BaseModel):
    items: list[ConversationListItem]
    total: int
    limit: int
    offset: int


class MessageCreate(GenerationFields):
    content: Content
    parent_id: Id | None = Field(
        None, description="Answer below this message (default: active leaf)."
    )


class MessageEdit(GenerationFields):
    content: Content


class TurnOut(BaseModel):
    conversation_id: str
    user_message: MessageOut
    message: MessageOut


class CancelOut(BaseModel):
    cancelled: bool


ConversationId = Annotated[str, Path(pattern=ID_PATTERN, description="Conversation id.")]
MessageId = Annotated[str, Path(pattern=ID_PATTERN, description="Message id.")]


def _wants_stream(request: Request, body: GenerationFields) -> bool:
    return body.stream or "text/event-stream" in request.headers.get("accept", "")


async def _collect(chat: ChatService, who: Account, generation: Generation) -> TurnOut:
    user_id: str | None = None
    events: AsyncIterator[Event] = generation.events()
    async for event in events:
        if event.type == "message":
            user_id = event.user_message_id  # type: ignore[union-attr]
    assert user_id is not None
    await generation.wait()
    message = await chat.message(who, generation.conversation_id, generation.message_id)
    if message.status == MessageStatus.ERROR and generation.error is not None:
        raise error_for(generation.error)
    user = await chat.message(who, generation.conversation_id, user_id)
    return TurnOut(
        conversation_id=generation.conversation_id,
        user_message=MessageOut.model_validate(user),
        message=MessageOut.model_validate(message),
    )


async def _respond(
    request: Request,
    chat: ChatService,
    who: Account,
    generation: Generation,
    body: GenerationFields,
) -> TurnOut | StreamingResponse:
    if _wants_stream(request, body):

        async def stop() -> None:
            generation.cancel()  # no-op once the answer is finished

        return event_stream_response(generation.events(), stop)
    return await until_disconnect(request, _collect(chat, who, generation))


def _detail(conversation: Conversation, messages: Sequence[Message]) -> ConversationDetail:
    return ConversationDetail(
        **ConversationOut.model_validate(conversation).model_dump(),
        messages=[MessageOut.model_validate(m) for m in messages],
        active_path=[m.id for m in branch_path(messages, conversation.active_leaf_id)],
    )


TURN_RESPONSES: dict[int | str, dict[str, object]] = {
    200: {
        "description": "The stored turn, or with `stream: true` / `Accept: text/event-stream` "
        "server-sent events: message, sources (grounded answers), backend, token…, usage, "
        "done | error.",
        "content": {"text/event-stream": {}},
    }
}


@router.post("", status_code=status.HTTP_201_CREATED, response_model=ConversationOut)
async def create_conversation(
    body: ConversationCreate, chat: ChatDep, principal: ChatPrincipal
) -> Conversation:
    """``model: "rag:<collection>"`` makes every answer grounded in that collection."""
    check_scopes(principal, AnswerOptions(model=body.model))
    return await chat.create(
        owner(principal),
        title=body.title,
        model=body.model,
        system_prompt=body.system_prompt,
        workspace_id=body.workspace_id,
        temporary=body.temporary,
    )


@router.get("", response_model=ConversationPage)
async def list_conversations(
    chat: ChatDep,
    principal: ChatPrincipal,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
    workspace_id: Annotated[str | None, Query(pattern=ID_PATTERN)] = None,
    q: Annotated[
        SearchText | None,
        Query(
            description="Only conversations whose title or one of whose messages contains "
            "all these words, ignoring case."
        ),
    ] = None,
) -> ConversationPage:
    """The caller's conversations (in one workspace, or all of theirs)."""
    listed = await chat.list_conversations(
        owner(principal), limit=limit, offset=offset, workspace_id=workspace_id, search=q
    )
    return ConversationPage(
        items=[
            ConversationListItem(
                **ConversationOut.model_validate(c).model_dump(), snippet=listed.snippets.get(c.id)
            )
            for c in listed.conversations
        ],
        total=listed.total,
        limit=limit,
        offset=offset,
    )


@router.get("/{conversation_id}", response_model=ConversationDetail)
async def get_conversation(
    conversation_id: ConversationId, chat: ChatDep, principal: ChatPrincipal
) -> ConversationDetail:
    conversation, messages = await chat.get(owner(principal), conversation_id)
    return _detail(conversation, messages)


@router.patch("/{conversation_id}", response_model=ConversationOut)
async def update_conversation(
    conversation_id: ConversationId,
    body: ConversationUpdate,
    chat: ChatDep,
    principal: ChatPrincipal,
) -> Conversation:
    check_scopes(principal, AnswerOptions(model=body.model))
    return await chat.update(
        owner(principal),
        conversation_id,
        title=body.title,
        model=body.model,
        system_prompt=body.system_prompt,
        active_leaf_id=body.active_leaf_id,
    )


@router.delete("/{conversation_id}", status_code=status.HTTP_204_NO_CONTENT)
async def delete_conversation(
    conversation_id: ConversationId,
    chat: ChatDep,
    principal: ChatPrincipal,
    forget_memories: Annotated[
        bool, Query(description="Also delete the memories learnt from it.")
    ] = False,
) -> Response:
    """Audited. The memories learnt from it stay (without their source) unless
    ``forget_memories``."""
    await chat.delete(
        owner(principal),
        conversation_id,
        forget_memories=forget_memories,
        actor=Actor(user_id=principal.user_id, key_id=principal.api_key_id, ip=principal.ip),
    )
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post("/{conversation_id}/messages", response_model=TurnOut, responses=TURN_RESPONSES)
async def post_message(
    conversation_id: ConversationId,
    body: MessageCreate,
    request: Request,
    chat: ChatDep,
    principal: ChatPrincipal,
) -> TurnOut | StreamingResponse:
    who = owner(principal)
    generation = await chat.post(
        who,
        conversation_id,
        body.content,
        parent_id=body.parent_id,
        options=body.answer_options(),
        principal=principal,
    )
    return await _respond(request, chat, who, generation, body)


@router.get("/{conversation_id}/messages/{message_id}", response_model=MessageOut)
async def get_message(
    conversation_id: ConversationId,
    message_id: MessageId,
    chat: ChatDep,
    principal: ChatPrincipal,
) -> Message:
    return await chat.message(owner(principal), conversation_id, message_id)


@router.post(
    "/{conversation_id}/messages/{message_id}/edit",
    response_model=TurnOut,
    responses=TURN_RESPONSES,
)
async def edit_message(
    conversation_id: ConversationId,
    message_id: MessageId,
    body: MessageEdit,
    request: Request,
    chat: ChatDep,
    principal: ChatPrincipal,
) -> TurnOut | StreamingResponse:
    """Store an edited copy of a user message as a new branch and answer it."""
    who = owner(principal)
    generation = await chat.edit(
        who,
        conversation_id,
        message_id,
        body.content,
        options=body.answer_options(),
        principal=principal,
    )
    return await _respond(request, chat, who, generation, body)


@router.post(
    "/{conversation_id}/messages/{message_id}/regenerate",
    response_model=TurnOut,
    responses=TURN_RESPONSES,
)
async def regenerate_message(
    conversation_id: ConversationId,
    message_id: MessageId,
    body: GenerationFields,
    request: Request,
    chat: ChatDep,
    principal: ChatPrincipal,
) -> TurnOut | StreamingResponse:
    """Answer the same question again; the new answer is a sibling branch."""
    who = owner(principal)
    generation = await chat.regenerate(
        who,
        conversation_id,
        message_id,
        options=body.answer_options(),
        principal=principal,
    )
    return await _respond(request, chat, who, generation, body)


@router.post(
    "/{conversation_id}/messages/{message_id}/cancel",
    response_model=CancelOut,
    status_code=status.HTTP_202_ACCEPTED,
)
async def cancel_generation(
    conversation_id: ConversationId,
    message_id: MessageId,
    chat: ChatDep,
    principal: ChatPrincipal,
) -> CancelOut:
    """Stop an answer being generated; it keeps what was generated, marked cancelled."""
    who = owner(principal)
    if await chat.cancel(who, conversation_id, message_id):
        return CancelOut(cancelled=True)
    message = await chat.message(who, conversation_id, message_id)  # 404 when unknown
    if message.status != MessageStatus.GENERATING:
        raise Conflict(f"message {message_id} is not being generated (status {message.status})")
    raise NotFound(f"no live generation for message {message_id}")
