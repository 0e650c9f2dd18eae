"""Memories from conversation turns, off the answer's path (a job on the queue).

After a turn, the model reads the user's message (and the question it answers) and
writes notes about the user as schema-constrained JSON. Each note is checked (length,
grounded in the user's words, not a copy of a system prompt or of these instructions),
then resolved against the user's nearest current memories: the same fact again changes
nothing, a changed fact replaces the old one (kept as history), a request to forget
retires what it names, anything else is added. Rules settle the clear cases; the model
is asked only when a note is close to a known one without being the same, and when its
answer is unusable the rules decide alone. Running twice on one turn stores nothing new.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import structlog
from sqlalchemy import select

from concilium.errors import ConciliumError
from concilium.events import Token
from concilium.knowledge.language import detect_language
from concilium.llm.base import ChatMessage, GenerationParams, ResponseFormat
from concilium.llm.router import Router
from concilium.memory.retention import KINDS, Retention, classify, fold
from concilium.memory.service import MemoryService, Recalled
from concilium.store.db import Database
from concilium.store.models import Conversation, Message, Workspace

__all__ = ["EXTRACT_JOB", "ExtractionReport", "Extractor", "Note"]

log = structlog.get_logger(__name__)

EXTRACT_JOB = "memory.extract"
_MAX_NOTES = 6
_MIN_CHARS, _MAX_CHARS = 8, 300

_INSTRUCTIONS = {
    "en": (
        "You keep notes about the user for later conversations. Read the user's message "
        "and note what it tells about the user that will still be useful later: facts "
        "about them (health, family, home, work, pets, belongings, plans and dates), their "
        "likes and dislikes, and how they want to be answered. Write each note as one short "
        'sentence in the third person that starts with "The user", keeping names, numbers '
        "and dates. Do not note questions, greetings, general knowledge, what the assistant "
        "said, or things about other people that say nothing about the user. When the user "
        'says something is no longer true, note the new situation ("The user no longer '
        'lives in Lyon.") with action "remember". When the user asks you to forget '
        'something, write a note naming it with action "forget". Most messages hold '
        "nothing worth noting: then return an empty list."
    ),
    "fr": (
        "Tu prends des notes sur l'utilisateur pour les conversations suivantes. Lis le "
        "message de l'utilisateur et note ce qu'il dit de lui qui restera utile plus tard : "
        "des faits le concernant (santé, famille, logement, travail, animaux, biens, projets "
        "et dates), ce qu'il aime ou n'aime pas, et comment il veut qu'on lui réponde. "
        "Écris chaque note en une phrase courte à la troisième personne qui commence par "
        "« L'utilisateur », en gardant les noms, les nombres et les dates. Ne note pas les "
        "questions, les salutations, les connaissances générales, ce que dit l'assistant, "
        "ni ce qui concerne d'autres personnes sans rien dire de l'utilisateur. Quand "
        "l'utilisateur dit que quelque chose n'est plus vrai, note la nouvelle situation "
        "(« L'utilisateur n'habite plus à Lyon. ») avec l'action « remember ». Quand "
        "l'utilisateur demande d'oublier quelque chose, écris une note qui le nomme avec "
        "l'action « forget ». La plupart des messages ne contiennent rien à noter : "
        "renvoie alors une liste vide."
    ),
}
_LAYOUT = {
    "en": "Date: {date}\n{context}User's message:\n{message}",
    "fr": "Date : {date}\n{context}Message de l'utilisateur :\n{message}",
}
_CONTEXT = {
    "en": "The assistant had said:\n{text}\n\n",
    "fr": "L'assistant avait dit :\n{text}\n\n",
}
_RESOLVE = {
    "en": (
        "Known notes about the user:\n{known}\n\nNew note: {new}\n\n"
        'Does the new note repeat a known note ("repeats"), make a known note out of date '
        '("replaces": the known one is no longer true), or say something else ("new")? '
        'Reply with JSON: {{"verdict": "...", "note": <number of the known note>}}'
    ),
    "fr": (
        "Notes connues sur l'utilisateur :\n{known}\n\nNouvelle note : {new}\n\n"
        "La nouvelle note répète-t-elle une note connue (« repeats »), rend-elle une note "
        "connue dépassée (« replaces » : la note connue n'est plus vraie), ou dit-elle autre "
        "chose (« new ») ? "
        'Réponds en JSON : {{"verdict": "...", "note": <numéro de la note connue>}}'
    ),
}
_NOTES_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "notes": {
            "type": "array",
            "maxItems": _MAX_NOTES,
            "items": {
                "type": "object",
                "properties": {
                    "action": {"type": "string", "enum": ["remember", "forget"]},
                    "text": {"type": "string"},
                    "kind": {"type": "string", "enum": list(KINDS)},
                    "retention": {"type": "string", "enum": [r.value for r in Retention]},
                },
                "required": ["action", "text", "kind", "retention"],
            },
        }
    },
    "required": ["notes"],
}
_VERDICT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string", "enum": ["new", "repeats", "replaces"]},
        "note": {"type": "integer", "minimum": 1, "maximum": 9},
    },
    "required": ["verdict", "note"],
}
# A changed situation (folded): the nearest known fact is what it replaces.
_CHANGE = re.compile(
    r"\b(no longer|not anymore|any more|anymore|now lives|has moved|moved to|changed|"
    r"switched|instead|stopped|quit|ne \w+ plus|n \w+ plus|plus allergique|desormais|"
    r"finalement|a demenage|demenage|a change|maintenant|a arrete|arrete de|a quitte)\b"
)
_STOP = frozenset(
    [
        "the",
        "user",
        "users",
        "that",
        "this",
        "with",
        "from",
        "have",
        "has",
        "been",
        "their",
        "they",
        "about",
        "what",
        "when",
        "where",
        "will",
        "would",
        "also",
        "very",
        "just",
        "like",
        "likes",
        "into",
        "than",
        "then",
        "there",
        "these",
        "those",
        "utilisateur",
        "utilisatrice",
        "dans",
        "avec",
        "pour",
        "plus",
        "sont",
        "etre",
        "avoir",
        "fait",
        "cette",
        "elle",
        "elles",
        "ils",
        "leur",
        "leurs",
        "mais",
        "comme",
        "tres",
        "aussi",
    ]
)


@dataclass(frozen=True, slots=True)
class Note:
    action: str
    text: str
    kind: str
    retention: str


@dataclass
class ExtractionReport:
    added: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    forgotten: list[str] = field(default_factory=list)
    unchanged: int = 0
    rejected: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "added": len(self.added),
            "updated": len(self.updated),
            "forgotten": len(self.forgotten),
            "unchanged": self.unchanged,
            "rejected": self.rejected,
        }


def _language(text: str) -> str:
    return "fr" if detect_language(text) == "fr" else "en"


def _words(text: str) -> list[str]:
    return [w for w in fold(text).split() if len(w) >= 4 and w not in _STOP]


def _grounded(note: str, said: str) -> bool:
    """Some word of the note (by its first five letters) is in what the user said."""
    heard = {w[:5] for w in _words(said)}
    return any(w[:5] in heard for w in _words(note))


def _copies(note: str, text: str) -> bool:
    """Most of the note's words come from ``text`` (a system prompt, these instructions)."""
    words = _words(note)
    if len(words) < 3 or not text:
        return False
    known = set(_words(text))
    return sum(w in known for w in words) / len(words) >= 0.8


def parse_notes(raw: str) -> list[Note]:
    """The notes of a model's reply; malformed entries are skipped."""
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    items = data.get("notes") if isinstance(data, dict) else None
    notes = []
    for item in items if isinstance(items, list) else []:
        if not isinstance(item, dict) or not isinstance(item.get("text"), str):
            continue
        action = str(item["action"]) if item.get("action") == "forget" else "remember"
        kind = str(item["kind"]) if item.get("kind") in KINDS else "fact"
        retention = str(item.get("retention") or "")
        notes.append(Note(action, " ".join(item["text"].split()), kind, retention))
    return notes[:_MAX_NOTES]


class Extractor:
    """Turns a conversation turn into memory changes."""

    def __init__(self, memory: MemoryService, router: Router, db: Database) -> None:
        self.memory = memory
        self.router = router
        self.db = db

    @property
    def settings(self) -> Any:
        return self.memory.settings

    async def _ask(self, prompt: list[ChatMessage], schema: dict[str, Any], tokens: int) -> str:
        route = self.router.resolve(self.settings.extraction_model)
        params = GenerationParams(
            temperature=0.0,
            max_tokens=tokens,
            response_format=ResponseFormat("json_schema", schema, "memory"),
        )
        parts: list[str] = []
        async for event in self.router.stream(route, prompt, params, cache_scope="memory"):
            if isinstance(event, Token):
                parts.append(event.text)
        return "".join(parts)

    async def notes(self, message: str, *, before: str = "", date: str = "") -> list[Note]:
        """What the model notes from one user message (``before``: the assistant's words
        it answers)."""
        language = _language(message)
        context = _CONTEXT[language].format(text=before[:600]) if before.strip() else ""
        prompt = [
            ChatMessage("system", _INSTRUCTIONS[language]),
            ChatMessage(
                "user",
                _LAYOUT[language].format(date=date, context=context, message=message[:4000]),
            ),
        ]
        return parse_notes(await self._ask(prompt, _NOTES_SCHEMA, 320))

    async def _verdict(self, note: str, known: Sequence[Recalled]) -> tuple[str, int] | None:
        language = _language(note)
        listed = "\n".join(f"{n}. {m.text}" for n, m in enumerate(known, 1))
        prompt = [ChatMessage("user", _RESOLVE[language].format(known=listed, new=note))]
        try:
            data = json.loads(await self._ask(prompt, _VERDICT_SCHEMA, 40))
        except (ValueError, ConciliumError):
            return None
        verdict, index = data.get("verdict"), data.get("note")
        if verdict not in ("new", "repeats", "replaces"):
            return None
        if not isinstance(index, int) or not 1 <= index <= len(known):
            index = 1
        return verdict, index - 1

    async def apply(
        self,
        user_id: str,
        notes: Sequence[Note],
        *,
        said: str,
        guard: Sequence[str] = (),
        workspace_id: str | None = None,
        conversation_id: str | None = None,
        message_id: str | None = None,
    ) -> ExtractionReport:
        """Store what the notes change (see the module's description)."""
        report = ExtractionReport()
        guards = [*guard, *_INSTRUCTIONS.values()]
        for note in notes:
            text = note.text
            if not _MIN_CHARS <= len(text) <= _MAX_CHARS or not _grounded(text, said):
                report.rejected += 1
                continue
            if any(_copies(text, g) for g in guards):
                report.rejected += 1
                continue
            near = [
                m
                for m in await self.memory.search(user_id, text, k=3, workspace_id=workspace_id)
                if m.score >= self.settings.related_score
            ]
            if note.action == "forget":
                for m in near[:1]:
                    await self.memory.retire(user_id, m.id)
                    report.forgotten.append(m.id)
                if not near:
                    report.unchanged += 1
                continue
            retention = classify(text, note.kind, note.retention).value
            fields: dict[str, Any] = {
                "kind": note.kind,
                "retention": retention,
                "workspace_id": workspace_id,
                "origin": "extracted",
                "source_conversation_id": conversation_id,
                "source_message_id": message_id,
            }
            same = next((m for m in near if fold(m.text) == fold(text)), None)
            if same is not None:
                report.unchanged += 1
                continue
            target: Recalled | None = None
            if near and _CHANGE.search(fold(text)):
                target = near[0]
            elif near:
                verdict = await self._verdict(text, near)
                if verdict is None:  # the model could not say: similarity decides
                    if near[0].score >= self.settings.duplicate_score:
                        report.unchanged += 1
                        continue
                elif verdict[0] == "repeats":
                    report.unchanged += 1
                    continue
                elif verdict[0] == "replaces":
                    target = near[verdict[1]]
            if target is not None:
                fields.pop("workspace_id")
                new = await self.memory.supersede(user_id, target.id, text, **fields)
                report.updated.append(new.id)
                continue
            memory, created = await self.memory.add(user_id, text, **fields)
            if created:
                report.added.append(memory.id)
            else:
                report.unchanged += 1
        return report

    async def from_turn(self, payload: dict[str, Any]) -> ExtractionReport:
        """The job: the turn that ended with assistant message ``message_id``."""
        user_id = str(payload["user_id"])
        async with self.db.reader() as s:
            answer = await s.get(Message, str(payload["message_id"]))
            if answer is None or answer.parent_id is None:
                return ExtractionReport()  # deleted since: nothing to learn from
            conversation = await s.get(Conversation, answer.conversation_id)
            asked = await s.get(Message, answer.parent_id)
            before = await s.get(Message, asked.parent_id) if asked and asked.parent_id else None
            personal = True
            if conversation is not None and conversation.workspace_id is not None:
                personal = bool(
                    await s.scalar(
                        select(Workspace.personal).where(Workspace.id == conversation.workspace_id)
                    )
                )
        if conversation is None or asked is None or conversation.temporary:
            return ExtractionReport()
        if conversation.owner_id != user_id:
            return ExtractionReport()
        if not await self.memory.enabled_for(user_id, conversation.workspace_id):
            return ExtractionReport()
        said = asked.content
        previous = before.content if before is not None and before.role == "assistant" else ""
        date = f"{self.memory.clock():%Y-%m-%d}"
        notes = await self.notes(said, before=previous, date=date)
        report = await self.apply(
            user_id,
            notes,
            said=said,
            guard=[conversation.system_prompt or ""],
            workspace_id=None if personal else conversation.workspace_id,
            conversation_id=conversation.id,
            message_id=asked.id,
        )
        log.info("memory_extracted", message_id=answer.id, **report.as_dict())
        return report
