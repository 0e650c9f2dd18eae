"""Conversations: stored turns, branches (edits, regenerations) and live generations.

A turn stores the user message and an assistant placeholder, then generates in a
background task that owns persistence: whatever happens to the client (gone,
cancelled, slow), the assistant message ends up stored with what was generated
and an honest status.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import structlog
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from concilium import errors
from concilium.auth.audit import Actor, AuditLog
from concilium.auth.principal import OPERATOR, Principal
from concilium.auth.quotas import Account
from concilium.auth.workspaces import Workspaces
from concilium.bus import AnswerCompleted, AnswerStarted, EventBus, LocalBus
from concilium.chat.generation import Generation, StoredAnswer, error_for, params_record
from concilium.chat.identity import system_prompt
from concilium.chat.search import excerpt, query_words
from concilium.config import Settings
from concilium.errors import Forbidden, InvalidRequest, NotFound
from concilium.events import (
    Done,
    ErrorEvent,
    Event,
    MessageStarted,
)
from concilium.jobs.processes import ProcessRegistry
from concilium.jobs.queue import JobQueue
from concilium.jobs.worker import Worker
from concilium.llm.base import ChatMessage
from concilium.memory.extraction import EXTRACT_JOB
from concilium.memory.service import MemoryService
from concilium.observability.metrics import Metrics
from concilium.orchestrator.engine import (
    RAG_PREFIX,
    AnswerOptions,
    AnswerRequest,
    Orchestrator,
    PreparedAnswer,
    check_sizes,
)
from concilium.store import conversations as repo
from concilium.store.db import Database
from concilium.store.models import (
    DEFAULT_TITLE,
    Conversation,
    Membership,
    Message,
    MessageStatus,
    Role,
    new_id,
)

__all__ = ["ChatService", "ConversationList", "Generation", "error_for"]


log = structlog.get_logger(__name__)
_TITLE_CHARS = 80
_CANCEL_POLL = 0.5  # seconds between looks for cancellations asked by other processes


@dataclass(frozen=True)
class ConversationList:
    """A page of conversations, the number of all those listed, and with a search, an
    excerpt of each one's first matching message (by conversation id)."""

    conversations: Sequence[Conversation]
    total: int
    snippets: Mapping[str, str] = field(default_factory=dict)


class ChatService:
    """Every method takes ``owner``: the caller's account, or None for the local operator
    (the CLI), who sees only conversations that have no owner. A conversation that is not
    the caller's does not exist for them (404)."""

    def __init__(
        self,
        settings: Settings,
        db: Database,
        orchestrator: Orchestrator,
        metrics: Metrics,
        workspaces: Workspaces,
        process: ProcessRegistry | None = None,
        bus: EventBus | None = None,
        *,
        queue: JobQueue | None = None,
        worker: Worker | None = None,
        memory: MemoryService | None = None,
        audit: AuditLog | None = None,
    ) -> None:
        self.settings = settings
        #: Where a finished turn's memory extraction goes (None: nothing is learnt).
        self.queue = queue
        self.worker = worker
        self.memory = memory
        self.audit = audit
        self.bus: EventBus = bus or LocalBus()
        self.db = db
        self.orchestrator = orchestrator
        self.metrics = metrics
        self.workspaces = workspaces
        #: This process: it owns the answers it writes, and another process's recovery
        #: leaves them alone while its heartbeat lives.
        self.process = process or ProcessRegistry(db, "cli")
        self._live: dict[str, Generation] = {}
        self._watcher: asyncio.Task[None] | None = None

    # -- access ---------------------------------------------------------------------------

    async def _owned(
        self,
        s: AsyncSession,
        owner: Account | None,
        conversation_id: str,
        *,
        write: bool = False,
        lock: bool = False,
    ) -> Conversation:
        load = repo.lock_conversation if lock else repo.get_conversation
        conversation = await load(s, conversation_id)
        if conversation.owner_id != (owner.user_id if owner else None):
            raise NotFound(f"conversation {conversation_id} not found")
        if owner is not None and conversation.workspace_id is not None:
            member = await s.get(Membership, (conversation.workspace_id, owner.user_id))
            if member is None:  # no longer in the workspace: it is out of reach
                raise NotFound(f"conversation {conversation_id} not found")
            if write and not Role.at_least(member.role, Role.MEMBER):
                raise Forbidden("viewers of a workspace cannot write in it")
        return conversation

    # -- conversations ------------------------------------------------------------------

    async def create(
        self,
        owner: Account | None,
        *,
        title: str | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        workspace_id: str | None = None,
        temporary: bool = False,
    ) -> Conversation:
        """``temporary``: a chat whose answers neither recall long-term memories nor
        leave any."""
        if model is not None:
            self._check_model(model)  # unknown model → 404 now, not at first turn
        workspace = None
        if owner is not None:
            workspace = workspace_id or owner.workspace_id
            role = await self.workspaces.role_of(owner.user_id, workspace)
            if role is None:
                raise NotFound(f"workspace {workspace} not found")
            if not Role.at_least(role, Role.MEMBER):
                raise Forbidden("viewers of a workspace cannot start conversations in it")
        async with self.db.session() as s:
            return await repo.create_conversation(
                s,
                title=title,
                model=model,
                system_prompt=system_prompt,
                owner_id=owner.user_id if owner else None,
                workspace_id=workspace,
                temporary=temporary,
            )

    async def list_conversations(
        self,
        owner: Account | None,
        *,
        limit: int,
        offset: int,
        workspace_id: str | None = None,
        search: str | None = None,
    ) -> ConversationList:
        """Most recently active first; with ``search``, those whose title or one of whose
        messages contains all its words (ignoring case), with an excerpt of that message."""
        words = query_words(search) if search is not None else []
        async with self.db.reader() as s:
            found, total = await repo.list_conversations(
                s,
                limit=limit,
                offset=offset,
                owner_id=owner.user_id if owner else None,
                workspace_id=workspace_id,
                words=words,
            )
            matches = (
                await repo.first_matching_messages(s, [c.id for c in found], words) if words else {}
            )
        snippets = {cid: excerpt(content, words) for cid, content in matches.items()}
        return ConversationList(found, total, snippets)

    async def get(
        self, owner: Account | None, conversation_id: str
    ) -> tuple[Conversation, Sequence[Message]]:
        async with self.db.reader() as s:
            conversation = await self._owned(s, owner, conversation_id)
            return conversation, await repo.list_messages(s, conversation_id)

    async def update(
        self,
        owner: Account | None,
        conversation_id: str,
        *,
        title: str | None = None,
        model: str | None = None,
        system_prompt: str | None = None,
        active_leaf_id: str | None = None,
    ) -> Conversation:
        if model is not None:
            self._check_model(model)
        async with self.db.session() as s:
            conversation = await self._owned(s, owner, conversation_id, write=True)
            if title is not None:
                conversation.title = title
            if model is not None:
                conversation.model = model
            if system_prompt is not None:
                conversation.system_prompt = system_prompt
            if active_leaf_id is not None:
                await repo.get_message(s, conversation_id, active_leaf_id)
                conversation.active_leaf_id = active_leaf_id
            return conversation

    async def delete(
        self,
        owner: Account | None,
        conversation_id: str,
        *,
        forget_memories: bool = False,
        actor: Actor | None = None,
    ) -> int:
        """Delete a conversation; with ``forget_memories``, also the memories learnt from
        it (else they stay, without their source). Audited. The memories deleted."""
        async with self.db.reader() as s:
            await self._owned(s, owner, conversation_id, write=True)
        await self.stop_answers([conversation_id])
        forgotten = 0
        if forget_memories and owner is not None and self.memory is not None:
            forgotten = await self.memory.delete_from_conversation(
                owner.user_id, conversation_id, actor=actor
            )
        async with self.db.session() as s:
            await repo.delete_conversation(s, conversation_id)
            if self.audit is not None and owner is not None:
                await self.audit.append(
                    s,
                    "conversation.delete",
                    actor=actor or Actor(user_id=owner.user_id),
                    target=conversation_id,
                    details={"memories_deleted": forgotten, "forget_memories": forget_memories},
                )
        return forgotten

    def answering(self) -> bool:
        """This process is writing an answer now."""
        return bool(self._live)

    async def stop_answers(self, conversation_ids: Sequence[str]) -> None:
        """Stop this process's live answers in these conversations (they are going)."""
        wanted = set(conversation_ids)
        for generation in list(self._live.values()):
            if generation.conversation_id in wanted:
                generation.cancel()
                await generation.wait()

    # -- turns --------------------------------------------------------------------------

    async def post(
        self,
        owner: Account | None,
        conversation_id: str,
        content: str,
        *,
        parent_id: str | None = None,
        options: AnswerOptions = AnswerOptions(),
        principal: Principal = OPERATOR,
    ) -> Generation:
        """Add a user message (below ``parent_id`` or the active leaf) and answer it."""
        self.check_content(content)
        async with self.db.session() as s:
            conversation = await self._owned(s, owner, conversation_id, write=True, lock=True)
            messages = await repo.list_messages(s, conversation_id)
            parent = parent_id if parent_id is not None else conversation.active_leaf_id
            if parent is not None and parent not in {m.id for m in messages}:
                raise NotFound(f"message {parent} not found")
            if not messages and conversation.title == DEFAULT_TITLE:
                conversation.title = self._title_from(content)
            history = repo.branch_path(messages, parent)
            user = await repo.add_message(
                s, conversation, role="user", content=content, parent_id=parent
            )
            pending = await self._prepare(s, owner, conversation, history, user, options, principal)
        return self._launch(*pending)

    async def edit(
        self,
        owner: Account | None,
        conversation_id: str,
        message_id: str,
        content: str,
        *,
        options: AnswerOptions = AnswerOptions(),
        principal: Principal = OPERATOR,
    ) -> Generation:
        """A new version of a user message, as a sibling branch, answered anew."""
        self.check_content(content)
        async with self.db.session() as s:
            conversation = await self._owned(s, owner, conversation_id, write=True, lock=True)
            original = await repo.get_message(s, conversation_id, message_id)
            if original.role != "user":
                raise InvalidRequest("only user messages can be edited; regenerate answers instead")
            messages = await repo.list_messages(s, conversation_id)
            history = repo.branch_path(messages, original.parent_id)
            user = await repo.add_message(
                s, conversation, role="user", content=content, parent_id=original.parent_id
            )
            pending = await self._prepare(s, owner, conversation, history, user, options, principal)
        return self._launch(*pending)

    async def regenerate(
        self,
        owner: Account | None,
        conversation_id: str,
        message_id: str,
        *,
        options: AnswerOptions = AnswerOptions(),
        principal: Principal = OPERATOR,
    ) -> Generation:
        """Another answer to the same question: a sibling of an answer, or a child of a question."""
        async with self.db.session() as s:
            conversation = await self._owned(s, owner, conversation_id, write=True, lock=True)
            target = await repo.get_message(s, conversation_id, message_id)
            if target.role == "assistant":
                if target.parent_id is None:
                    raise InvalidRequest("this answer has no question to regenerate from")
                user = await repo.get_message(s, conversation_id, target.parent_id)
            elif target.role == "user":
                user = target
            else:
                raise InvalidRequest(f"cannot regenerate a {target.role} message")
            messages = await repo.list_messages(s, conversation_id)
            history = repo.branch_path(messages, user.parent_id)
            pending = await self._prepare(s, owner, conversation, history, user, options, principal)
        return self._launch(*pending)

    async def cancel(self, owner: Account | None, conversation_id: str, message_id: str) -> bool:
        """True when the answer is live and now stopping (also when it already was). An
        answer another process writes is asked to stop through the database: its owner
        looks every ``_CANCEL_POLL`` seconds."""
        async with self.db.reader() as s:
            await self._owned(s, owner, conversation_id, write=True)
        generation = self._live.get(message_id)
        if generation is not None and generation.conversation_id == conversation_id:
            generation.cancel("cancelled")
            return True
        async with self.db.session() as s:
            asked = await s.execute(
                update(Message)
                .where(
                    Message.id == message_id,
                    Message.conversation_id == conversation_id,
                    Message.status == MessageStatus.GENERATING,
                    Message.owner_id.is_not(None),
                    Message.owner_id != self.process.id,
                )
                .values(cancel_requested=True)
            )
        return bool(asked.rowcount)  # type: ignore[attr-defined]

    async def message(
        self, owner: Account | None, conversation_id: str, message_id: str
    ) -> Message:
        async with self.db.reader() as s:
            await self._owned(s, owner, conversation_id)
            return await repo.get_message(s, conversation_id, message_id)

    async def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every generation; each stores what it produced, marked incomplete."""
        live = list(self._live.values())
        for generation in live:
            generation.cancel("shutdown")
        tasks = [g.task for g in live if g.task is not None]
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher

    async def recover(self) -> int:
        """Answers whose writing process died become incomplete (keeping their text)."""
        alive = await self.process.alive()
        async with self.db.session() as s:
            return await repo.recover_interrupted(s, alive)

    async def _watch_cancels(self) -> None:
        """While this process writes answers: stop those another process asked to stop."""
        while self._live:
            await asyncio.sleep(_CANCEL_POLL)
            live = list(self._live)
            try:
                async with self.db.reader() as s:
                    asked = (
                        await s.scalars(
                            select(Message.id).where(
                                Message.id.in_(live), Message.cancel_requested.is_(True)
                            )
                        )
                    ).all()
            except Exception:
                log.warning("cancel_watch_failed", exc_info=True)
                continue
            for message_id in asked:
                generation = self._live.get(message_id)
                if generation is not None:
                    generation.cancel("cancelled")
        self._watcher = None

    # -- internals ----------------------------------------------------------------------

    def check_content(self, content: str) -> None:
        """Raise InvalidRequest for content no turn may carry (blank, too long)."""
        if not content.strip():
            raise InvalidRequest("content must not be empty")
        check_sizes([ChatMessage("user", content)], self.settings.chat.max_message_chars)

    @staticmethod
    def _title_from(content: str) -> str:
        line = " ".join(content.split())
        return line if len(line) <= _TITLE_CHARS else line[: _TITLE_CHARS - 1].rstrip() + "…"

    def _check_model(self, model: str) -> None:
        if model.startswith(RAG_PREFIX):  # rag:<collection>[@model]: the model part
            model = model.partition("@")[2].strip() or "default"
        self.orchestrator.router.resolve(model)

    def _prompt(
        self, conversation: Conversation, history: Sequence[Message], user: Message
    ) -> list[ChatMessage]:
        system = conversation.system_prompt
        if system is None:
            first = next((m.content for m in history if m.role == "user"), user.content)
            system = system_prompt(self.settings, first, conversation.model)
        prompt = [ChatMessage("system", system)] if system else []
        for m in history:
            if m.role in ("user", "assistant") and m.content:
                prompt.append(ChatMessage(m.role, m.content))  # type: ignore[arg-type]
        prompt.append(ChatMessage("user", user.content))
        return prompt

    async def _prepare(
        self,
        s: AsyncSession,
        owner: Account | None,
        conversation: Conversation,
        history: Sequence[Message],
        user: Message,
        options: AnswerOptions,
        principal: Principal,
    ) -> tuple[Generation, PreparedAnswer]:
        model = options.model or conversation.model or "default"
        if conversation.temporary:
            options = replace(options, memory=False)
        account = None
        if owner is not None:  # tokens count against the conversation's workspace
            account = Account(owner.user_id, conversation.workspace_id or owner.workspace_id)
        assistant_id = new_id()
        request = AnswerRequest(
            messages=self._prompt(conversation, history, user),
            options=replace(options, model=model),
            principal=principal,
            account=account,
            message_id=assistant_id,
        )
        prepared = await self.orchestrator.prepare(request)  # 4xx here rolls the turn back
        assistant = await repo.add_message(
            s,
            conversation,
            id=assistant_id,
            role="assistant",
            content="",
            parent_id=user.id,
            status=MessageStatus.GENERATING,
            owner_id=self.process.id,
            model=model,
            params=params_record(options.params),
        )
        generation = Generation(conversation.id, assistant.id)
        if owner is not None and options.memory is not False:
            generation.learner = owner.user_id
        generation.push(MessageStarted(conversation.id, user.id, assistant.id, user.parent_id))
        return generation, prepared

    async def resume(self, message_id: str, prepared: PreparedAnswer) -> Generation:
        """Go on with an agent answer that paused for approval, in its stored message: the
        continuation replaces the paused text; steps are added to those already stored.
        The caller has checked who may decide (``AgentMode.decide``)."""
        async with self.db.session() as s:
            message = await s.get(Message, message_id, with_for_update=True)
            if message is None:
                raise NotFound(f"message {message_id} not found")
            if message.status == MessageStatus.GENERATING or message_id in self._live:
                raise errors.Conflict(f"message {message_id} is being generated")
            message.status = MessageStatus.GENERATING
            message.owner_id, message.cancel_requested = self.process.id, False
            steps = list(message.steps or [])
            conversation_id = message.conversation_id
        generation = Generation(conversation_id, message_id)
        return self._launch(generation, prepared, steps)

    async def continue_run(
        self, prepared: PreparedAnswer
    ) -> tuple[AsyncIterator[Event], Callable[[], Awaitable[None]]]:
        """The events of a resumed agent run and how to stop it: in its stored message
        when the run was a conversation turn, else as a plain stream."""
        message_id = prepared.request.message_id
        if message_id is not None:
            async with self.db.reader() as s:
                stored = await s.get(Message, message_id) is not None
            if stored:
                generation = await self.resume(message_id, prepared)

                async def cancel() -> None:
                    generation.cancel()

                return generation.events(), cancel
        events = self.orchestrator.stream(prepared)

        async def close() -> None:
            await events.aclose()  # type: ignore[attr-defined]

        return events, close

    def _launch(
        self,
        generation: Generation,
        prepared: PreparedAnswer,
        steps: list[dict[str, Any]] | None = None,
    ) -> Generation:
        """Start generating; called once the turn's rows are committed."""
        self._live[generation.message_id] = generation
        loop = asyncio.get_running_loop()
        generation.task = loop.create_task(
            self._run(generation, prepared, steps), name=f"generation-{generation.message_id}"
        )
        if self._watcher is None or self._watcher.done():
            self._watcher = loop.create_task(self._watch_cancels(), name="cancel-watch")
        self.bus.publish(
            AnswerStarted(
                message_id=generation.message_id,
                conversation_id=generation.conversation_id,
                model=prepared.request.model,
            )
        )
        return generation

    async def _run(
        self,
        generation: Generation,
        prepared: PreparedAnswer,
        steps: list[dict[str, Any]] | None = None,
    ) -> None:
        record = StoredAnswer(steps)
        # The final event is held back until the answer is stored: a client that sends
        # its next message on "done" must find this answer in the history.
        final: Done | ErrorEvent | None = None
        self.metrics.generations_in_flight.inc()
        generation.started = True
        try:
            if generation.stop_reason is not None:
                raise asyncio.CancelledError  # stopped before it began
            async for event in self.orchestrator.stream(prepared):
                record.observe(event)
                if isinstance(event, Done | ErrorEvent):
                    final = event
                else:
                    generation.push(event)
        except asyncio.CancelledError:
            final = Done("cancelled")
        finally:
            self.metrics.generations_in_flight.dec()
            generation.saving = True
            fields = record.fields(final, generation.stop_reason)
            save = asyncio.ensure_future(self._save(generation.message_id, fields))
            try:
                await asyncio.shield(save)
                if fields.get("status") == MessageStatus.COMPLETE:
                    await self._learn(generation)
                self.bus.publish(
                    AnswerCompleted(
                        message_id=generation.message_id,
                        conversation_id=generation.conversation_id,
                        model=fields.get("model") or prepared.request.model,
                        status=str(fields.get("status")),
                        prompt_tokens=fields.get("prompt_tokens"),
                        completion_tokens=fields.get("completion_tokens"),
                    )
                )
            except asyncio.CancelledError:
                await asyncio.wait({save})  # the event loop is going down: store first
                raise
            except Exception:
                log.exception("generation_not_saved", message_id=generation.message_id)
                final = ErrorEvent("storage_error", "the answer could not be stored")
            finally:
                self._live.pop(generation.message_id, None)
                generation.error = record.error
                generation.finished = True
                if final is not None:
                    generation.push(final)
                generation.push(None)

    async def _learn(self, generation: Generation) -> None:
        """Queue the memory extraction of a finished turn (once per answer)."""
        memory = self.settings.memory
        if generation.learner is None or self.queue is None or not memory.enabled:
            return
        if not memory.extract:
            return
        try:
            await self.queue.enqueue(
                EXTRACT_JOB,
                {"user_id": generation.learner, "message_id": generation.message_id},
                key=f"{EXTRACT_JOB}:{generation.message_id}",
            )
            if self.worker is not None:
                self.worker.notify()
        except Exception:  # learning is a bonus: the answer is stored all the same
            log.warning("memory_extraction_not_queued", exc_info=True)

    async def _save(self, message_id: str, fields: dict[str, Any]) -> None:
        async with self.db.session() as s:
            await repo.update_message(s, message_id, **fields)
