"""Small pieces the blueprints share: strict JSON bodies, the early bounds of a request's
size, and the error body's schema.

A body is parsed, checked and translated in one go only while that is cheap.  A JSON
body over 1 MiB is parsed by the standard library's pure-Python scanner in short steps,
yielding to the other greenlets every few thousand values (in the request's greenlet: a
thread would fight the hub for the GIL), with a budget of values: a body with more values
than any prompt this server takes could need is refused as soon as the budget runs out,
before the rest is parsed.  Bodies over 64 KiB are validated (marshmallow) and translated
off the hub too (`prepare`).  What a prompt's length alone decides -- more messages, input
items or token ids than the prompt may have tokens -- is refused before any of that walks
them (`check_counts`).
"""

from __future__ import annotations

import json
import json.decoder
import json.scanner
import re
from typing import Any

from flask import request
from marshmallow import Schema, fields

from ..errors import APIError
from ..prompt.build import off_hub
from ..prompt.template import context_overflow, prompt_limit

# A body this small is parsed on the hub: 25 ms at most, even for the densest JSON
# (a million-value body takes a second of C parsing, which no thread can interleave).
INLINE_JSON_BYTES = 1 << 20
# Values the counted parse handles between two yields to the hub (a few milliseconds).
YIELD_EVERY = 2048
# Bodies larger than this are validated and translated off the hub (`prepare`).
INLINE_CHECK_BYTES = 64 * 1024
# Prompt limit assumed while the engine (which knows its own) is still loading: Qwen3-VL's
# longest context.
UNKNOWN_LIMIT = 262_144
# A request needs at most this many JSON values per prompt token, plus a fixed allowance:
# 16 prompts of token ids (legacy completions), and room for sampling fields and tools.
VALUES_PER_TOKEN = 16
VALUES_SLACK = 65_536


def json_body(max_values: int | None = None) -> dict:
    """The request's JSON object.  Bodies over INLINE_JSON_BYTES are parsed in steps that
    let the hub run and, with `max_values`, refused (413 too_many_values) once they hold
    more values."""
    if not request.is_json:
        raise APIError(
            "Send the request body as JSON with 'Content-Type: application/json'.", 415, None, "unsupported_media_type"
        )
    data = request.get_data(cache=True)
    if len(data) > INLINE_JSON_BYTES:
        body = _parse_counted(data, max_values, _yield_to_hub())
    else:
        try:
            body = request.get_json(silent=True)
        except RecursionError:  # nested deeper than the JSON parser goes (was a 500; found by fuzzing)
            body = None
    if body is _TOO_MANY:
        raise APIError(
            f"The request body holds more than {max_values} JSON values; no request this server can serve "
            "needs that many (it is refused before the rest is read).",
            413,
            None,
            "too_many_values",
        )
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
_TOO_MANY = object()


class _OutOfValues(Exception):
    pass


class _CountingDecoder(json.JSONDecoder):
    """json.loads's own rules, by the pure-Python scanner, counting every array element
    and object value against a budget, and calling `pause` every YIELD_EVERY values."""

    def __init__(self, budget: int | None, pause=None):
        super().__init__()
        self.left = budget
        self.seen = 0

        def counted(scan_once):
            def scan(s, idx):
                self.seen += 1
                if pause is not None and self.seen % YIELD_EVERY == 0:
                    pause()
                if self.left is not None:
                    self.left -= 1
                    if self.left < 0:
                        raise _OutOfValues
                return scan_once(s, idx)

            return scan

        # The stdlib's pure-Python parts (not in typeshed): the object, the array, the scanner.
        self.parse_object = lambda s_end, strict, scan_once, *rest: json.decoder.JSONObject(  # type: ignore[attr-defined]
            s_end, strict, counted(scan_once), *rest
        )
        self.parse_array = lambda s_end, scan_once: json.decoder.JSONArray(s_end, counted(scan_once))  # type: ignore[attr-defined]
        self.scan_once = json.scanner.py_make_scanner(self)  # type: ignore[attr-defined]


def _parse_counted(data: bytes, max_values: int | None, pause=None):
    """The parsed body, None when it is not JSON, or _TOO_MANY."""
    try:
        text = data.decode(json.detect_encoding(data), "surrogatepass")
        return _CountingDecoder(max_values, pause).decode(text)
    except _OutOfValues:
        return _TOO_MANY
    except (ValueError, RecursionError):  # not JSON (UnicodeDecodeError and JSONDecodeError are ValueErrors)
        return None


def _yield_to_hub():
    """A pause in a gevent worker (None elsewhere).  A timed one: sleep(0) runs the ready
    greenlets but need not let the loop poll for I/O, so /health kept waiting."""
    try:
        from gevent import monkey, sleep
    except ImportError:
        return None
    return (lambda: sleep(0.001)) if monkey.is_module_patched("socket") else None


def request_limit(state) -> int | None:
    """The prompt limit in tokens once this worker's engine is loaded (None before)."""
    engine = getattr(state.runner, "engine", None)
    return None if engine is None else prompt_limit(engine.limits, state.settings.max_prompt_tokens)


def value_budget(limit: int | None) -> int:
    """The most JSON values a request body may hold, given the prompt limit."""
    return VALUES_PER_TOKEN * (limit or UNKNOWN_LIMIT) + VALUES_SLACK


def check_message_count(count: int, limit: int | None, what: str = "messages") -> None:
    """More messages (or input items) than the prompt may have tokens: every one renders
    at least one token (`<|im_start|>`, a tool call's tags), so this is an overflow known
    without rendering anything."""
    if limit is not None and count > limit:
        raise context_overflow(limit, count, "messages", f"{count} {what} of one token or more each")


def load_messages_body(state, schema: Schema) -> tuple[dict, Any]:
    """The body of a route that takes chat `messages`, and what `schema` loads from it: its
    JSON values and its message count are checked against this worker's prompt limit
    before anything walks them."""
    limit = request_limit(state)
    body = json_body(value_budget(limit))
    if isinstance(body.get("messages"), list):
        check_message_count(len(body["messages"]), limit)
    return body, prepare(schema.load, body)


def prepare(fn, *args):
    """fn(*args) -- validating or translating the body -- off the hub when the body is large."""
    if len(request.get_data(cache=True)) > INLINE_CHECK_BYTES:
        return off_hub(fn, *args, pool="request")
    return fn(*args)


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
