"""The agent's ReAct loop: think, act, observe, over the tools the caller may use.

An unreadable step gets one repair attempt. Tool results come back as observations marked
as data; what a tool or a document says is never an instruction, and the policy decides
what runs whatever the model asks. Budgets: steps, wall clock, tokens. A call that needs a
person's approval pauses the run (its state stored with the approval); ``resume`` goes on
once it is decided. The final answer is written from the tools' real results; when that
writer fails before writing anything, the draft from the answer step stands.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import structlog

from concilium.agents.approvals import Resumption, RunState, principal_json
from concilium.agents.executor import ToolExecutor, ToolOutcome
from concilium.agents.steps import (
    ANSWER,
    NATIVE_PROMPT,
    STEP_PROMPT,
    Call,
    StepMarkupFilter,
    clean_markup,
    native_call,
    parse_step,
    step_schema,
)
from concilium.agents.tools import Risk, ToolContext
from concilium.auth.principal import Principal
from concilium.config import Settings
from concilium.errors import AgentOutputInvalid, BudgetExceeded, ConciliumError
from concilium.events import (
    ApprovalRequired,
    BackendSelected,
    Done,
    Event,
    NativeToolCall,
    Thought,
    Token,
    ToolCall,
    ToolResult,
    Usage,
)
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.llm.router import Route, Router
from concilium.orchestrator.prompt import PromptBuilder, PromptParts
from concilium.store.models import AgentApproval, new_id, utcnow

__all__ = ["AgentLoop", "AgentRun"]

log = structlog.get_logger(__name__)

_OBSERVATION_CHARS = 6000

_WRITER = """You answer a user's task using only the facts below, which tools gave. \
Quote their figures and names exactly. Never invent a fact. Plain text: no tags, no JSON."""
_WRITE = """Task: {task}

Facts:
{facts}

Answer each question of the task, with the figures, in a few sentences, in the language \
of the task. If the facts do not answer a part, say so."""
_DIGEST_RESULTS = 8
_DIGEST_CHARS = 1500

_SKIPPED = "not run: an earlier call of this step waits for a person's approval"
_REPEATED = (
    "not run again: you already made this exact call and its result is above. Use it, "
    "call another tool, or answer the whole task now."
)


@dataclass(frozen=True, slots=True)
class AgentRun:
    """What a run needs from the request: where the model runs, the conversation, who
    asks (their tools, role and workspace), and what to store with an approval."""

    route: Route
    messages: Sequence[ChatMessage]
    principal: Principal
    #: The model id asked for (a run resumed after approval asks for it again).
    model: str
    #: The stored assistant message the answer fills, if any.
    message_id: str | None = None
    #: At most this many steps (never more than the settings').
    max_steps: int | None = None
    #: The user's memories recalled for the task (see ``PromptParts.memory``).
    memories: Sequence[str] = ()


class AgentLoop:
    """Runs agent runs: ``start`` a new one, or ``resume`` one a person decided on."""

    def __init__(
        self,
        settings: Settings,
        router: Router,
        tools: ToolExecutor,
        prompts: PromptBuilder | None = None,
    ) -> None:
        self.settings = settings
        self.router = router
        self.tools = tools
        self.prompts = prompts

    # -- a new run ------------------------------------------------------------------------

    async def start(self, run: AgentRun) -> AsyncIterator[Event]:
        context = await self.tools.context_for(run.principal)
        available = self.tools.available(context)
        catalog = "\n".join(
            f"- {t.name}: {t.description}; {json.dumps(t.parameters(), ensure_ascii=False)}"
            for t in available
        )
        system = [m.content for m in run.messages if m.role == "system" and m.content]
        native = all(target.backend.calls_tools() for target in run.route.targets)
        prompt = NATIVE_PROMPT if native else STEP_PROMPT.format(tools=catalog)
        turns = [m for m in run.messages if m.role != "system"]
        messages = [ChatMessage("system", "\n\n".join([prompt, *system])), *turns]
        if self.prompts is not None and turns:
            # The conversation before the task fits the window (old turns summarised);
            # the run's own steps are then kept within it by the token budget.
            built = await self.prompts.build(
                run.route,
                PromptParts(
                    system="\n\n".join(system),
                    tools=prompt,
                    memory=run.memories,
                    history=turns[:-1],
                    question=turns[-1],
                ),
                self.settings.agents.step_tokens,
            )
            messages = built.messages
        state = RunState(messages, native=native, max_steps=run.max_steps)
        async for event in self._loop(run, state, context, first=True):
            yield event

    # -- a run going on after a person decided ----------------------------------------

    async def resume(self, run: AgentRun, resumption: Resumption) -> AsyncIterator[Event]:
        approval = resumption.approval
        state = RunState.from_json(approval.state)
        context = resumption.context
        step = state.steps_done
        if resumption.approved:
            outcome = await self.tools.execute(
                approval.tool, approval.arguments, context, approved=True
            )
        else:
            why = "a person refused this action"
            outcome = await self.tools.refuse(
                approval.tool,
                approval.arguments,
                context,
                f"{why}: {resumption.reason}" if resumption.reason else why,
            )
        state.used.append(approval.tool)
        yield _result_event(approval.call_id, outcome)
        _observe(
            state,
            approval.tool,
            approval.arguments,
            outcome.status,
            outcome.output,
            approval.call_id,
        )
        async for event in self._loop(run, state, context, first=step == 0):
            yield event

    # -- the loop -------------------------------------------------------------------------

    async def _loop(
        self, run: AgentRun, state: RunState, context: ToolContext, *, first: bool
    ) -> AsyncIterator[Event]:
        limits = self.settings.agents
        available = self.tools.available(context)
        names = [t.name for t in available]
        if state.native:
            params = GenerationParams(
                temperature=0.0,
                max_tokens=limits.step_tokens,
                tools=tuple(t.spec() for t in available),
                tool_choice="auto",
            )
        else:
            params = GenerationParams(
                temperature=0.0,
                max_tokens=limits.step_tokens,
                response_format=ResponseFormat("json_schema", step_schema(available), "agent_step"),
            )
        started = time.monotonic() - state.seconds
        asked = state.max_steps or run.max_steps
        max_steps = min(limits.max_iterations, asked or limits.max_iterations)
        while state.steps_done < max_steps:
            step_number = state.steps_done + 1
            spent = ""
            if time.monotonic() - started > limits.max_seconds:
                spent = f"its time ({limits.max_seconds:g}s)"
            elif state.prompt_tokens + state.completion_tokens > limits.max_tokens:
                spent = f"its token budget ({limits.max_tokens})"
            if spent:
                # What was done is the answer so far; the stream then says why it stops.
                yield Token(_progress(state, f"I ran out of {spent}"))
                yield Usage(state.prompt_tokens, state.completion_tokens)
                raise BudgetExceeded(f"the agent ran out of {spent}")
            calls: list[Call] = []
            thought = answer = problem = ""
            for _attempt in range(1 if state.native else 2):  # one repair attempt
                text: list[str] = []
                native_calls: tuple[NativeToolCall, ...] = ()
                async for event in self.router.stream(run.route, state.messages, params):
                    if isinstance(event, Token):
                        text.append(event.text)
                    elif isinstance(event, Usage):
                        state.prompt_tokens += event.prompt_tokens
                        state.completion_tokens += event.completion_tokens
                    elif isinstance(event, BackendSelected) and first:
                        first = False
                        yield event
                    elif isinstance(event, Done):
                        native_calls = event.tool_calls
                reply = "".join(text)
                if state.native:
                    calls = [native_call(call) for call in native_calls]
                    thought, answer = (reply, "") if calls else ("", reply.strip())
                    state.messages.append(
                        ChatMessage(
                            "assistant",
                            reply,
                            tool_calls=tuple(c.wire for c in calls),
                        )
                    )
                    problem = "" if calls or answer else "the reply was empty"
                    break
                try:
                    step = parse_step(reply, names)
                except ValueError as exc:
                    problem = str(exc)
                    log.info("agent_step_unreadable", step=step_number, problem=problem)
                    state.messages += [
                        ChatMessage("assistant", reply),
                        ChatMessage(
                            "user",
                            f"That reply was not usable ({problem}). Reply again with one "
                            "JSON object as described.",
                        ),
                    ]
                    continue
                problem, thought = "", step.thought
                if step.action == ANSWER:
                    answer = step.answer
                else:
                    calls = [Call(uuid.uuid4().hex[:12], step.action, step.arguments)]
                    state.messages.append(
                        ChatMessage(
                            "assistant",
                            json.dumps(
                                {
                                    "thought": step.thought,
                                    "action": step.action,
                                    "arguments": step.arguments,
                                },
                                ensure_ascii=False,
                            ),
                        )
                    )
                break
            if problem:
                raise AgentOutputInvalid(
                    f"the model's step was not usable: {problem}", retryable=False
                )
            state.steps_done = step_number
            if thought.strip():
                yield Thought(thought.strip(), step_number)
            if not calls:
                if not state.native and state.used and limits.written_answer:
                    async for event in self._write_answer(run, state, answer):
                        yield event
                else:
                    yield Token(clean_markup(answer))
                yield Usage(state.prompt_tokens, state.completion_tokens)
                yield Done("stop", steps=step_number, tools=tuple(state.used))
                return
            for position, call in enumerate(calls):
                yield ToolCall(call.id, call.tool, call.arguments, step_number)
                signature = _signature(call)
                if call.error:
                    outcome = await self.tools.refuse(
                        call.tool, call.arguments, context, call.error, status="error"
                    )
                elif signature in state.seen:
                    # Small models loop on a call they already made: nothing has changed
                    # since (no tool that writes or runs came in between), so say so.
                    outcome = ToolOutcome(call.tool, "error", _REPEATED, 0)
                else:
                    outcome = await self.tools.execute(call.tool, call.arguments, context)
                    tool = self.tools.registry.get(call.tool)
                    if tool is not None and tool.risk != Risk.READ:
                        state.seen.clear()
                    if outcome.ok:
                        state.seen.append(signature)
                yield _result_event(call.id, outcome)
                if outcome.status == "pending":
                    for later in calls[position + 1 :]:  # every call needs its answer
                        _observe(state, later.tool, later.arguments, "skipped", _SKIPPED, later.id)
                    state.seconds = time.monotonic() - started
                    approval = await self._pause(run, state, context, call)
                    yield ApprovalRequired(
                        approval.id,
                        call.id,
                        call.tool,
                        call.arguments,
                        approval.risk,
                        approval.expires_at.isoformat(),
                    )
                    yield Token(
                        f"The action {call.tool} needs a person's approval before it runs "
                        f"(approval {approval.id}); nothing was done yet."
                    )
                    yield Usage(state.prompt_tokens, state.completion_tokens)
                    yield Done(
                        "approval_required",
                        steps=step_number,
                        tools=tuple(state.used),
                        approval_id=approval.id,
                    )
                    return
                state.used.append(call.tool)
                _observe(state, call.tool, call.arguments, outcome.status, outcome.output, call.id)
        yield Token(f"I stopped after {max_steps} steps without reaching an answer.")
        yield Usage(state.prompt_tokens, state.completion_tokens)
        yield Done("length", steps=max_steps, tools=tuple(state.used))

    async def _write_answer(
        self, run: AgentRun, state: RunState, draft: str
    ) -> AsyncIterator[Event]:
        """The final answer, written in plain text from the task and the tools' real results
        (streamed): small models' one-line drafts inside a JSON step tend to drop parts of
        the task, and a transcript full of step markup invites them to imitate it."""
        task = next((m.content for m in state.messages if m.role == "user"), "")
        real = [r for r in state.results if r["output"] not in (_SKIPPED, _REPEATED)]
        facts = "\n".join(_fact(r) for r in real[-_DIGEST_RESULTS:]) or "(none)"
        messages = [
            ChatMessage("system", _WRITER),
            ChatMessage("user", _WRITE.format(task=" ".join(task.split())[:2000], facts=facts)),
        ]
        params = GenerationParams(temperature=0.0, max_tokens=self.settings.chat.max_tokens)
        cleaner = StepMarkupFilter()
        written = False
        try:
            async for event in self.router.stream(run.route, messages, params):
                if isinstance(event, Token) and event.text:
                    text = cleaner.feed(event.text)
                    written = written or bool(text.strip())
                    if text:
                        yield Token(text)
                elif isinstance(event, Usage):
                    state.prompt_tokens += event.prompt_tokens
                    state.completion_tokens += event.completion_tokens
        except ConciliumError as exc:
            if written:
                raise  # half an answer went out: the turn ends as incomplete, as it is
            # Nothing written yet: the draft from the answer step stands instead.
            log.warning("agent_writer_failed", code=exc.code, detail=exc.detail)
        rest = cleaner.flush()
        if rest:
            written = written or bool(rest.strip())
            yield Token(rest)
        if not written:
            yield Token(clean_markup(draft))

    async def _pause(
        self,
        run: AgentRun,
        state: RunState,
        context: ToolContext,
        call: Call,
    ) -> AgentApproval:
        principal = run.principal
        tool = self.tools.registry.get(call.tool)
        approval = AgentApproval(
            id=new_id(),
            owner_id=principal.owner_id,
            workspace_id=None if principal.is_operator else principal.workspace_id,
            message_id=run.message_id,
            model=run.model,
            call_id=call.id,
            tool=call.tool,
            arguments=call.arguments,
            risk=tool.risk.value if tool is not None else "execute",
            principal=principal_json(principal),
            state=state.to_json(),
            status="pending",
            expires_at=utcnow() + timedelta(seconds=self.settings.agents.approval_ttl_seconds),
        )
        async with self.tools.db.session() as s:
            s.add(approval)
        log.info("agent_paused", approval_id=approval.id, tool=call.tool)
        return approval


def _result_event(call_id: str, outcome: ToolOutcome) -> ToolResult:
    return ToolResult(
        call_id,
        outcome.tool,
        outcome.status,
        outcome.output,
        outcome.duration_ms,
        outcome.audit_seq,
    )


def _observe(
    state: RunState,
    tool: str,
    arguments: dict[str, Any],
    status: str,
    output: str,
    call_id: str,
) -> None:
    observation = output
    if len(observation) > _OBSERVATION_CHARS:
        observation = observation[:_OBSERVATION_CHARS] + "\n… (cut)"
    state.results.append(
        {
            "tool": tool,
            "arguments": json.dumps(arguments, ensure_ascii=False, sort_keys=True),
            "status": status,
            "output": observation,
        }
    )
    if state.native:
        state.messages.append(
            ChatMessage("tool", f"[{status}] {observation}", tool_call_id=call_id)
        )
        return
    state.messages.append(
        ChatMessage(
            "user",
            f'<observation tool="{tool}" status="{status}">\n'
            f"{observation}\n</observation>\nNext step (one JSON object).",
        )
    )


def _fact(result: dict[str, str]) -> str:
    """One tool result as a line of facts for the writer: no step markup to imitate."""
    arguments = json.loads(result["arguments"] or "{}")
    shown = ", ".join(f"{k} {json.dumps(v, ensure_ascii=False)}" for k, v in arguments.items())
    head = f"- {result['tool']}" + (f" ({shown})" if shown else "")
    if result["status"] != "ok":
        head += f" failed ({result['status']})"
    return f"{head}: {_cut(result['output'], _DIGEST_CHARS)}"


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit] + "… (cut)"


def _progress(state: RunState, stopped: str) -> str:
    """What a run did so far, in words, for an answer cut short."""
    done = [f"{r['tool']} ({r['status']})" for r in state.results]
    if not done:
        return f"{stopped} before using any tool."
    return f"{stopped} after {state.steps_done} steps. Done so far: {', '.join(done)}."


def _signature(call: Call) -> str:
    return json.dumps([call.tool, call.arguments], sort_keys=True, ensure_ascii=False)
