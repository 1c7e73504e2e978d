"""POST /v1/media/describe: the old service's upload endpoint, kept for its users.

multipart/form-data fields:
  file    (required) an image or a video; the bytes decide which, not the name
  prompt  (optional) instruction; default DEFAULT_PROMPT
  stream  (optional) "true"/"1"/"yes" for Server-Sent Events
  max_tokens, temperature (optional) as in chat completions

Reply (non-stream), the old service's shape plus `usage`:
  {"status": "success", "description": "...",
   "metadata": {"filename", "media_type", "prompt", "processing_time_seconds", "model", "model_dir"},
   "usage": {"prompt_tokens", "completion_tokens", "total_tokens"}}

Stream: `data: {"status": "streaming", "delta": "..."}` events, then one
`data: {"status": "success", "description": <full text>, "metadata": {...}, "usage": {...}}`
and `data: [DONE]`.  Errors before the stream starts are OpenAI-format JSON errors.
"""

from __future__ import annotations

import time

from flask import Blueprint, current_app, jsonify, request

from .. import serving
from ..admission import admitted
from ..auth import auth
from ..errors import APIError, MediaError
from ..media.pipeline import MediaConfig, upload_to_input
from ..replies import sse, usage
from . import transport
from .media_schema import MediaDescribeFormSchema, MediaDescriptionSchema, MediaStreamDeltaSchema
from .models import check_served
from .routedoc import route_doc

bp = Blueprint("media", __name__)
DEFAULT_PROMPT = "Describe this {kind} in detail."
_TRUE = ("1", "true", "yes", "on")


def _form_number(name: str, kind, low, high):
    raw = request.form.get(name)
    if raw is None or raw.strip() == "":
        return None
    try:
        value = kind(raw)
    except ValueError:
        raise APIError(f"{name} must be a number", 400, name, "invalid_value") from None
    if not (low <= value <= high):
        raise APIError(f"{name} must be between {low} and {high}", 400, name, "invalid_value")
    return value


@bp.post("/v1/media/describe")
@route_doc(
    tag="media",
    summary="Describe an uploaded image or video (the old service's endpoint)",
    operation_id="describeMedia",
    request=MediaDescribeFormSchema,
    request_type="multipart/form-data",
    responses={
        200: (
            "the description, or with `stream` an SSE stream of MediaStreamDelta "
            "events, a final MediaDescription event and `data: [DONE]`",
            MediaDescriptionSchema,
        )
    },
    stream="a MediaStreamDelta or, last, a MediaDescription as JSON (an ErrorResponse "
    "if the engine fails mid-stream), then `[DONE]`",
    events=(MediaStreamDeltaSchema,),
    errors=(400, 404, 408, 413, 415, 500, 503),
)
@auth.login_required
@admitted  # a --max_concurrent admission ticket for the whole response, or 503 at once
def describe():
    started = time.monotonic()
    state = current_app.extensions["qwen3vl"]
    settings = state.settings
    if not request.mimetype or not request.mimetype.startswith("multipart/form-data"):
        raise APIError(
            "Send the media as multipart/form-data with a 'file' field.", 415, "file", "unsupported_media_type"
        )
    model_name = check_served(state, request.form.get("model"))
    upload = request.files.get("file")
    if upload is None:
        raise APIError("The form has no 'file' field.", 400, "file", "missing_file")
    cap = MediaConfig.from_settings(settings).policy.max_bytes
    data = upload.stream.read(cap + 1)
    if len(data) > cap:
        raise MediaError(f"upload is larger than the {cap / 1048576:g} MiB limit", "file", 413, "media_too_large")
    filename = upload.filename or "upload"
    stream = (request.form.get("stream") or "").strip().lower() in _TRUE
    req = {
        "max_tokens": _form_number("max_tokens", int, 1, 1 << 20),
        "temperature": _form_number("temperature", float, 0.0, 2.0),
    }

    engine = state.runner.wait_ready()
    config = MediaConfig.from_settings(settings, engine.limits)
    blob, vision = upload_to_input(data, filename, config)
    del data
    prompt_text = (request.form.get("prompt") or "").strip() or DEFAULT_PROMPT.format(kind=vision.kind)
    messages = [{"role": "user", "content": [{"type": vision.kind}, {"type": "text", "text": prompt_text}]}]
    gen = serving.start(state, engine, messages, [vision], req, [], stream, transport.caller())

    def metadata():
        return {
            "filename": blob.name,
            "media_type": vision.kind,
            "prompt": prompt_text,
            "processing_time_seconds": round(time.monotonic() - started, 3),
            "model": model_name,
            "model_dir": str(settings.model_dir),
        }

    if stream:
        return transport.sse_response(gen, DescribeStreamEncoder(metadata))
    out = transport.collect(gen)
    return jsonify(
        {
            "status": "success",
            "description": out.text,
            "metadata": metadata(),
            "usage": usage(*serving.usage_counts(out.finish)),
        }
    )


class DescribeStreamEncoder:
    """The old service's stream: `{"status": "streaming", "delta"}` events, then one
    `{"status": "success", "description", "finish_reason", "metadata", "usage"}`."""

    def __init__(self, metadata):
        self.metadata = metadata
        self.text: list[str] = []

    def start(self):
        return ()

    def delta(self, ev: serving.Delta):
        self.text.append(ev.text)
        if ev.text:
            yield sse({"status": "streaming", "delta": ev.text})

    def finish(self, ev: serving.Finish):
        yield sse(
            {
                "status": "success",
                "description": "".join(self.text),
                "finish_reason": ev.reason,
                "metadata": self.metadata(),
                "usage": usage(*serving.usage_counts(ev)),
            }
        )
