"""Small pieces the blueprints share: strict JSON bodies and the error body's schema."""

from __future__ import annotations

import re

from flask import request
from marshmallow import Schema, fields

from ..errors import APIError


def json_body() -> dict:
    if not request.is_json:
        raise APIError(
            "Send the request body as JSON with 'Content-Type: application/json'.", 415, None, "unsupported_media_type"
        )
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON parser goes (was a 500; found by fuzzing)
        body = None
    if body is None:
        raise APIError("The request body is not valid JSON.", 400, None, "invalid_json")
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.", 400, None, "invalid_json")
    if _SURROGATE_ESCAPE.search(request.get_data(cache=True)) and _has_lone_surrogate(body):
        raise APIError(
            "The request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not valid Unicode text.",
            400,
            None,
            "invalid_json",
        )
    return body


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F]")


def _has_lone_surrogate(value) -> bool:
    """True when a string anywhere in the decoded JSON cannot be UTF-8 (a lone surrogate:
    the tokenizer would fail on it with a 500).  Iterative: depth is not bounded here."""
    stack = [value]
    while stack:
        v = stack.pop()
        if isinstance(v, str):
            try:
                v.encode("utf-8")
            except UnicodeEncodeError:
                return True
        elif isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, list):
            stack.extend(v)
    return False


class ErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class ErrorResponseSchema(Schema):
    """OpenAI's error body, the answer to every failure (qwen3vl_app/errors.py)."""

    error = fields.Nested(ErrorDetailSchema, required=True)
