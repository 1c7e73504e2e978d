"""One error path: every failure leaves as OpenAI's error body.

`APIError` and its subclasses (qwen3vl_app/errors.py) carry their own status, param and
code; marshmallow validation errors name the first bad field; werkzeug's HTTP errors (404,
405, 413, malformed bodies) keep their status.  A grammar that failed part-way through a
generation (`GrammarFailed`, raised by the engine side) is a 500 `grammar_failed` that says
so -- in a response, or as a stream's error event (`grammar_failed_body`).  Anything else
is a bug: logged with its traceback, answered with a generic message and the request id,
never exception text.
"""

from __future__ import annotations

import logging

from flask import Flask, Response, g, jsonify
from marshmallow import ValidationError
from werkzeug.exceptions import HTTPException

from ..engine.constraints import GrammarFailed
from ..errors import APIError, error_body, grammar_failed_body

log = logging.getLogger("qwen3vl.errors")


def error_response(
    message: str, status: int, param: str | None = None, code: str | None = None, headers: dict[str, str] | None = None
) -> Response:
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


_HTTP_MESSAGES = {
    404: "No such endpoint.",
    405: "Method not allowed for this endpoint.",
    413: "Request body too large.",
}


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(APIError)
    def _api_error(e: APIError):
        return error_response(e.message, e.status, e.param, e.code, e.headers)

    @app.errorhandler(ValidationError)
    def _validation(e: ValidationError):
        param, msg = first_validation_error(e.messages)
        return error_response(f"{param}: {msg}", 400, param, "invalid_value")

    @app.errorhandler(GrammarFailed)
    def _grammar_failed(e: GrammarFailed):
        rid = g.get("request_id", "-")
        log.warning("request %s: %s", rid, e)
        resp = jsonify(grammar_failed_body(e, rid))
        resp.status_code = 500
        return resp

    @app.errorhandler(HTTPException)
    def _http(e: HTTPException):
        status = e.code or 500
        msg = _HTTP_MESSAGES.get(status) or (
            e.description if status < 500 and e.description else "Internal server error."
        )
        return error_response(msg, status, None, e.name.lower().replace(" ", "_") if e.name else None)

    @app.errorhandler(Exception)
    def _unexpected(e: Exception):
        rid = g.get("request_id", "-")
        log.exception("unhandled error in request %s", rid)
        return error_response(f"Internal server error (request id {rid}).", 500, None, "internal_error")
