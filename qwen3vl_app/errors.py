"""OpenAI's error format for every failure: {"error": {"message", "type", "param", "code"}}.

Handlers here cover our own `APIError`, marshmallow validation errors, werkzeug's HTTP
errors (404, 405, 413, malformed bodies) and, last, any unexpected exception -- which is
logged with its traceback but answered with a generic message and the request id, never
with exception text.
"""
from __future__ import annotations

import logging

from flask import Flask, g, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

log = logging.getLogger("qwen3vl.errors")

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


class APIError(Exception):
    def __init__(self, message: str, status: int = 400, param: str | None = None,
                 code: str | None = None, headers: dict | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.code = code
        self.headers = headers or {}

    def body(self) -> dict:
        return error_body(self.message, self.status, self.param, self.code)


def error_body(message: str, status: int, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {
        "message": message,
        "type": _TYPE_BY_STATUS.get(status, "server_error" if status >= 500 else "invalid_request_error"),
        "param": param,
        "code": code,
    }}


def error_response(message: str, status: int, param=None, code=None, headers=None):
    resp = jsonify(error_body(message, status, param, code))
    resp.status_code = status
    for k, v in (headers or {}).items():
        resp.headers[k] = v
    return resp


def first_validation_error(messages, path: str = "") -> tuple[str, str]:
    """marshmallow's nested {field: [msgs]} -> (dotted param, first message)."""
    if isinstance(messages, dict):
        for key, sub in messages.items():
            key = "body" if key == "_schema" else str(key)
            return first_validation_error(sub, f"{path}.{key}" if path else key)
    if isinstance(messages, list) and messages:
        first = messages[0]
        if isinstance(first, (dict, list)):
            return first_validation_error(first, path)
        return path or "body", str(first)
    return path or "body", str(messages)


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(e: APIError):
        return error_response(e.message, e.status, e.param, e.code, e.headers)

    from .media.errors import MediaError

    @app.errorhandler(MediaError)
    def _media_error(e: MediaError):
        return error_response(e.message, e.status, e.param, e.code)

    @app.errorhandler(ValidationError)
    def _validation(e: ValidationError):
        param, msg = first_validation_error(e.messages)
        return error_response(f"{param}: {msg}", 400, param, "invalid_value")

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        status = e.code or 500
        messages = {
            404: "No such endpoint.",
            405: "Method not allowed for this endpoint.",
            413: "Request body too large.",
        }
        msg = messages.get(status) or (e.description if status < 500 else "Internal server error.")
        return error_response(msg, status, None, e.name.lower().replace(" ", "_") if e.name else None)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        rid = getattr(g, "request_id", "-")
        log.exception("unhandled error in request %s", rid)
        return error_response(f"Internal server error (request id {rid}).", 500, None, "internal_error")
