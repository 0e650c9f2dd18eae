"""Typed errors. Raised anywhere, mapped once to HTTP problem responses at the edge."""

from __future__ import annotations

__all__ = [
    "AgentOutputInvalid",
    "BackendError",
    "BackendTimeout",
    "BackendUnavailable",
    "BudgetExceeded",
    "ConciliumError",
    "Conflict",
    "Forbidden",
    "InvalidRequest",
    "ModelNotFound",
    "ModelNotInstalled",
    "NotFound",
    "PayloadTooLarge",
    "QuotaExceeded",
    "TooManyRequests",
    "Unauthorized",
    "error_class",
]


class ConciliumError(Exception):
    """Base of every error the API maps to a problem response."""

    status: int = 500
    code: str = "internal_error"
    title: str = "Internal error"

    def __init__(self, detail: str = "", **extra: object) -> None:
        super().__init__(detail or self.title)
        self.detail = detail or self.title
        self.extra = extra


class InvalidRequest(ConciliumError):
    status = 422
    code = "invalid_request"
    title = "Invalid request"


class NotFound(ConciliumError):
    status = 404
    code = "not_found"
    title = "Not found"


class Conflict(ConciliumError):
    status = 409
    code = "conflict"
    title = "Conflict"


class PayloadTooLarge(ConciliumError):
    status = 413
    code = "payload_too_large"
    title = "Payload too large"


class Unauthorized(ConciliumError):
    """No valid credentials (missing, expired, revoked, tampered)."""

    status = 401
    code = "unauthorized"
    title = "Authentication required"


class Forbidden(ConciliumError):
    status = 403
    code = "forbidden"
    title = "Forbidden"


class TooManyRequests(ConciliumError):
    status = 429
    code = "rate_limited"
    title = "Too many requests"

    def __init__(
        self, detail: str = "", *, retry_after: float | None = None, **extra: object
    ) -> None:
        super().__init__(detail, **extra)
        #: Seconds until a retry may succeed (the Retry-After header), when known.
        self.retry_after = retry_after


class QuotaExceeded(TooManyRequests):
    code = "quota_exceeded"
    title = "Token quota exceeded"


class ModelNotFound(NotFound):
    code = "model_not_found"
    title = "Model not found"


class BackendError(ConciliumError):
    """A backend failed. ``retryable`` says whether the same call may succeed later."""

    status = 502
    code = "backend_error"
    title = "Backend error"

    def __init__(
        self,
        detail: str = "",
        *,
        retryable: bool = True,
        retry_after: float | None = None,
        upstream_status: int | None = None,
        **extra: object,
    ) -> None:
        super().__init__(detail, **extra)
        self.retryable = retryable
        self.retry_after = retry_after
        self.upstream_status = upstream_status


class ModelNotInstalled(BackendError):
    """The model's weights are not on this machine (``concilium models pull``)."""

    status = 503
    code = "model_not_installed"
    title = "Model not installed"

    def __init__(self, detail: str = "", **extra: object) -> None:
        super().__init__(detail, retryable=False)
        self.extra.update(extra)


class BackendTimeout(BackendError):
    status = 504
    code = "backend_timeout"
    title = "Backend timed out"


class BackendUnavailable(BackendError):
    """No backend of the chain could answer (all failed or their circuits are open)."""

    status = 503
    code = "backend_unavailable"
    title = "No backend available"


class BudgetExceeded(ConciliumError):
    """A run used up its budget (time, tokens, steps) before finishing; what it did is in
    the answer streamed so far."""

    status = 422
    code = "budget_exceeded"


class AgentOutputInvalid(BackendError):
    """The model's agent step could not be read, even after a repair attempt."""

    status = 502
    code = "agent_output_invalid"


def error_class(code: str) -> type[ConciliumError]:
    """The error class of a code, among every ``ConciliumError`` subclass (of any module):
    a stream's error event becomes the same exception, status and body again at the edge.
    A subclass that keeps its parent's code maps to the parent."""
    found: dict[str, type[ConciliumError]] = {}
    pending: list[type[ConciliumError]] = [ConciliumError]
    while pending:
        cls = pending.pop(0)
        found.setdefault(cls.code, cls)
        pending.extend(cls.__subclasses__())
    return found.get(code, ConciliumError)
