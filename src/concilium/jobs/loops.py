"""Background loops that stop between steps, not in the middle of one.

Cancelling a task while it is inside a database call leaves the connection's reset
interrupted (SQLAlchemy logs it as an error, and the work of that step is lost). A
``Pauses`` object is where a loop waits between steps: ``stop`` wakes it there and lets the
current step end, cancelling only what is still running after a grace period.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable

__all__ = ["Pauses"]


class Pauses:
    def __init__(self) -> None:
        self._stopping = asyncio.Event()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    def reset(self) -> None:
        self._stopping = asyncio.Event()

    async def sleep(self, seconds: float) -> bool:
        """Wait up to ``seconds``; False once the loop should end (at once if it should)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(seconds):
                await self._stopping.wait()
        return not self._stopping.is_set()

    async def stop(self, tasks: Iterable[asyncio.Task[None]], grace: float) -> None:
        """Ask the loops to end at their next pause; cancel those still running after
        ``grace`` seconds; return once every one has ended."""
        self._stopping.set()
        pending = {task for task in tasks if not task.done()}
        if pending and grace > 0:
            _, pending = await asyncio.wait(pending, timeout=grace)
        for task in pending:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
