"""POST /v1/watches: a question about a camera, asked every `interval` seconds, answered
as Server-Sent Events each time the answer changes (qwen3vl_app/watches.py has the rules).

The first answer is asked before the response starts, so an unknown camera (404), an
offline one (503) or a bad response_format (400) is an ordinary error reply; later
failures are `watch.error` events.  Generation goes through serving by one function,
`ask_camera`, which builds the request exactly as POST /v1/chat/completions does.
"""

from __future__ import annotations

import math

from flask import Blueprint, Response, current_app, request, stream_with_context
from marshmallow import Schema, ValidationError, fields, validate, validates_schema

from .. import serving, watches
from ..errors import APIError
from ..media.cameras import CameraConfig, registry
from ..serving import Caller, collect_events
from . import transport
from .admission import admitted
from .auth import auth
from .chat_schema import ChatCompletionRequestSchema
from .common import json_body
from .routedoc import route_doc
from .transport import SSE_HEADERS

bp = Blueprint("watches", __name__)
DEFAULT_MAX_TOKENS = 64


class WatchRequestSchema(Schema):
    class Meta:
        unknown = "raise"

    camera = fields.String(required=True, validate=validate.Length(min=1, max=64))
    question = fields.String(required=True, validate=validate.Length(min=1, max=4000))
    interval = fields.Float(
        required=True,
        validate=validate.Range(min=0.01, max=86400),
        metadata={"description": "seconds between questions; at least the server's --watch-min-interval"},
    )
    duration = fields.Float(
        validate=validate.Range(min=0.01),
        metadata={"description": "seconds the watch runs; default and ceiling: --watch-max-duration"},
    )
    response_format = fields.Dict(
        metadata={"description": "as in chat completions; structured answers are compared as JSON"}
    )
    max_tokens = fields.Integer(validate=validate.Range(min=1, max=4096), load_default=DEFAULT_MAX_TOKENS)
    model = fields.String()

    @validates_schema
    def _finite(self, data, **kwargs):
        for name in ("interval", "duration"):
            if name in data and not math.isfinite(data[name]):
                raise ValidationError("must be a finite number", name)


class WatchAnswerSchema(Schema):
    """`watch.answer` event: the first answer, then each one that differs from the last."""

    object = fields.String(required=True, validate=validate.OneOf(["watch.answer"]))
    id = fields.String(required=True)
    camera = fields.String(required=True)
    sequence = fields.Integer(required=True)
    created = fields.Integer(required=True)
    captured_at = fields.Float(
        required=True, allow_none=True, metadata={"description": "capture time of the frame asked about (Unix s)"}
    )
    answer = fields.String(required=True)
    parsed = fields.Raw(metadata={"description": "the answer parsed as JSON (with a response_format)"})


class WatchEndSchema(Schema):
    object = fields.String(required=True, validate=validate.OneOf(["watch.end"]))
    id = fields.String(required=True)
    camera = fields.String(required=True)
    reason = fields.String(required=True, validate=validate.OneOf(["duration", "server_shutting_down"]))


def ask_camera(state, camera: str, question: str, opts: dict, caller: Caller, gone) -> watches.Answer:
    """The one call into serving: a chat request with the camera's latest frame and the
    question, built as api/chat.py builds one."""
    reader = registry(CameraConfig.from_settings(state.settings)).named(camera, "camera")
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": f"camera://{camera}"}},
                    {"type": "text", "text": question},
                ],
            }
        ],
        "temperature": 0,
        **opts,
    }
    req = ChatCompletionRequestSchema().load(body)
    gen = serving.start_chat(state, req, caller)
    latest = reader.latest()
    out = collect_events(gen.events, gone, caller.request_id)
    return watches.Answer(out.text, latest.ts if latest else None)


@bp.post("/v1/watches")
@route_doc(
    tag="cameras",
    summary="Watch a camera: the answer to a question each time it changes (SSE)",
    operation_id="createWatch",
    request=WatchRequestSchema,
    request_example={"camera": "door", "question": "Is a person at the door? Answer yes or no.", "interval": 5},
    responses={200: ("an SSE stream of WatchAnswer events, a WatchEnd event and `[DONE]`", WatchAnswerSchema)},
    stream="a WatchAnswer, an ErrorResponse-shaped `watch.error` (the watch goes on), or last a WatchEnd; "
    "then `[DONE]`; `: ping` comments between",
    events=(WatchEndSchema,),
    errors=(400, 404, 413, 415, 429, 503),
)
@auth.login_required
@admitted  # the watch holds a --max_concurrent admission ticket for its whole life
def create_watch():
    state = current_app.extensions["qwen3vl"]
    settings = state.settings
    spec = WatchRequestSchema().load(json_body(1000))
    interval = spec["interval"]
    if interval < settings.watch_min_interval:
        raise APIError(
            f"interval must be at least {settings.watch_min_interval:g} seconds on this server (--watch-min-interval)",
            400,
            "interval",
            "invalid_value",
        )
    duration = min(spec.get("duration") or settings.watch_max_duration, settings.watch_max_duration)
    opts: dict = {"max_tokens": spec["max_tokens"]}
    for name in ("response_format", "model"):
        if name in spec:
            opts[name] = spec[name]
    caller = transport.caller()
    release = watches.limits(settings.max_watches, settings.max_watches_per_key).acquire(caller.key_digest)
    try:
        environ = request.environ

        def gone() -> bool:
            return transport.client_gone(environ)

        def ask() -> watches.Answer:
            return ask_camera(state, spec["camera"], spec["question"], opts, caller, gone)

        first = ask()
        watch = watches.Watch(
            spec["camera"], interval, duration, "response_format" in opts, keepalive=settings.sse_keepalive
        )
        text = watches.run(watch, ask, first, gone, lambda: state.runner.draining)
        resp = Response(stream_with_context(text), mimetype="text/event-stream", headers=SSE_HEADERS)
    except BaseException:
        release()
        raise
    resp.call_on_close(release)
    return resp
