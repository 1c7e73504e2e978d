"""Request and reply schemas of POST /v1/chat/completions (OpenAI Chat Completions).

Requests: unknown fields are ignored, as OpenAI does; wrong types and out-of-range values
are a 400 that names the parameter; a loaded request is a frozen `protocol.ChatRequest`.
Replies: `replies.py` builds every reply object by dumping it through these schemas, the
same ones the OpenAPI document shows, so a field the contract does not name never leaves
the server.
"""

from __future__ import annotations

import re
from typing import cast

from marshmallow import EXCLUDE, Schema, ValidationError, fields, post_load, validate, validates_schema

from ..engine.speculative import MAX_DRAFT
from ..model_constants import VOCAB_ROWS
from ..protocol import SAMPLING_FIELDS, ChatRequest, ToolChoice
from .grounding_schema import DetectionSchema, GroundingField
from .mm_schema import check_clip, mm_processor_kwargs_field
from .steering_fields import ReasoningReplyFields, StoppedByFields, ThinkingMessageFields, ThinkingRequestFields

ROLES = ("system", "developer", "user", "assistant", "tool")
PART_TYPES = ("text", "image_url", "video_url", "image", "video")


class _Loose(Schema):
    class Meta:
        unknown = EXCLUDE


class MediaURLSchema(_Loose):
    url = fields.String(required=True, validate=validate.Length(min=1))
    detail = fields.String(
        validate=validate.OneOf(["low", "high", "auto"]),
        metadata={
            "description": "image budget: low = at most 512x512 pixels (<= 256 vision tokens); high and auto = "
            "the server's budget"
        },
    )


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
    duration = fields.Float(
        validate=validate.Range(min=0.1, max=3600),
        metadata={"description": "seconds of a camera://NAME clip (video_url); capped by the server"},
    )
    total_pixels = fields.Integer(validate=validate.Range(min=1))
    video_start = fields.Float(validate=validate.Range(min=0))
    video_end = fields.Float(validate=validate.Range(min=0, min_inclusive=False))

    @validates_schema
    def _payload(self, data, **kwargs):
        check_clip(data)
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


class FunctionCallSchema(_Loose):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    arguments = fields.String(required=True)  # JSON text, as the API returned it


class ToolCallSchema(_Loose):
    id = fields.String(load_default=None)
    type = fields.String(load_default="function", validate=validate.OneOf(["function"]))
    function = fields.Nested(FunctionCallSchema, required=True)


class MessageSchema(ThinkingMessageFields, _Loose):
    role = fields.String(required=True, validate=validate.OneOf(ROLES))
    content = Content(load_default=None, allow_none=True)
    name = fields.String()
    tool_calls = fields.List(fields.Nested(ToolCallSchema), allow_none=True)
    tool_call_id = fields.String()

    @validates_schema
    def _role_fields(self, data, **kwargs):
        role = data["role"]
        if data.get("tool_calls") and role != "assistant":
            raise ValidationError("only assistant messages carry tool_calls", "tool_calls")
        if role == "tool" and not data.get("tool_call_id"):
            raise ValidationError("a tool message needs the 'tool_call_id' it answers", "tool_call_id")
        if data.get("content") is None and not (role == "assistant" and data.get("tool_calls")):
            raise ValidationError("Missing data for required field.", "content")


class FullMatch(validate.Regexp):
    """validate.Regexp matched against the whole value: marshmallow's uses re.match, and
    `$` also matches before a final newline, which let "get_weather\n" through.  The
    pattern stays one the OpenAPI document can carry."""

    def __call__(self, value):
        regex = cast("re.Pattern[str]", self.regex)  # compiled from a str pattern
        if not isinstance(value, str) or regex.fullmatch(value) is None:
            raise ValidationError(self._format_error(value))
        return value


FUNCTION_NAME = FullMatch(r"^[A-Za-z0-9_-]{1,64}$", error="must be 1-64 letters, digits, '_' or '-'")
MAX_SCHEMA_DEPTH = 64  # nesting of a tool's parameters (objects and arrays)


def depth_at_most(limit: int):
    """A validator: the value nests objects and arrays at most `limit` deep (checked
    without recursion).  The chat template writes tools with a recursive JSON encoder,
    which failed (500) on parameters nested some 950 levels deep."""

    def check(value) -> None:
        stack = [(value, 1)]
        while stack:
            v, depth = stack.pop()
            if isinstance(v, (dict, list)):
                if depth > limit:
                    raise ValidationError(f"nested more than {limit} levels deep")
                stack.extend((c, depth + 1) for c in (v.values() if isinstance(v, dict) else v))

    return check


class FunctionSchema(_Loose):
    name = fields.String(required=True, validate=FUNCTION_NAME)
    description = fields.String(allow_none=True)
    parameters = fields.Dict(
        allow_none=True,
        validate=depth_at_most(MAX_SCHEMA_DEPTH),
        metadata={"description": f"JSON Schema of the arguments (nested at most {MAX_SCHEMA_DEPTH} levels)"},
    )
    strict = fields.Boolean(allow_none=True)


class ToolSchema(_Loose):
    type = fields.String(required=True, validate=validate.OneOf(["function"]))
    function = fields.Nested(FunctionSchema, required=True)


class ToolChoiceField(fields.Field):
    """`none` | `auto` | `required` | `{"type": "function", "function": {"name": ...}}`,
    loaded as a `structured.ToolChoice`."""

    def _deserialize(self, value, attr, data, **kwargs):
        if value in ("none", "auto", "required"):
            return ToolChoice(value)
        if isinstance(value, dict) and value.get("type") == "function":
            name = (value.get("function") or {}).get("name") if isinstance(value.get("function"), dict) else None
            if isinstance(name, str) and name:
                return ToolChoice("function", name)
        raise ValidationError("must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}")


class JSONSchemaFormatSchema(_Loose):
    name = fields.String(required=True, validate=validate.Length(min=1, max=64))
    description = fields.String(allow_none=True)
    schema = fields.Dict(load_default=dict, allow_none=True)
    strict = fields.Boolean(allow_none=True)


class ResponseFormatSchema(_Loose):
    type = fields.String(required=True, validate=validate.OneOf(["text", "json_object", "json_schema"]))
    json_schema = fields.Nested(JSONSchemaFormatSchema)

    @validates_schema
    def _schema_given(self, data, **kwargs):
        if data["type"] == "json_schema" and "json_schema" not in data:
            raise ValidationError("a json_schema response format needs 'json_schema'", "json_schema")


_TOKEN_ID = re.compile(r"[0-9]{1,10}")  # ASCII only, and short enough for int()


class LogitBias(fields.Field):
    """`{"<token id>": bias}` with bias in -100..100 -> `{id: bias}`.  Ids are ASCII digits
    ("١٢" and "²" are digits to str.isdigit, not token ids), at most 300 of them."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object mapping token ids to a bias")
        if len(value) > 300:  # before walking them
            raise ValidationError("at most 300 tokens")
        out = {}
        for key, bias in value.items():
            if not (_TOKEN_ID.fullmatch(key) and int(key) < VOCAB_ROWS):
                raise ValidationError(f"invalid token id {key[:20]!r} (0..{VOCAB_ROWS - 1})")
            if isinstance(bias, bool) or not isinstance(bias, (int, float)) or not -100 <= bias <= 100:
                raise ValidationError(f"the bias of token {key} must be a number in -100..100")
            out[int(key)] = float(bias)
        return out


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


class GenerationRequestSchema(_Loose):
    """What the chat and the legacy completions requests share: the model, sampling, stop
    strings and streaming."""

    model = fields.String(load_default=None, allow_none=True)
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
    user = fields.String(allow_none=True)
    cache_salt = fields.String(
        allow_none=True,
        validate=validate.Length(min=1, max=1024),
        metadata={
            "description": "extension (vLLM's): cached work (prompt prefix, images) is reused only between "
            "requests with the same salt, on top of the API-key scope"
        },
    )
    logit_bias = LogitBias(allow_none=True)
    speculative_tokens = fields.Integer(
        allow_none=True,
        validate=validate.Range(min=0, max=MAX_DRAFT),
        metadata={
            "description": "extension: speculative decoding for this request, tokens drafted per step from the "
            "prompt and the text so far (0: off; default: the server's --speculative-tokens). Never changes "
            "the output, only how many tokens one engine step yields"
        },
    )


def generation_fields(data: dict) -> dict:
    """A loaded GenerationRequestSchema's fields as `protocol.GenerationRequest` spells them."""
    return {
        "model": data.get("model"),
        "max_tokens": data.get("max_completion_tokens") or data.get("max_tokens"),
        **{k: data.get(k) for k in SAMPLING_FIELDS},
        "stop": tuple(data.get("stop") or ()),
        "stream": bool(data.get("stream")),
        "include_usage": bool((data.get("stream_options") or {}).get("include_usage")),
        "logit_bias": tuple((data.get("logit_bias") or {}).items()),
        "cache_salt": data.get("cache_salt"),
        "speculative_tokens": data.get("speculative_tokens"),
        "loop_guard": data.get("loop_guard"),
        "thinking_budget": data.get("thinking_budget"),
        "chat_template_kwargs": data.get("chat_template_kwargs"),
    }


class PredictionContent(fields.Field):
    """A prediction's `content`: a string or a list of text parts; loaded as one string."""

    MAX_CHARS = 1 << 17

    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, list):
            if not all(
                isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str) for p in value
            ):
                raise ValidationError('content parts of a prediction must be {"type": "text", "text": ...}')
            value = "".join(p["text"] for p in value)
        if not isinstance(value, str):
            raise ValidationError("must be a string or a list of text parts")
        if len(value) > self.MAX_CHARS:
            raise ValidationError(f"longer than {self.MAX_CHARS} characters")
        return value


class PredictionSchema(_Loose):
    type = fields.String(required=True, validate=validate.Equal("content"))
    content = PredictionContent(required=True)


class ChatCompletionRequestSchema(ThinkingRequestFields, GenerationRequestSchema):
    messages = fields.List(fields.Nested(MessageSchema), required=True, validate=validate.Length(min=1))
    max_tokens = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    max_completion_tokens = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    logprobs = fields.Boolean(load_default=False, allow_none=True)
    top_logprobs = fields.Integer(allow_none=True, validate=validate.Range(min=0, max=20))
    prompt_cache_key = fields.String(
        allow_none=True,
        validate=validate.Length(max=1024),
        metadata={
            "description": "groups requests that share a prefix; a proxy may route on it (deploy/nginx-affinity.conf)"
        },
    )
    # vLLM's extension: keep generating past end tokens until max_tokens (benchmarks fix output lengths)
    ignore_eos = fields.Boolean(load_default=False, allow_none=True)
    tools = fields.List(fields.Nested(ToolSchema), allow_none=True, validate=validate.Length(max=128))
    tool_choice = ToolChoiceField(allow_none=True)
    parallel_tool_calls = fields.Boolean(allow_none=True)
    response_format = fields.Nested(ResponseFormatSchema, allow_none=True)
    prediction = fields.Nested(
        PredictionSchema,
        allow_none=True,
        metadata={
            "description": "OpenAI predicted output: text the answer is expected to repeat (a file being edited); "
            "drafted first by speculative decoding, so matching runs take fewer engine steps"
        },
    )
    mm_processor_kwargs = mm_processor_kwargs_field()
    grounding = GroundingField()

    @validates_schema
    def _consistency(self, data, **kwargs):
        if data.get("top_logprobs") and not data.get("logprobs"):
            raise ValidationError("top_logprobs requires logprobs: true", "top_logprobs")
        choice, tools = data.get("tool_choice"), data.get("tools") or []
        if choice and choice.mode != "none" and not tools:
            raise ValidationError("tool_choice needs 'tools'", "tool_choice")
        if choice and choice.mode == "function" and choice.name not in {t["function"]["name"] for t in tools}:
            raise ValidationError(f"no tool named {choice.name!r} in 'tools'", "tool_choice")

    @post_load
    def _typed(self, data, **kwargs) -> ChatRequest:
        return ChatRequest(
            **generation_fields(data),
            logprobs=bool(data.get("logprobs")),
            top_logprobs=data.get("top_logprobs") or 0,
            ignore_eos=bool(data.get("ignore_eos")),
            messages=tuple(data["messages"]),
            tools=tuple(data.get("tools") or ()),
            tool_choice=data.get("tool_choice"),
            parallel_tool_calls=data.get("parallel_tool_calls") is not False,
            response_format=data.get("response_format"),
            prediction=(data.get("prediction") or {}).get("content"),
            mm_processor_kwargs=data.get("mm_processor_kwargs"),
            grounding=data.get("grounding"),
        )


# --- replies (replies.py dumps every reply object through these) ---

FINISH_REASONS = ("stop", "length", "tool_calls")


class PromptTokensDetailsSchema(Schema):
    cached_tokens = fields.Integer(
        required=True,
        metadata={"description": "prompt tokens whose KV was reused from an earlier request of the same worker"},
    )
    image_tokens = fields.Integer(
        metadata={"description": "extension: prompt tokens that are image placeholders (vision tokens)"}
    )
    video_tokens = fields.Integer(
        metadata={"description": "extension: prompt tokens that are video placeholders (timestamps are text)"}
    )


class CompletionTokensDetailsSchema(Schema):
    reasoning_tokens = fields.Integer(
        metadata={"description": "Thinking models: tokens of thinking (up to and including </think>)"}
    )
    accepted_prediction_tokens = fields.Integer(
        metadata={"description": "speculative decoding: drafted tokens (prediction or prompt lookup) kept"}
    )
    rejected_prediction_tokens = fields.Integer(
        metadata={"description": "speculative decoding: drafted tokens verified and dropped"}
    )


class UsageSchema(Schema):
    prompt_tokens = fields.Integer(required=True)
    completion_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)
    prompt_tokens_details = fields.Nested(PromptTokensDetailsSchema, required=True)
    completion_tokens_details = fields.Nested(
        CompletionTokensDetailsSchema,
        metadata={"description": "present for a Thinking model or when the request was decoded speculatively"},
    )


class TopLogprobSchema(Schema):
    token = fields.String(required=True)
    logprob = fields.Float(required=True)
    bytes = fields.List(fields.Integer(), required=True, allow_none=True)


class TokenLogprobSchema(TopLogprobSchema):
    top_logprobs = fields.List(fields.Nested(TopLogprobSchema), required=True)


class ChoiceLogprobsSchema(Schema):
    content = fields.List(fields.Nested(TokenLogprobSchema), required=True, allow_none=True)


class ReturnedFunctionSchema(Schema):
    name = fields.String(required=True)
    arguments = fields.String(required=True, metadata={"description": "JSON text"})


class ReturnedToolCallSchema(Schema):
    id = fields.String(required=True)
    type = fields.String(required=True, validate=validate.OneOf(["function"]))
    function = fields.Nested(ReturnedFunctionSchema, required=True)


class AssistantMessageSchema(ReasoningReplyFields):
    role = fields.String(required=True, validate=validate.OneOf(["assistant"]))
    content = fields.String(required=True, allow_none=True)
    tool_calls = fields.List(fields.Nested(ReturnedToolCallSchema))
    detections = fields.List(fields.Nested(DetectionSchema), metadata={"description": "extension: with `grounding`"})


class CompletionChoiceSchema(StoppedByFields):
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


class ToolCallDeltaFunctionSchema(Schema):
    name = fields.String()
    arguments = fields.String()


class ToolCallDeltaSchema(Schema):
    """The first delta of a call carries index, id, type and name; later ones argument text."""

    index = fields.Integer(required=True)
    id = fields.String()
    type = fields.String(validate=validate.OneOf(["function"]))
    function = fields.Nested(ToolCallDeltaFunctionSchema)


class ChunkDeltaSchema(ReasoningReplyFields):
    role = fields.String(validate=validate.OneOf(["assistant"]))
    content = fields.String(allow_none=True)
    tool_calls = fields.List(fields.Nested(ToolCallDeltaSchema))
    detections = fields.List(
        fields.Nested(DetectionSchema), metadata={"description": "extension: with `grounding`, the last delta"}
    )


class ChunkChoiceSchema(StoppedByFields):
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
