"""Model ids → backend targets, with retries, fallback, circuit breakers and the cache.

A model id is resolved, in order, as: ``default``; an alias from settings (its
targets are resolved recursively, in fallback order); ``backend/model``; a bare
model name served by one or more backends (catalog names by the embedded one).

Retries happen only before the first token: once text has reached the client, a
failure ends the stream with an error instead of silently starting over. The
retry loop is written out rather than delegated to tenacity because tenacity's
attempt managers swallow ``GeneratorExit``/cancellation around a ``yield``.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, replace

from concilium.config import Settings
from concilium.errors import BackendError, BackendTimeout, BackendUnavailable, ModelNotFound
from concilium.events import BackendSelected, Done, Event, NativeToolCall, Token, Usage
from concilium.llm.base import (
    Backend,
    ChatMessage,
    ChatRequest,
    Chunk,
    GenerationParams,
    ModelInfo,
    estimate_message_tokens,
)
from concilium.llm.breaker import BreakerState, CircuitBreaker
from concilium.llm.cache import CachedResponse, ResponseCache
from concilium.llm.context import fit_to_window
from concilium.observability.metrics import Metrics

__all__ = ["Route", "Router", "Target"]

_MAX_ALIAS_DEPTH = 8


@dataclass(frozen=True, slots=True)
class Target:
    backend: Backend
    model: str

    @property
    def label(self) -> str:
        return f"{self.backend.name}/{self.model}"


@dataclass(frozen=True, slots=True)
class Route:
    model: str  # the id the caller asked for
    targets: tuple[Target, ...]


class _MidStreamFailure(Exception):
    """A backend failed after text was sent: no retry, no fallback."""

    def __init__(self, error: BackendError) -> None:
        super().__init__(str(error))
        self.error = error


class Router:
    def __init__(
        self,
        settings: Settings,
        backends: dict[str, Backend],
        cache: ResponseCache,
        metrics: Metrics,
    ) -> None:
        self.settings = settings
        self.backends = backends
        self.cache = cache
        self.metrics = metrics
        rs = settings.router
        self.breakers = {
            name: CircuitBreaker(
                name,
                failure_threshold=rs.breaker_failure_threshold,
                reset_seconds=rs.breaker_reset_seconds,
                on_change=self._breaker_changed,
            )
            for name in backends
        }
        for name in backends:
            metrics.breaker_state.labels(backend=name).set(BreakerState.CLOSED)

    def _breaker_changed(self, backend: str, state: BreakerState) -> None:
        self.metrics.breaker_state.labels(backend=backend).set(int(state))

    # -- resolution ---------------------------------------------------------------------

    def resolve(self, model: str) -> Route:
        targets = self._expand(model.strip(), 0)
        unique = tuple(dict.fromkeys(targets))
        return Route(model=model, targets=unique)

    def _expand(self, name: str, depth: int) -> list[Target]:
        if depth > _MAX_ALIAS_DEPTH:
            raise ModelNotFound(f"alias chain too deep (cycle?) at {name!r}")
        if not name:
            raise ModelNotFound("empty model id")
        if name == "default":
            return self._expand(self.settings.chat.default_model, depth + 1)
        alias = self.settings.models.get(name)
        if alias is not None:
            return [t for target in alias.targets for t in self._expand(target, depth + 1)]
        backend_name, sep, rest = name.partition("/")
        if sep and rest and backend_name in self.backends:
            backend = self.backends[backend_name]
            if not backend.allows(rest):
                raise ModelNotFound(f"backend {backend_name!r} does not serve {rest!r}")
            return [Target(backend, rest)]
        serving = [Target(b, name) for b in self.backends.values() if b.serves(name)]
        if serving:
            return serving
        raise ModelNotFound(f"model {name!r} is not an alias, a catalog model or backend/model")

    async def list_models(self) -> list[ModelInfo]:
        infos = [
            ModelInfo(id="default", backend="alias", description=self.settings.chat.default_model)
        ]
        infos += [
            ModelInfo(id=name, backend="alias", description=alias.description)
            for name, alias in self.settings.models.items()
        ]
        for backend in self.backends.values():
            try:
                async with asyncio.timeout(5):
                    infos += await backend.list_models()
            except (BackendError, TimeoutError):
                continue  # an unreachable backend lists nothing; /health/ready reports it
        return infos

    # -- generation ---------------------------------------------------------------------

    def with_defaults(self, params: GenerationParams) -> GenerationParams:
        chat = self.settings.chat
        return replace(
            params,
            temperature=chat.temperature if params.temperature is None else params.temperature,
            max_tokens=params.max_tokens or chat.max_tokens,
        )

    async def stream(
        self,
        route: Route,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        *,
        use_cache: bool | None = None,
        cache_scope: str = "direct",
    ) -> AsyncIterator[Event]:
        """Answer ``messages`` through the route's chain. Raises BackendError when none can."""
        params = self.with_defaults(params)
        cache_key: str | None = None
        if self.cache.applies(params, use_cache):
            # Keyed by what the id resolves to: re-pointing an alias changes the key.
            resolved = ",".join(t.label for t in route.targets)
            cache_key = self.cache.key(cache_scope, resolved, messages, params)
            hit = await self.cache.get(cache_key)
            if hit is not None:
                yield BackendSelected(route.model, "cache", route.model, cached=True)
                if hit.content:
                    yield Token(hit.content)
                yield Usage(hit.prompt_tokens, hit.completion_tokens)
                yield Done(hit.finish_reason, cached=True)
                return

        failures: list[str] = []
        errors: list[BackendError] = []
        for index, target in enumerate(route.targets):
            breaker = self.breakers[target.backend.name]
            if not breaker.allow():
                failures.append(f"{target.label}: circuit open")
                continue
            try:
                async for event in self._attempts(
                    route, target, messages, params, failures, cache_key
                ):
                    yield event
                if index:
                    self.metrics.fallbacks.labels(model=route.model).inc()
                return
            except _MidStreamFailure as exc:
                raise exc.error from exc
            except BackendError as exc:
                errors.append(exc)
                failures.append(f"{target.label}: {exc.detail}")
        if len(errors) == 1 and len(route.targets) == 1:
            raise errors[0]
        retryable = any(e.retryable for e in errors) or not errors
        raise BackendUnavailable(
            f"no backend could answer {route.model!r}: " + "; ".join(failures),
            retryable=retryable,
            retry_after=min(
                (self.breakers[t.backend.name].retry_in() for t in route.targets), default=None
            ),
        )

    def _backoff(self, attempt: int, error: BackendError) -> float:
        rs = self.settings.router
        delay = float(min(rs.backoff_max, rs.backoff_initial * 2**attempt)) * random.uniform(0.5, 1)
        if error.retry_after is not None:  # never more than backoff_max: see _attempts
            delay = max(delay, error.retry_after)
        return delay

    async def _attempts(
        self,
        route: Route,
        target: Target,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        failures: list[str],
        cache_key: str | None,
    ) -> AsyncIterator[Event]:
        backend = target.backend
        breaker = self.breakers[backend.name]
        retries = self.settings.router.retries
        for attempt in range(retries + 1):
            started = False
            try:
                fitted = await fit_to_window(
                    backend, target.model, messages, params.max_tokens or 1
                )
                request = ChatRequest(
                    target.model, fitted.messages, replace(params, max_tokens=fitted.max_tokens)
                )
                parts: list[str] = []
                logprobs: list[float] = []
                last: Chunk | None = None
                t0 = time.perf_counter()
                async for chunk in self._guarded(backend, request):
                    if not started:
                        started = True
                        self.metrics.time_to_first_token.labels(
                            backend=backend.name, model=target.model
                        ).observe(time.perf_counter() - t0)
                        yield BackendSelected(
                            route.model, backend.name, target.model, tuple(failures)
                        )
                    if chunk.text:
                        parts.append(chunk.text)
                        yield Token(chunk.text)
                    if chunk.logprobs:
                        logprobs.extend(chunk.logprobs)
                    if chunk.finish_reason is not None:
                        last = chunk
            except BackendError as exc:
                self.metrics.backend_errors.labels(backend=backend.name, code=exc.code).inc()
                # A local engine that is slow to start is busy with queued work, not broken;
                # retrying it would only queue the request again.
                busy_local = backend.local and isinstance(exc, BackendTimeout)
                if (exc.retryable or exc.upstream_status in (401, 403)) and not busy_local:
                    breaker.record_failure()
                else:
                    breaker.release()
                if started:
                    raise _MidStreamFailure(exc) from exc
                # A server asking for a longer pause than we would wait: try the next target.
                too_long = (exc.retry_after or 0) > self.settings.router.backoff_max
                if (
                    not exc.retryable
                    or busy_local
                    or too_long
                    or attempt == retries
                    or not breaker.allow()
                ):
                    raise
                await asyncio.sleep(self._backoff(attempt, exc))
                continue
            except BaseException:
                breaker.release()  # cancelled by the caller: says nothing about the backend
                raise
            breaker.record_success()
            text = "".join(parts)
            prompt_tokens = (
                (last.prompt_tokens if last else None)
                or fitted.prompt_tokens
                or sum(map(estimate_message_tokens, fitted.messages))
            )
            completion_tokens = (last.completion_tokens if last else None) or len(parts)
            finish = last.finish_reason if last and last.finish_reason else "stop"
            labels = {"backend": backend.name, "model": target.model}
            self.metrics.tokens_generated.labels(**labels).inc(completion_tokens)
            self.metrics.prompt_tokens.labels(**labels).inc(prompt_tokens)
            yield Usage(prompt_tokens, completion_tokens)
            calls = last.tool_calls if last is not None else ()
            done = Done(
                finish,
                dropped_messages=fitted.dropped,
                truncated=fitted.truncated,
                tool_calls=tuple(NativeToolCall(c["id"], c["name"], c["arguments"]) for c in calls),
                # The mean log-probability of the answer's tokens: its confidence.
                logprob=sum(logprobs) / len(logprobs) if logprobs else None,
            )
            if cache_key is not None and finish in ("stop", "length"):
                await self.cache.put(
                    cache_key,
                    route.model,
                    CachedResponse(text, finish, prompt_tokens, completion_tokens),
                )
            yield done
            return

    async def _guarded(self, backend: Backend, request: ChatRequest) -> AsyncIterator[Chunk]:
        """The backend's stream under first-token, idle and total deadlines."""
        cfg, rs = backend.config, self.settings.router
        first = cfg.first_token_timeout or rs.first_token_timeout
        idle = cfg.idle_timeout or rs.idle_timeout
        total = cfg.timeout or rs.request_timeout
        loop = asyncio.get_running_loop()
        deadline = loop.time() + total
        stream = backend.stream_chat(request)
        wait, what = first, "first token"
        try:
            while True:
                budget = min(wait, deadline - loop.time())
                if budget <= 0:
                    raise BackendTimeout(f"{backend.name}: request exceeded {total:g}s")
                try:
                    async with asyncio.timeout(budget):
                        chunk = await anext(stream)
                except StopAsyncIteration:
                    return
                except TimeoutError as exc:
                    raise BackendTimeout(f"{backend.name}: no {what} within {budget:g}s") from exc
                wait, what = idle, "chunk"
                yield chunk
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
