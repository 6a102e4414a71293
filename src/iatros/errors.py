"""Gateway errors, each one mapping to an HTTP status and the OpenAI error body.

Domain code raises these; the transport turns them into responses. Keeping the
status next to the error means no handler has to guess what a failure means.
"""

from __future__ import annotations

from typing import Any


class GatewayError(Exception):
    """Base error: carries the HTTP status and the OpenAI error fields."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        return {
            "error": {
                "message": self.message,
                "type": self.type,
                "param": self.param,
                "code": self.code,
            }
        }


class InvalidRequest(GatewayError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(GatewayError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(GatewayError):
    status = 403
    type = "permission_error"
    code = "permission_denied"


class NotFound(GatewayError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class Conflict(GatewayError):
    """The request contradicts the resource's state (answering a closed review twice)."""

    status = 409
    type = "invalid_request_error"
    code = "conflict"


class ModelNotFound(NotFound):
    code = "model_not_found"


class PayloadTooLarge(GatewayError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class Overloaded(GatewayError):
    """The gateway (or a provider queue) is full: retry after a while."""

    status = 429
    type = "rate_limit_error"
    code = "overloaded"

    def __init__(self, message: str, *, retry_after_s: float, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.retry_after_s = retry_after_s
        self.headers.setdefault("retry-after", str(max(1, round(retry_after_s))))


class RateLimited(Overloaded):
    """A key or tenant is over its requests or tokens per minute."""

    code = "rate_limit_exceeded"


class UpstreamError(GatewayError):
    """A provider failed. ``retryable`` tells routing whether another try may help."""

    status = 502
    type = "upstream_error"
    code = "upstream_error"

    def __init__(
        self,
        message: str,
        *,
        retryable: bool = True,
        upstream_status: int | None = None,
        **kw: Any,
    ) -> None:
        super().__init__(message, **kw)
        self.retryable = retryable
        self.upstream_status = upstream_status


class UpstreamTimeout(UpstreamError):
    status = 504
    code = "upstream_timeout"


class ServiceUnavailable(GatewayError):
    status = 503
    type = "server_error"
    code = "unavailable"
