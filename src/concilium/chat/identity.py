"""Who the assistant is, told to the model: the default system prompt, per language.

Small models, asked who they are, name whoever trained them ("created by OpenAI"). The
default prompt says what Concilium is and what it can do in this installation (from the
settings), in the language of the user's message; administrators replace it with
``chat.system_prompt`` (every language) or ``chat.system_prompts`` (per language).
"""

from __future__ import annotations

from concilium.config import Settings
from concilium.knowledge.language import detect_language

__all__ = ["system_prompt"]

_IDENTITY = {
    "en": (
        "You are Concilium, an assistant running on this organisation's own server with "
        "the open model {model}; what the user writes stays here. You were not made by "
        "OpenAI and you are not ChatGPT. {abilities} Answer in the language of the user, "
        "and say so when you do not know."
    ),
    "fr": (
        "Tu es Concilium, un assistant qui fonctionne sur le serveur de cette organisation "
        "avec le modèle ouvert {model} ; ce que l'utilisateur écrit reste ici. Tu n'as pas "
        "été créé par OpenAI et tu n'es pas ChatGPT. {abilities} Réponds dans la langue de "
        "l'utilisateur, et dis-le quand tu ne sais pas."
    ),
}
_ABILITIES = {
    "en": {
        "intro": "Here you can also",
        "knowledge": "answer from the documents of the user's knowledge collections, citing them",
        "agent": "act with tools (calculator, files of the workspace, knowledge search{more})",
        "consensus": "ask several models to deliberate",
    },
    "fr": {
        "intro": "Ici, tu peux aussi",
        "knowledge": (
            "répondre à partir des documents des collections de l'utilisateur, en les citant"
        ),
        "agent": "agir avec des outils (calculatrice, fichiers de l'espace, recherche{more})",
        "consensus": "faire délibérer plusieurs modèles",
    },
}


_QUESTION_LETTERS = 10


def system_prompt(settings: Settings, text: str, model: str | None = None) -> str:
    """The system prompt for a conversation whose user wrote ``text``."""
    detected = detect_language(text, min_letters=_QUESTION_LETTERS) or ""
    configured = settings.chat.system_prompts.get(detected, settings.chat.system_prompt)
    if configured is not None:
        return configured
    language = "fr" if detected == "fr" else "en"
    words = _ABILITIES[language]
    enabled = [name for name, tool in settings.agents.tools.items() if tool.enabled]
    more = "".join(f", {name}" for name in enabled)
    abilities = [words["knowledge"], words["agent"].format(more=more)]
    if settings.orchestration.consensus:
        abilities.append(words["consensus"])
    joined = ", ".join(abilities[:-1]) + (" et " if language == "fr" else " and ") + abilities[-1]
    name = settings.chat.default_model if model in (None, "default") else model
    return _IDENTITY[language].format(model=name, abilities=f"{words['intro']} {joined}.")
