"""Every failure a client can cause or meet, as one exception family.

Each error carries what OpenAI's error body needs -- a message written for the caller,
the request field it concerns (`param`), an HTTP status and a short machine-readable
`code` -- so one handler (`api/errors.py`) answers all of them the same way.  This module
imports nothing from the package: media, processing and the engine runner raise these
without depending on the HTTP layer or on each other.

Messages name the problem only: never file contents, paths outside what the caller sent,
addresses of objects or stack traces.
"""

from __future__ import annotations

RETRY_AFTER_SECONDS = "2"  # what a 503 tells clients to wait before retrying

_TYPE_BY_STATUS = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    405: "invalid_request_error",
    408: "timeout_error",
    413: "invalid_request_error",
    415: "invalid_request_error",
    422: "invalid_request_error",
    429: "rate_limit_error",
    503: "server_overloaded",
}


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    """OpenAI's {"error": {"message", "type", "param", "code"}}."""
    return {
        "error": {
            "message": message,
            "type": _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error"),
            "param": param,
            "code": code,
        }
    }


def grammar_failed_body(failure: Exception, request_id: str) -> dict:
    """OpenAI's error body for a generation whose grammar failed part-way
    (`engine.constraints.GrammarFailed`, whose text is written for the caller and whose
    `param` names the field)."""
    message = (
        f"Constrained decoding failed: {failure}; no answer matching the requested format can be given "
        f"(request id {request_id})."
    )
    return error_body(message, 500, getattr(failure, "param", None), "grammar_failed")


class APIError(Exception):
    """Base of every error answered with a status other than 500."""

    status = 400
    code: str | None = None

    def __init__(
        self,
        message: str,
        status: int | None = None,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.status = status or type(self).status
        self.param = param
        self.code = code or type(self).code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.status, self.param, self.code)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r}, status={self.status}, param={self.param!r})"


class MediaError(APIError):
    """A media item that cannot be fetched, read or decoded within the server's limits."""

    code = "invalid_media"

    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str | None = None):
        super().__init__(message, status, param, code)

    def with_param(self, param: str | None) -> MediaError:
        """Attach the request field (e.g. ``messages[0].content[1]``) if none is set yet."""
        if self.param is None and param is not None:
            self.param = param
        return self


class PromptError(APIError):
    """Messages that do not make a prompt this model accepts."""

    code = "invalid_prompt"

    def __init__(self, message: str, param: str = "messages", code: str | None = None):
        super().__init__(message, 400, param, code)


class _Retryable(APIError):
    status = 503

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message, code=code, headers={"Retry-After": RETRY_AFTER_SECONDS})


class QueueFull(_Retryable):
    """This worker's engine is busy and its queue is full."""

    code = "server_busy"

    def __init__(self, message: str = "The server is at capacity; retry shortly."):
        super().__init__(message)


class ServerBusy(_Retryable):
    """Every server-wide --max_concurrent slot is taken, or this worker is shutting down."""

    code = "server_busy"


class EngineUnavailable(_Retryable):
    """The model is still loading or failed to load."""

    code = "model_unavailable"
