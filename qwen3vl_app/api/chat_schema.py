"""Request schema of POST /v1/chat/completions (OpenAI Chat Completions).

Unknown fields are ignored, as OpenAI does; wrong types and out-of-range values are a 400
that names the parameter.
"""
from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate, validates_schema

ROLES = ("system", "developer", "user", "assistant")
PART_TYPES = ("text", "image_url", "video_url", "image", "video")


class _Loose(Schema):
    class Meta:
        unknown = EXCLUDE


class MediaURLSchema(_Loose):
    url = fields.String(required=True, validate=validate.Length(min=1))
    detail = fields.String()


class MediaURL(fields.Field):
    """`{"url": ...}` or a bare URL string (some clients send that)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            value = {"url": value}
        if not isinstance(value, dict):
            raise ValidationError("must be an object with a 'url'")
        return MediaURLSchema().load(value)


class ContentPartSchema(_Loose):
    type = fields.String(required=True, validate=validate.OneOf(PART_TYPES))
    text = fields.String()
    image_url = MediaURL()
    video_url = MediaURL()
    image = fields.String()  # qwen-vl-utils style: {"type": "image", "image": url}
    video = fields.String()
    # Per-part vision budget (clamped to the server's ceilings, never trusted as given).
    min_pixels = fields.Integer(validate=validate.Range(min=1))
    max_pixels = fields.Integer(validate=validate.Range(min=1))
    fps = fields.Float(validate=validate.Range(min=0.01, max=60))
    max_frames = fields.Integer(validate=validate.Range(min=2))

    @validates_schema
    def _payload(self, data, **kwargs):
        t = data["type"]
        if t == "text" and "text" not in data:
            raise ValidationError("a text part needs 'text'", "text")
        if t in ("image_url", "video_url") and t not in data:
            raise ValidationError(f"an {t} part needs '{t}'", t)
        if t in ("image", "video") and t not in data:
            raise ValidationError(f"an {t} part needs '{t}'", t)


class Content(fields.Field):
    """A string, a list of parts, or null (assistant turns)."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value is None or isinstance(value, str):
            return value
        if isinstance(value, list):
            return ContentPartSchema(many=True).load(value)
        raise ValidationError("must be a string or a list of content parts")


class MessageSchema(_Loose):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = Content(required=True, allow_none=True)
    name = fields.String()


class StopField(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if value is None:
            return []
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and all(isinstance(s, str) for s in value):
            if len(value) > 4:
                raise ValidationError("at most 4 stop sequences")
            return value
        raise ValidationError("must be a string or a list of up to 4 strings")


class StreamOptionsSchema(_Loose):
    include_usage = fields.Boolean(load_default=False)


class ChatCompletionRequestSchema(_Loose):
    model = fields.String(load_default=None, allow_none=True)
    messages = fields.List(fields.Nested(MessageSchema), required=True, validate=validate.Length(min=1))
    max_tokens = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    max_completion_tokens = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1, min_inclusive=False))
    top_k = fields.Integer(allow_none=True, validate=validate.Range(min=-1))
    repetition_penalty = fields.Float(allow_none=True, validate=validate.Range(min=0, max=10, min_inclusive=False))
    presence_penalty = fields.Float(allow_none=True, validate=validate.Range(min=-2, max=2))
    frequency_penalty = fields.Float(allow_none=True, validate=validate.Range(min=-2, max=2))
    seed = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=2**63 - 1))
    stop = StopField(load_default=list, allow_none=True)
    n = fields.Integer(allow_none=True, validate=validate.Equal(1, error="only n=1 is supported"))
    stream = fields.Boolean(load_default=False, allow_none=True)
    stream_options = fields.Nested(StreamOptionsSchema, allow_none=True)
    logprobs = fields.Boolean(load_default=False, allow_none=True)
    top_logprobs = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=20))
    user = fields.String(allow_none=True)
    prompt_cache_key = fields.String(allow_none=True, validate=validate.Length(max=1024), metadata={
        "description": "groups requests that share a prefix; a proxy may route on it (deploy/nginx-affinity.conf)"})
    # vLLM's extension: keep generating past end tokens until max_tokens (benchmarks fix output lengths)
    ignore_eos = fields.Boolean(load_default=False, allow_none=True)

    @validates_schema
    def _consistency(self, data, **kwargs):
        from flask import current_app, has_app_context

        from .models import check_served

        if has_app_context() and "qwen3vl" in current_app.extensions:  # 404 for a model not served here
            data["model"] = check_served(current_app.extensions["qwen3vl"], data.get("model"))
        if data.get("top_logprobs") and not data.get("logprobs"):
            raise ValidationError("top_logprobs requires logprobs: true", "top_logprobs")


# --- responses (documentation and contract tests; the server builds them in streaming.py) ---

FINISH_REASONS = ("stop", "length")


class PromptTokensDetailsSchema(Schema):
    cached_tokens = fields.Integer(required=True, metadata={
        "description": "prompt tokens whose KV was reused from an earlier request of the same worker"})


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)
    prompt_tokens_details = fields.Nested(PromptTokensDetailsSchema, required=True)


class TopLogprobSchema(Schema):
    token = fields.String(required=True)
    logprob = fields.Float(required=True)
    bytes = fields.List(fields.Integer(), required=True, allow_none=True)


class TokenLogprobSchema(TopLogprobSchema):
    top_logprobs = fields.List(fields.Nested(TopLogprobSchema), required=True)


class ChoiceLogprobsSchema(Schema):
    content = fields.List(fields.Nested(TokenLogprobSchema), required=True, allow_none=True)


class AssistantMessageSchema(Schema):
    role = fields.String(required=True, validate=validate.OneOf(["assistant"]))
    content = fields.String(required=True, allow_none=True)


class CompletionChoiceSchema(Schema):
    index = fields.Integer(required=True)
    message = fields.Nested(AssistantMessageSchema, required=True)
    logprobs = fields.Nested(ChoiceLogprobsSchema, required=True, allow_none=True)
    finish_reason = fields.String(required=True, validate=validate.OneOf(FINISH_REASONS))


class ChatCompletionSchema(Schema):
    """Reply of a non-stream request."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["chat.completion"]))
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(CompletionChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, required=True)


class ChunkDeltaSchema(Schema):
    role = fields.String(validate=validate.OneOf(["assistant"]))
    content = fields.String()


class ChunkChoiceSchema(Schema):
    index = fields.Integer(required=True)
    delta = fields.Nested(ChunkDeltaSchema, required=True)
    logprobs = fields.Nested(ChoiceLogprobsSchema, required=True, allow_none=True)
    finish_reason = fields.String(required=True, allow_none=True, validate=validate.OneOf(FINISH_REASONS))


class ChatCompletionChunkSchema(Schema):
    """One `data:` event of a stream (`stream: true`); the stream ends with `data: [DONE]`.
    With `stream_options.include_usage` a last chunk has empty `choices` and `usage`."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["chat.completion.chunk"]))
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(ChunkChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema)
