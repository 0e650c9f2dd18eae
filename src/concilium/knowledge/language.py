"""Language of a text (ISO 639-1), from a sample: enough to pick the analyser and to filter."""

from __future__ import annotations

import threading

__all__ = ["detect_language"]

_SAMPLE = 4000
_MIN_LETTERS = 20
_lock = threading.Lock()


def detect_language(text: str, min_letters: int = _MIN_LETTERS) -> str | None:
    """The most likely language, or None when the text is too short to tell (fewer than
    ``min_letters``: a chat question of a few words tells, a word or two does not)."""
    sample = text[:_SAMPLE]
    if sum(ch.isalpha() for ch in sample) < min_letters:
        return None
    import py3langid  # loads its model on first use

    with _lock:  # the classifier keeps state between calls
        language, _score = py3langid.classify(sample)
    return str(language)
