"""Small pieces every blueprint uses: strict JSON bodies and mapping of domain errors to 4xx/503."""
from __future__ import annotations

import logging
import re

from flask import g, request
from marshmallow import Schema, fields

from ..engine.runner import EngineUnavailable, QueueFull
from ..errors import APIError, error_body
from ..processing.prompt import PromptError
from ..streaming import sse

RETRY_AFTER_SECONDS = "2"
log = logging.getLogger("qwen3vl.errors")


def json_body() -> dict:
    if not request.is_json:
        raise APIError("Send the request body as JSON with 'Content-Type: application/json'.", 415,
                       None, "unsupported_media_type")
    try:
        body = request.get_json(silent=True)
    except RecursionError:  # nested deeper than the JSON parser goes (was a 500; found by fuzzing)
        body = None
    if body is None:
        raise APIError("The request body is not valid JSON.", 400, None, "invalid_json")
    if not isinstance(body, dict):
        raise APIError("The request body must be a JSON object.", 400, None, "invalid_json")
    if _SURROGATE_ESCAPE.search(request.get_data(cache=True)) and _has_lone_surrogate(body):
        raise APIError("The request body has a lone UTF-16 surrogate escape (\\ud800-\\udfff), which is not "
                       "valid Unicode text.", 400, None, "invalid_json")
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


def run_guarded(fn, *args):
    """Call fn, turning the domain's own failures into OpenAI-format API errors."""
    try:
        return fn(*args)
    except PromptError as e:
        raise APIError(str(e), 400, e.param, e.code) from None
    except QueueFull:
        raise APIError("The server is at capacity; retry shortly.", 503, None, "server_busy",
                       {"Retry-After": RETRY_AFTER_SECONDS}) from None
    except EngineUnavailable as e:
        raise APIError(str(e), 503, None, "model_unavailable", {"Retry-After": RETRY_AFTER_SECONDS}) from None


def resolve_media_or_400(state, media, limits, messages):
    """Fetch and preprocess every media item of the conversation, in order; a bad one is a
    4xx naming its part.  Each template part of `messages` gets the kind the bytes turned
    out to be (a video sent through image_url becomes a video placeholder)."""
    if not media:
        return []
    from ..media.pipeline import MediaConfig, resolve_media, retag_parts

    vision = resolve_media(media, MediaConfig.from_settings(state.settings, limits))
    retag_parts(messages, vision)
    return vision


class ErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class ErrorResponseSchema(Schema):
    """OpenAI's error body, the answer to every failure (qwen3vl_app/errors.py)."""

    error = fields.Nested(ErrorDetailSchema, required=True)


def stream_failure_event() -> str:
    """For a failure after an SSE stream has started (status and headers are sent): log it
    with the request id and return one OpenAI-format error event; the caller then ends the
    stream without `[DONE]` (the openai client raises an APIError on such an event)."""
    rid = g.get("request_id", "-")
    log.exception("generation failed in request %s", rid)
    return sse(error_body(f"Internal server error (request id {rid}).", 500, None, "internal_error"))
