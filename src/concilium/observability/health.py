"""Readiness checks, shared by ``/health/ready`` and ``concilium doctor``."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from concilium.errors import ConciliumError

if TYPE_CHECKING:
    from concilium.services import Services

__all__ = ["Check", "Report", "readiness"]


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str
    duration_ms: float


@dataclass
class Report:
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def as_dict(self) -> dict[str, Any]:
        return {
            "status": "ok" if self.ok else "unavailable",
            "checks": {
                c.name: {"ok": c.ok, "detail": c.detail, "duration_ms": round(c.duration_ms, 1)}
                for c in self.checks
            },
        }


async def _timed(name: str, check: Any, timeout: float = 5.0) -> Check:
    started = time.perf_counter()
    try:
        async with asyncio.timeout(timeout):
            detail = await check
        ok = True
    except TimeoutError:
        ok, detail = False, f"no answer within {timeout:g}s"
    except ConciliumError as exc:
        ok, detail = False, exc.detail
    except Exception as exc:  # a readiness probe reports failures, it does not raise them
        ok, detail = False, f"{type(exc).__name__}: {exc}"
    return Check(name, ok, str(detail or "ok"), (time.perf_counter() - started) * 1000)


async def readiness(services: Services) -> Report:
    async def database() -> str:
        await services.db.ping()
        return services.db.dialect

    async def default_model() -> str:
        route = services.router.resolve("default")
        errors: list[str] = []
        for target in route.targets:
            try:
                await target.backend.check(target.model)
                return target.label
            except ConciliumError as exc:
                errors.append(f"{target.label}: {exc.detail}")
        raise ConciliumError("; ".join(errors))

    checks = await asyncio.gather(
        _timed("database", database()), _timed("default_model", default_model())
    )
    return Report(list(checks))
