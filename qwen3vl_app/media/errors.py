"""The one exception the media and preprocessing code raises for bad input.

`MediaError` carries what the HTTP layer needs for an OpenAI-style error body:
a message written for the caller, the request field it concerns (`param`), an HTTP
status and a short machine-readable `code`.  Messages name the problem only: never file
contents, paths outside what the caller sent, addresses of objects or stack traces.
"""
from __future__ import annotations


class MediaError(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, code: str = "invalid_media"):
        super().__init__(message)
        self.message = message
        self.param = param
        self.status = status
        self.code = code

    def with_param(self, param: str | None) -> "MediaError":
        """Attach the request field (e.g. ``messages[0].content[1]``) if none is set yet."""
        if self.param is None and param is not None:
            self.param = param
        return self

    def to_openai(self) -> dict:
        return {
            "error": {
                "message": self.message,
                "type": "invalid_request_error",
                "param": self.param,
                "code": self.code,
            }
        }

    def __repr__(self) -> str:
        return f"MediaError({self.message!r}, param={self.param!r}, status={self.status})"
