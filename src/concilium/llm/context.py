"""Fit a conversation into a model's context window, never overflowing it.

The system messages and the latest message always stay; the oldest turns go
first. When the latest message alone is too long, its middle is cut. The answer
budget (``max_tokens``) is then lowered to what the window has left.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

from concilium.llm.base import Backend, ChatMessage

__all__ = ["FittedPrompt", "fit_to_window"]

_CUT_MARK = "\n[…]\n"
_MIN_ANSWER = 16
_TEMPLATE_MARGIN = 48
_BYTES_FRAMING = 16


@dataclass(frozen=True, slots=True)
class FittedPrompt:
    messages: list[ChatMessage]
    max_tokens: int
    prompt_tokens: int | None  # None when the prompt fitted by the byte bound, uncounted
    dropped: int  # messages left out
    truncated: bool  # the latest message was cut


def _cut_middle(text: str, keep_ratio: float) -> str:
    keep = max(0, int(len(text) * keep_ratio) - len(_CUT_MARK))
    head = keep * 2 // 3
    tail = keep - head
    return text[:head] + _CUT_MARK + (text[-tail:] if tail else "")


async def fit_to_window(
    backend: Backend, model: str, messages: Sequence[ChatMessage], max_tokens: int
) -> FittedPrompt:
    # Chat templates add tokens of their own (role markers, a default system prompt).
    window = backend.context_length(model) - _TEMPLATE_MARGIN
    # Every token stands for at least one byte, so UTF-8 length bounds the count: most
    # prompts fit by that bound alone and skip tokenization on the way to the first token.
    if sum(len(m.content.encode()) + _BYTES_FRAMING for m in messages) + max_tokens <= window:
        return FittedPrompt(list(messages), max_tokens, None, 0, False)
    counts = await backend.token_counts(model, messages)
    total = sum(counts) + 4
    if total + max_tokens <= window:
        return FittedPrompt(list(messages), max_tokens, total, 0, False)

    # Keep room for a useful answer: what was asked, at most a quarter of the window.
    reserve = max(min(max_tokens, window // 4), min(_MIN_ANSWER, max_tokens))
    budget = window - reserve
    keep = [True] * len(messages)
    last = len(messages) - 1
    for i, message in enumerate(messages):
        if total <= budget:
            break
        if message.role == "system" or i == last:
            continue
        keep[i] = False
        total -= counts[i]
    # The kept history must open with a question: an answer whose question was dropped
    # goes too (strict chat templates reject a conversation that starts with the model).
    for i, message in enumerate(messages):
        if message.role == "system" or not keep[i]:
            continue
        if message.role != "assistant" or i == last:
            break
        keep[i] = False
        total -= counts[i]
    kept = [m for m, k in zip(messages, keep, strict=True) if k]
    dropped = len(messages) - len(kept)

    truncated = False
    for _ in range(4):  # token counts of cut text are re-measured, not assumed
        if total <= budget or not kept:
            break
        latest = kept[-1]
        latest_count = (await backend.token_counts(model, [latest]))[0]
        others = total - latest_count
        room = budget - others
        if room <= 8:
            # Even the system prompt does not fit: cut it down too.
            kept = [replace(m, content=_cut_middle(m.content, 0.5)) for m in kept]
        else:
            kept[-1] = replace(
                latest, content=_cut_middle(latest.content, room / latest_count * 0.95)
            )
        truncated = True
        total = sum(await backend.token_counts(model, kept)) + 4

    answer = max(1, min(max_tokens, window - total))
    return FittedPrompt(kept, answer, total, dropped, truncated)
