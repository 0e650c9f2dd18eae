"""Every prompt, built within the target model's window with a budget per part.

Parts: tool descriptions (the agent's), the system prompt, memory notes, retrieved
passages (which go with the question), the conversation, and room for the answer. Each
part gets at most its share of the window (``orchestration.context``), except tools,
which are never cut; what a part leaves unused goes to the conversation. When the
conversation does not fit, its latest messages that fit stay word for word and the
older ones are replaced by a summary written by ``summary_model`` (extended, not
rewritten, as the conversation grows); without a summary they are left out. The
router's last check (``fit_to_window``) still guards against any overflow.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import structlog
from cachetools import LRUCache

from concilium.config import ContextSettings
from concilium.errors import ConciliumError
from concilium.events import ContextReport, Token
from concilium.knowledge.language import detect_language
from concilium.llm.base import ChatMessage, GenerationParams
from concilium.llm.router import Route, Router

__all__ = ["BuiltPrompt", "PromptBuilder", "PromptParts"]

log = structlog.get_logger(__name__)

_CUT = " […]"
_MARGIN = 64  # chat-template tokens: role markers, the template's own system text
_SUMMARY_HEAD = {
    "en": "Summary of the earlier conversation:",
    "fr": "Résumé du début de la conversation :",
}
_MEMORY_HEAD = {
    "en": "What the user told you in earlier conversations (date, fact):",
    "fr": "Ce que l'utilisateur t'a dit lors de conversations précédentes (date, fait) :",
}
_SUMMARISE = {
    "en": (
        "Summarise this conversation in a few sentences for someone who will continue "
        "it: keep names, numbers, decisions and open questions. Write in English."
    ),
    "fr": (
        "Résume cette conversation en quelques phrases pour quelqu'un qui va la "
        "poursuivre : garde les noms, les nombres, les décisions et les questions "
        "ouvertes. Écris en français."
    ),
}


@dataclass(frozen=True, slots=True)
class PromptParts:
    system: str = ""
    memory: Sequence[str] = ()
    tools: str = ""
    #: Earlier messages (no system ones), oldest first.
    history: Sequence[ChatMessage] = ()
    #: The message being answered (usually the user's question), retrieved text included.
    question: ChatMessage | None = None


@dataclass(frozen=True, slots=True)
class BuiltPrompt:
    messages: list[ChatMessage]
    window: int
    #: Tokens of each part as sent, and what was done to fit.
    report: ContextReport


class PromptBuilder:
    def __init__(self, settings: ContextSettings, router: Router) -> None:
        self.settings = settings
        self.router = router
        self._summaries: LRUCache[str, str] = LRUCache(maxsize=256)

    # -- budgets ------------------------------------------------------------------------

    @staticmethod
    def window(route: Route) -> int:
        sizes = [t.backend.context_length(t.model) for t in route.targets]
        return min(sizes) if sizes else 4096

    def answer_reserve(self, route: Route, max_tokens: int) -> int:
        return max(16, min(max_tokens, int(self.window(route) * self.settings.answer_share)))

    def budget(self, route: Route, part: str, max_tokens: int) -> int:
        """Tokens ``part`` (system, memory, tools, retrieved) may use at most."""
        share = getattr(self.settings, f"{part}_share")
        room = self.window(route) - self.answer_reserve(route, max_tokens) - _MARGIN
        return max(0, int(room * share))

    async def count(self, route: Route, texts: Sequence[str]) -> list[int]:
        if not route.targets:
            return [len(t) // 3 + 8 for t in texts]
        target = route.targets[0]
        messages = [ChatMessage("user", t) for t in texts]
        return await target.backend.token_counts(target.model, messages)

    async def _clip(self, route: Route, text: str, budget: int) -> tuple[str, int, bool]:
        """``text`` cut at a word boundary to ``budget`` tokens (re-measured)."""
        if not text:
            return "", 0, False
        (size,) = await self.count(route, [text])
        if size <= budget:
            return text, size, False
        for _ in range(4):
            keep = int(len(text) * budget / max(size, 1) * 0.95)
            text = text[:keep].rsplit(" ", 1)[0] + _CUT if keep > 0 else ""
            (size,) = await self.count(route, [text]) if text else (0,)
            if size <= budget:
                break
        return text, size, True

    # -- building -----------------------------------------------------------------------

    async def build(self, route: Route, parts: PromptParts, max_tokens: int) -> BuiltPrompt:
        window = self.window(route)
        reserve = self.answer_reserve(route, max_tokens)
        # Every token stands for at least one byte: a prompt whose bytes fit, with each
        # part under its share, needs no counting at all.
        texts = [parts.system, parts.tools, *parts.memory, *(m.content for m in parts.history)]
        texts.append(parts.question.content if parts.question else "")
        if sum(len(t.encode()) + 16 for t in texts) + reserve + _MARGIN <= window and all(
            len(text.encode()) <= self.budget(route, part, max_tokens)
            for part, text in (("system", parts.system), ("memory", "\n".join(parts.memory)))
        ):
            memory = _memory_block([_note(n) for n in parts.memory], parts.question)
            return BuiltPrompt(
                _messages([parts.tools, parts.system, memory], parts.history, parts.question),
                window,
                ContextReport(window, reserve, counted=False),
            )
        system, used, cut = await self._clip(
            route, parts.system, self.budget(route, "system", max_tokens)
        )
        system_used = used
        # Tools are never cut (a cut catalogue breaks the agent): what they take beyond
        # their share comes out of the conversation's room.
        tools = parts.tools
        tools_used = (await self.count(route, [tools]))[0] if tools else 0
        memory, memory_used = await self._memory(route, parts.memory, max_tokens, parts.question)
        head = "\n\n".join(p for p in (tools, system, memory) if p)
        question = parts.question
        asked = (await self.count(route, [question.content]))[0] if question else 0
        fixed = (await self.count(route, [head]))[0] if head else 0
        room = window - reserve - _MARGIN - fixed - asked
        history, summary, summarised, dropped = await self._history(route, parts.history, room)
        report = ContextReport(
            window,
            reserve,
            system=system_used,
            system_cut=cut,
            tools=tools_used,
            tools_over_share=tools_used > self.budget(route, "tools", max_tokens),
            memory=memory_used,
            question=asked,
            history=sum(await self.count(route, [m.content for m in history])),
            summarised=summarised,
            dropped=dropped,
        )
        return BuiltPrompt(_messages([head, summary], history, question), window, report)

    async def _memory(
        self,
        route: Route,
        notes: Sequence[str],
        max_tokens: int,
        question: ChatMessage | None = None,
    ) -> tuple[str, int]:
        budget = self.budget(route, "memory", max_tokens)
        kept: list[str] = []
        sizes = await self.count(route, list(notes)) if notes else []
        head = _MEMORY_HEAD[_language_of(question)]
        spent = (await self.count(route, [head]))[0] if notes else 0
        for note, size in zip(notes, sizes, strict=True):
            if spent + size > budget:
                break
            kept.append(_note(note))
            spent += size
        return (_memory_block(kept, question), spent) if kept else ("", 0)

    async def memory_text(
        self, route: Route, notes: Sequence[str], max_tokens: int, question: ChatMessage
    ) -> str:
        """The memory notes as a prompt part of their own, within the memory share (for
        modes that build their prompts themselves)."""
        text, _ = await self._memory(route, notes, max_tokens, question)
        return text

    async def _history(
        self, route: Route, history: Sequence[ChatMessage], room: int
    ) -> tuple[list[ChatMessage], str, int, int]:
        """(messages kept, summary text, messages summarised, messages dropped)."""
        history = list(history)
        if not history:
            return [], "", 0, 0
        sizes = await self.count(route, [m.content for m in history])
        if sum(sizes) <= room:
            return history, "", 0, 0
        # The summary's room first, then the latest messages, as many as fit.
        summary_room = min(self.settings.summary_tokens + 16, room // 3)
        turns_room = room - summary_room if self.settings.summarise else room
        keep = 0
        spent = 0
        for size in reversed(sizes):
            if spent + size > turns_room:
                break
            spent += size
            keep += 1
        # A kept history opens with a question, never with an answer.
        while keep and history[len(history) - keep].role != "user":
            spent -= sizes[len(history) - keep]
            keep -= 1
        old = history[: len(history) - keep]
        kept = history[len(history) - keep :]
        if not self.settings.summarise:
            return kept, "", 0, len(old)
        summary = await self._summary(old, min(summary_room, room - spent))
        if not summary:
            return kept, "", 0, len(old)
        return kept, summary, len(old), 0

    async def _summary(self, old: Sequence[ChatMessage], room: int) -> str:
        if room < 48:
            return ""
        keys = [_key(old[:n]) for n in range(len(old) + 1)]
        known = next((n for n in range(len(old), 0, -1) if keys[n] in self._summaries), 0)
        previous = self._summaries.get(keys[known], "") if known else ""
        if known == len(old):
            text = previous
        else:
            text = await self._summarise(
                previous, old[known:], min(room, self.settings.summary_tokens)
            )
            if not text:
                return ""
            self._summaries[keys[len(old)]] = text
        language = "fr" if detect_language(text) == "fr" else "en"
        return f"{_SUMMARY_HEAD[language]} {text}"

    async def _summarise(self, previous: str, messages: Sequence[ChatMessage], tokens: int) -> str:
        sample = " ".join(m.content for m in messages if m.role == "user")[:2000]
        language = "fr" if detect_language(sample or previous) == "fr" else "en"
        lines = [f"(summary so far) {previous}"] if previous else []
        lines += [f"{m.role}: {' '.join(m.content.split())[:4000]}" for m in messages]
        prompt = [
            ChatMessage("system", _SUMMARISE[language]),
            ChatMessage("user", "\n".join(lines)),
        ]
        parts: list[str] = []
        try:
            route = self.router.resolve(self.settings.summary_model)
            params = GenerationParams(temperature=0.0, max_tokens=max(32, tokens))
            async for event in self.router.stream(route, prompt, params, cache_scope="summary"):
                if isinstance(event, Token):
                    parts.append(event.text)
        except ConciliumError as exc:
            log.warning("summary_failed", error=str(exc))
            return ""
        return " ".join("".join(parts).split())


def _note(text: str) -> str:
    return f"- {text.strip()}"


def _language_of(question: ChatMessage | None) -> str:
    return "fr" if question is not None and detect_language(question.content) == "fr" else "en"


def _memory_block(notes: Sequence[str], question: ChatMessage | None) -> str:
    """The notes under a heading in the question's language."""
    if not notes:
        return ""
    return "\n".join([_MEMORY_HEAD[_language_of(question)], *notes])


def _messages(
    system: Sequence[str], history: Sequence[ChatMessage], question: ChatMessage | None
) -> list[ChatMessage]:
    """One system message (the non-empty parts), the conversation, the question."""
    text = "\n\n".join(part for part in system if part)
    messages = [ChatMessage("system", text)] if text else []
    messages += history
    if question is not None:
        messages.append(question)
    return messages


def _key(messages: Sequence[ChatMessage]) -> str:
    digest = hashlib.sha256()
    for m in messages:
        digest.update(m.role.encode() + b"\0" + m.content.encode() + b"\0")
    return digest.hexdigest()
