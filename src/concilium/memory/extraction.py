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
from concilium.memory.retention import classify, fold
from concilium.memory.service import MemoryService, Recalled
from concilium.store.db import Database
from concilium.store.models import Conversation, Message, Workspace

__all__ = ["EXTRACT_JOB", "ExtractionReport", "Extractor", "Note"]

log = structlog.get_logger(__name__)

EXTRACT_JOB = "memory.extract"
_MAX_NOTES = 4
_MIN_CHARS, _MAX_CHARS = 8, 200

_INSTRUCTIONS = {
    "en": (
        "You keep notes about the user for later conversations. From the user's message, "
        "note only what it tells about the user that will still matter later: facts about "
        "them (health, family, home, work, pets, belongings, plans with their dates), what "
        "they like or dislike, and how they want to be answered. Each note is one short "
        'sentence that starts with "The user" and keeps names, numbers and dates. Never '
        "note questions, greetings, general knowledge, the assistant's words, or facts "
        "about other people alone. If something the user said before is no longer true, "
        "note the new situation."
    ),
    "fr": (
        "Tu prends des notes sur l'utilisateur pour les conversations suivantes. Du message "
        "de l'utilisateur, note seulement ce qu'il dit de lui qui comptera encore plus tard : "
        "des faits le concernant (santé, famille, logement, travail, animaux, biens, projets "
        "avec leurs dates), ce qu'il aime ou non, et comment il veut qu'on lui réponde. "
        "Chaque note est une phrase courte qui commence par « L'utilisateur » et garde les "
        "noms, les nombres et les dates. Ne note jamais les questions, les salutations, les "
        "connaissances générales, les paroles de l'assistant, ni ce qui ne concerne que "
        "d'autres personnes. Si une chose dite avant n'est plus vraie, note la nouvelle "
        "situation."
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
                    "text": {"type": "string", "maxLength": _MAX_CHARS},
                    # Permanent is the user's choice alone, never the model's.
                    "keep": {
                        "type": "string",
                        "enum": ["important", "normal", "temporary", "auto_delete"],
                    },
                },
                "required": ["text", "keep"],
            },
        }
    },
    "required": ["notes"],
}
_FORGET_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "forget": {"type": "array", "maxItems": 2, "items": {"type": "string", "maxLength": 120}}
    },
    "required": ["forget"],
}
_FORGET_PROMPT = {
    "en": (
        "The user asks you to forget something. What, in a few words for each thing? "
        'Reply with JSON: {{"forget": ["..."]}}\n\nUser\'s message:\n{message}'
    ),
    "fr": (
        "L'utilisateur te demande d'oublier quelque chose. Quoi, en quelques mots pour "
        'chaque chose ? Réponds en JSON : {{"forget": ["..."]}}\n\nMessage de '
        "l'utilisateur :\n{message}"
    ),
}
#: Worked examples shown before each message: what to note and what not. A note copied
#: from them names things the user never said: ``_grounded`` refuses it.
_SHOTS: dict[str, tuple[tuple[str, dict[str, Any]], ...]] = {
    "en": (
        ("Thanks! What's the capital of Peru?", {"notes": []}),
        (
            "Morning! My sister Julie just had twins, and I quit smoking last week. Can you "
            "suggest a name for my new bakery? Also I'm lactose intolerant, so no milk ideas.",
            {
                "notes": [
                    {"text": "The user quit smoking in late December 2023.", "keep": "important"},
                    {"text": "The user is opening a bakery.", "keep": "normal"},
                    {"text": "The user is lactose intolerant.", "keep": "important"},
                ]
            },
        ),
    ),
    "fr": (
        ("Merci ! Quelle est la capitale du Pérou ?", {"notes": []}),
        (
            "Salut ! Ma sœur Julie vient d'avoir des jumeaux, et j'ai arrêté de fumer la "
            "semaine dernière. Tu peux me proposer un nom pour ma future boulangerie ? "
            "Je suis intolérant au lactose, donc pas d'idées avec du lait.",
            {
                "notes": [
                    {
                        "text": "L'utilisateur a arrêté de fumer fin décembre 2023.",
                        "keep": "important",
                    },
                    {"text": "L'utilisateur ouvre une boulangerie.", "keep": "normal"},
                    {"text": "L'utilisateur est intolérant au lactose.", "keep": "important"},
                ]
            },
        ),
    ),
}
_SHOT_DATES = ("2024-01-04", "2024-01-05")
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
    r"finalement|a demenage|demenage|a change|maintenant|a arrete|arrete de|a quitte"
    r"|moving to|is moving|will move|new job|now works|va demenager|nouveau travail)\b"
)
_PREFERENCE = re.compile(
    r"\b(likes?|loves?|prefers?|enjoys?|hates?|dislikes?|favou?rite|fan of|can t stand"
    r"|aime|adore|prefere|deteste|favori|favorite|raffole|ne supporte pas)\b"
)
_EVENT = re.compile(
    r"\b(appointment|meeting|trip|flight|wedding|birthday party|exam|interview|next (week|month)"
    r"|rendez vous|reunion|voyage|vol|mariage|examen|entretien|la semaine prochaine"
    r"|le mois prochain)\b"
)
_INSTRUCTION = re.compile(
    r"\b(wants answers|wants replies|call (him|her|them|the user)|answer in|reply in"
    r"|veut des reponses|veut qu on|appeler|repondre en|tutoie|vouvoie)\b"
)
#: About the user: the notes say so (they are asked to start with it).
_ABOUT_USER = re.compile(r"\b(the user|user s|users|l utilisateur|l utilisatrice)\b")
#: The user asked to forget something (a "forget" note counts only then).
_FORGET_ASKED = re.compile(
    r"\b(forget|erase|delete|remove|don t remember|oublie|oubliez|oublier|efface|effacez"
    r"|supprime|supprimez|ne retiens pas)\b"
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

    def merge(self, other: ExtractionReport) -> None:
        self.added += other.added
        self.updated += other.updated
        self.forgotten += other.forgotten
        self.unchanged += other.unchanged
        self.rejected += other.rejected

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
    """The notes of a model's reply; malformed entries are skipped. The kind is the
    rules' (see ``kind_of``), the retention class the model's proposal."""
    try:
        data = json.loads(raw)
    except ValueError:
        return []
    kept = data.get("notes") if isinstance(data, dict) else None
    notes = []
    for item in kept if isinstance(kept, list) else []:
        text = item.get("text") if isinstance(item, dict) else item
        if isinstance(text, str) and text.strip():
            keep = str(item.get("keep") or "") if isinstance(item, dict) else ""
            text = third_person(" ".join(text.split()))
            notes.append(Note("remember", text, kind_of(text), keep))
    return notes[:_MAX_NOTES]


_FIRST_PERSON = re.compile(r"^(i|i m|i ve|i d|i ll|my|me|je|j|moi|ma|mon|mes|nous|on)\b")


def third_person(text: str) -> str:
    """A note the model left in the user's own words, marked as theirs."""
    if not _FIRST_PERSON.match(fold(text)):
        return text
    if _language(text) == "fr":
        return f"L'utilisateur a dit : « {text} »"
    return f'The user said: "{text}"'


_SENTENCE = re.compile(r"(?<=[.!?…])\s+|\n+")
#: A statement of the user about themselves (folded): first person, not a question.
_SELF = re.compile(r"\b(i|i m|i ve|i d|i ll|my|mine|je|j|ma|mon|mes|nous|notre|nos)\b")
#: A request to the assistant, not a statement (folded).
_REQUEST = re.compile(
    r"^(please|can you|could you|would you|will you|tell me|give me|show me|help me|"
    r"suggest|recommend|write|make|find|explain|list|let s|"
    r"peux tu|pourrais tu|pouvez vous|pourriez vous|donne moi|dis moi|montre moi|"
    r"aide moi|propose moi|propose|ecris|fais|trouve|explique|donnez moi|dites moi)\b"
)
_MIN_WORDS = 5


def statements(said: str) -> list[Note]:
    """The user's own sentences about themselves, at most ``_MAX_NOTES``: the fallback
    when the model notes nothing (small models miss facts said in passing)."""
    notes = []
    for sentence in _SENTENCE.split(said):
        sentence = " ".join(sentence.split()).strip(" -\u2013\u2014")
        folded = fold(sentence)
        if sentence.endswith("?") or len(folded.split()) < _MIN_WORDS:
            continue
        if not _SELF.search(folded) or _REQUEST.search(folded):
            continue
        if len(sentence) > _MAX_CHARS - 30:
            continue
        text = (
            third_person(sentence)
            if _FIRST_PERSON.match(folded)
            else (
                f"L'utilisateur a dit : « {sentence} »"
                if _language(sentence) == "fr"
                else f'The user said: "{sentence}"'
            )
        )
        notes.append(Note("remember", text, kind_of(sentence), ""))
    return notes[:_MAX_NOTES]


def kind_of(text: str) -> str:
    """What a note is about, by its words."""
    folded = fold(text)
    if _INSTRUCTION.search(folded):
        return "instruction"
    if _PREFERENCE.search(folded):
        return "preference"
    if _EVENT.search(folded):
        return "event"
    return "fact"


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
        it answers); with "forget" notes when the user asks to forget something."""
        language = _language(message)
        layout = _LAYOUT[language]
        prompt = [ChatMessage("system", _INSTRUCTIONS[language])]
        for day, (example, reply) in zip(_SHOT_DATES, _SHOTS[language], strict=True):
            prompt.append(ChatMessage("user", layout.format(date=day, context="", message=example)))
            prompt.append(ChatMessage("assistant", json.dumps(reply, ensure_ascii=False)))
        context = _CONTEXT[language].format(text=before[:600]) if before.strip() else ""
        prompt.append(
            ChatMessage("user", layout.format(date=date, context=context, message=message[:4000]))
        )
        notes = parse_notes(await self._ask(prompt, _NOTES_SCHEMA, 240))
        if _FORGET_ASKED.search(fold(message)):
            asked = [ChatMessage("user", _FORGET_PROMPT[language].format(message=message[:4000]))]
            try:
                data = json.loads(await self._ask(asked, _FORGET_SCHEMA, 80))
            except (ValueError, ConciliumError):
                data = {}
            for text in data.get("forget", []) if isinstance(data, dict) else []:
                if isinstance(text, str) and text.strip():
                    notes.append(Note("forget", " ".join(text.split()), "fact", ""))
        return notes

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
            if note.action == "forget" and not _FORGET_ASKED.search(fold(said)):
                report.rejected += 1  # small models invent requests to forget
                continue
            if note.action == "remember" and not _ABOUT_USER.search(fold(text)):
                report.rejected += 1  # about someone else, or general knowledge
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
            proposed = None if note.retention == "permanent" else note.retention
            retention = classify(text, note.kind, proposed).value
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
        where: dict[str, Any] = {
            "said": said,
            "guard": [conversation.system_prompt or ""],
            "workspace_id": None if personal else conversation.workspace_id,
            "conversation_id": conversation.id,
            "message_id": asked.id,
        }
        report = await self.apply(user_id, notes, **where)
        if not report.added and not report.updated and not report.unchanged:
            # The model kept nothing: what the user said of themselves, in their words.
            report.merge(await self.apply(user_id, statements(said), **where))
        log.info("memory_extracted", message_id=answer.id, **report.as_dict())
        return report
