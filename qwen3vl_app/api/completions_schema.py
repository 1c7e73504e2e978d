"""Request and response schemas of POST /v1/completions (OpenAI's legacy text completions).

Unknown fields are ignored and named in X-Ignored-Params; wrong types and out-of-range
values are a 400 that names the parameter; a loaded request is a frozen
`protocol.CompletionRequest`.
"""

from __future__ import annotations

from marshmallow import Schema, ValidationError, fields, post_load, validate, validates_schema

from ..model_constants import VOCAB_ROWS
from ..protocol import CompletionRequest
from .chat_schema import GenerationRequestSchema, UsageSchema, generation_fields
from .steering_fields import LoopGuardRequestFields, StoppedByFields

MAX_PROMPTS = 16


class PromptField(fields.Field):
    """A string, a list of strings, a list of token ids or a list of such lists ->
    a list of prompts (str or list[int])."""

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return [value]
        if isinstance(value, list) and value:
            if isinstance(value[0], (str, list)) and len(value) > MAX_PROMPTS:  # before walking them
                raise ValidationError(f"at most {MAX_PROMPTS} prompts per request")
            if all(isinstance(v, str) for v in value):
                return value
            if all(_is_id(v) for v in value):
                return [value]
            if all(isinstance(v, list) and all(_is_id(t) for t in v) for v in value):
                return value
            raise ValidationError(
                "must be a string, a list of strings, a list of token ids or a list of lists "
                f"of token ids (0..{VOCAB_ROWS - 1})"
            )
        raise ValidationError("must be a non-empty string or list")


def _is_id(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < VOCAB_ROWS


class CompletionRequestSchema(LoopGuardRequestFields, GenerationRequestSchema):
    prompt = PromptField(required=True)
    max_tokens = fields.Integer(
        load_default=16,
        allow_none=True,
        validate=validate.Range(min=1),
        metadata={"description": "default 16, as OpenAI's"},
    )
    best_of = fields.Integer(allow_none=True, validate=validate.Equal(1, error="only best_of=1 is supported"))
    echo = fields.Boolean(load_default=False, allow_none=True)
    logprobs = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=0, max=5),
        metadata={"description": "log-probabilities of the chosen token and this many most likely ones"},
    )

    @validates_schema
    def _consistency(self, data, **kwargs):
        if data.get("echo") and data.get("logprobs") is not None:
            raise ValidationError(
                "echo with logprobs is not supported (the prompt's log-probabilities are not computed)", "echo"
            )

    @post_load
    def _typed(self, data, **kwargs) -> CompletionRequest:
        top = data.get("logprobs")  # the legacy integer is the chat API's pair
        return CompletionRequest(
            **generation_fields(data),
            logprobs=top is not None,
            top_logprobs=top or 0,
            prompts=tuple(p if isinstance(p, str) else tuple(p) for p in data["prompt"]),
            echo=bool(data.get("echo")),
        )


class TextCompletionLogprobsSchema(Schema):
    tokens = fields.List(fields.String(), required=True)
    token_logprobs = fields.List(fields.Float(), required=True)
    top_logprobs = fields.List(fields.Dict(keys=fields.String(), values=fields.Float()), required=True, allow_none=True)
    text_offset = fields.List(fields.Integer(), required=True)


class TextCompletionChoiceSchema(StoppedByFields):
    text = fields.String(required=True)
    index = fields.Integer(required=True)
    logprobs = fields.Nested(TextCompletionLogprobsSchema, required=True, allow_none=True)
    finish_reason = fields.String(required=True, allow_none=True, validate=validate.OneOf(["stop", "length"]))


class CompletionSchema(Schema):
    """The reply, and (with `stream: true`) each `data:` event; a stream ends with
    `data: [DONE]`, after a usage event with empty `choices` when
    `stream_options.include_usage` is set."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["text_completion"]))
    created = fields.Integer(required=True)
    model = fields.String(required=True)
    choices = fields.List(fields.Nested(TextCompletionChoiceSchema), required=True)
    usage = fields.Nested(UsageSchema, allow_none=True)
