"""Retention classes: how long a memory is kept, and which class a new one gets.

The five classes of seed 004. A class is proposed by the extracting model and corrected
by rules: health and identity are never forgotten within the year, a passing event does
not outlive its month.
"""

from __future__ import annotations

import re
import unicodedata
from datetime import datetime, timedelta
from enum import StrEnum

from concilium.memory.settings import RetentionSettings

__all__ = ["KINDS", "Retention", "classify", "expiry", "fold"]

#: What a memory is about.
KINDS = ("fact", "preference", "event", "person", "instruction")


class Retention(StrEnum):
    PERMANENT = "permanent"  # never deleted by the cleanup
    IMPORTANT = "important"  # two years
    NORMAL = "normal"  # one year
    TEMPORARY = "temporary"  # thirty days
    AUTO_DELETE = "auto_delete"  # seven days


def expiry(retention: str, settings: RetentionSettings, learnt: datetime) -> datetime | None:
    """When a memory of this class learnt at ``learnt`` expires (None: never)."""
    days = {
        Retention.IMPORTANT: settings.important_days,
        Retention.NORMAL: settings.normal_days,
        Retention.TEMPORARY: settings.temporary_days,
        Retention.AUTO_DELETE: settings.auto_delete_days,
    }.get(Retention(retention))
    return None if days is None else learnt + timedelta(days=days)


def fold(text: str) -> str:
    """Lower case without accents or punctuation, spaces collapsed: what compares."""
    decomposed = unicodedata.normalize("NFKD", text.casefold())
    plain = "".join(c for c in decomposed if not unicodedata.combining(c))
    return " ".join(re.sub(r"[^\w\s]", " ", plain).split())


# Folded (see ``fold``) word stems.
_LASTING = re.compile(
    r"\b(allerg|intoleran|diabet|asthm|epilep|handicap|disab|medica|medicament|traitement"
    r"|vegan|vegetari|celiac|coeliaqu|gluten|pregnan|enceinte|born|birthday|ne le|nee le"
    r"|anniversaire|my name|je m appelle|name is|s appelle|married|marie|divorc|child|enfant"
    r"|son |daughter|fils|fille|wife|husband|femme|mari )"
)
_PASSING = re.compile(
    r"\b(today|tonight|tomorrow|this week|this weekend|next week|right now|currently"
    r"|aujourd hui|ce soir|demain|cette semaine|ce week end|la semaine prochaine|en ce moment)\b"
)


def classify(text: str, kind: str, proposed: str | None) -> Retention:
    """The class of a new memory: the model's proposal, corrected by the rules."""
    folded = fold(text) + " "
    try:
        chosen = Retention(proposed) if proposed else None
    except ValueError:
        chosen = None
    if _LASTING.search(folded):
        # Health, diet and identity last: at least two years.
        return chosen if chosen is Retention.PERMANENT else Retention.IMPORTANT
    if kind == "event" or _PASSING.search(folded):
        return Retention.TEMPORARY if chosen in (None, Retention.NORMAL) else chosen
    return chosen or Retention.NORMAL
