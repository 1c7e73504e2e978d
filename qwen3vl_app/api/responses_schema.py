"""POST /v1/responses (OpenAI's Responses API): the request schema, its translation into a
chat request, and the response schema.

The server is stateless.  `previous_response_id` is a 400: honouring it needs the stored
conversation, and ignoring it would silently answer without that context.  `store` is
accepted and has no effect (the reply says `"store": false` and X-Ignored-Params names
it): nothing is kept, and a client that merely asks for storage still gets a valid answer.
"""

from __future__ import annotations

from marshmallow import EXCLUDE, Schema, ValidationError, fields, validate

from ..errors import APIError
from .steering_fields import ThinkingRequestFields


class InputField(fields.Field):
    def _deserialize(self, value, attr, data, **kwargs):
        if isinstance(value, str):
            return value
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return value
        raise ValidationError("must be a string or a non-empty list of input items")


class Metadata(fields.Field):
    """OpenAI's limits: at most 16 pairs, keys of at most 64 characters, string values of at
    most 512.  The reply repeats it in every stream event, so it must stay small."""

    def _deserialize(self, value, attr, data, **kwargs):
        if not isinstance(value, dict):
            raise ValidationError("must be an object of string values")
        if len(value) > 16:
            raise ValidationError("at most 16 key-value pairs")
        for key, v in value.items():
            if len(key) > 64:
                raise ValidationError(f"key {key[:20]!r}... is longer than 64 characters")
            if not isinstance(v, str):
                raise ValidationError(f"the value of {key!r} must be a string")
            if len(v) > 512:
                raise ValidationError(f"the value of {key!r} is longer than 512 characters")
        return value


class TextFormatSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    type = fields.String(required=True, validate=validate.OneOf(["text", "json_object", "json_schema"]))
    name = fields.String(validate=validate.Length(min=1, max=64))
    schema = fields.Dict(allow_none=True)
    description = fields.String(allow_none=True)
    strict = fields.Boolean(allow_none=True)


class TextConfigSchema(Schema):
    class Meta:
        unknown = EXCLUDE

    format = fields.Nested(TextFormatSchema)


class ResponseRequestSchema(ThinkingRequestFields, Schema):
    class Meta:
        unknown = EXCLUDE

    model = fields.String(load_default=None, allow_none=True)
    input = InputField(required=True)
    instructions = fields.String(allow_none=True)
    tools = fields.List(fields.Dict(), allow_none=True, validate=validate.Length(max=128))
    tool_choice = fields.Raw(allow_none=True)
    parallel_tool_calls = fields.Boolean(allow_none=True)
    text = fields.Nested(TextConfigSchema, allow_none=True)
    max_output_tokens = fields.Integer(allow_none=True, validate=validate.Range(min=1))
    temperature = fields.Float(allow_none=True, validate=validate.Range(min=0, max=2))
    top_p = fields.Float(allow_none=True, validate=validate.Range(min=0, max=1, min_inclusive=False))
    stream = fields.Boolean(load_default=False, allow_none=True)
    store = fields.Boolean(allow_none=True, metadata={"description": "accepted, no effect: nothing is stored"})
    previous_response_id = fields.String(
        allow_none=True,
        metadata={
            "description": "not supported (400): the server keeps no responses; send the whole conversation in `input`"
        },
    )
    metadata = Metadata(
        allow_none=True,
        metadata={"description": "at most 16 pairs; keys of at most 64 characters, string values of at most 512"},
    )
    user = fields.String(allow_none=True)


# ----------------------------------------------------------------------------- request -> chat request


def to_chat_request(req: dict) -> tuple[dict, list[str]]:
    """The equivalent Chat Completions body (validated by the chat schema afterwards), and
    for each of its messages the Responses field it came from (`instructions`,
    `input[3]`), so errors about a message can name what the client sent."""
    if req.get("previous_response_id"):
        raise APIError(
            "This server keeps no responses (stateless), so previous_response_id cannot be resolved; "
            "send the whole conversation as `input` items instead.",
            400,
            "previous_response_id",
            "unsupported_parameter",
        )
    messages: list[dict] = []
    origins: list[str] = []
    if req.get("instructions"):
        messages.append({"role": "system", "content": req["instructions"]})
        origins.append("instructions")
    items = req["input"]
    if isinstance(items, str):
        messages.append({"role": "user", "content": items})
        origins.append("input")
    else:
        for i, item in enumerate(items):
            _add_item(messages, item, f"input[{i}]")
            origins += [f"input[{i}]"] * (len(messages) - len(origins))
    body: dict = {"messages": messages, "stream": bool(req.get("stream"))}
    for src, dst in (
        ("max_output_tokens", "max_completion_tokens"),
        ("temperature", "temperature"),
        ("top_p", "top_p"),
        ("parallel_tool_calls", "parallel_tool_calls"),
        ("thinking_budget", "thinking_budget"),
        ("chat_template_kwargs", "chat_template_kwargs"),
        ("loop_guard", "loop_guard"),
    ):
        if req.get(src) is not None:
            body[dst] = req[src]
    if req.get("tools"):
        body["tools"] = [_chat_tool(t, f"tools[{i}]") for i, t in enumerate(req["tools"])]
    if req.get("tool_choice") is not None:
        body["tool_choice"] = _chat_tool_choice(req["tool_choice"])
    fmt = (req.get("text") or {}).get("format")
    if fmt and fmt["type"] == "json_schema":
        if not fmt.get("name"):
            raise APIError("A json_schema text format needs a 'name'.", 400, "text.format.name", "invalid_value")
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": fmt["name"], "schema": fmt.get("schema") or {}, "strict": fmt.get("strict")},
        }
    elif fmt:
        body["response_format"] = {"type": fmt["type"]}
    return body, origins


def _add_item(messages: list[dict], item: dict, param: str) -> None:
    kind = item.get("type", "message" if "role" in item else None)
    if kind == "message":
        role = item.get("role")
        if role not in ("user", "assistant", "system", "developer"):
            raise APIError(f"Unknown role {role!r}.", 400, f"{param}.role", "invalid_value")
        messages.append({"role": role, "content": _content(item.get("content"), param)})
    elif kind == "function_call":
        for key in ("call_id", "name", "arguments"):
            if not isinstance(item.get(key), str):
                raise APIError(
                    f"A function_call item needs '{key}' (a string).", 400, f"{param}.{key}", "invalid_value"
                )
        call = {
            "id": item["call_id"],
            "type": "function",
            "function": {"name": item["name"], "arguments": item["arguments"]},
        }
        last = messages[-1] if messages else None
        if last is not None and last["role"] == "assistant" and isinstance(last.get("content"), (str, type(None))):
            last.setdefault("tool_calls", []).append(call)
        else:
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
    elif kind == "function_call_output":
        if not isinstance(item.get("call_id"), str):
            raise APIError("A function_call_output item needs 'call_id'.", 400, f"{param}.call_id", "invalid_value")
        output = item.get("output")
        if isinstance(output, list):
            output = "".join(p.get("text", "") for p in output if isinstance(p, dict))
        if not isinstance(output, str):
            raise APIError(
                "'output' must be a string or a list of text parts.", 400, f"{param}.output", "invalid_value"
            )
        messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": output})
    elif kind == "reasoning":
        return  # a reasoning model's summary from another server: nothing this model can use
    else:
        raise APIError(
            f"Input items of type {kind!r} are not supported (message, function_call, function_call_output).",
            400,
            f"{param}.type",
            "unsupported_value",
        )


def _content(content, param: str):
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise APIError("'content' must be a string or a list of parts.", 400, f"{param}.content", "invalid_value")
    parts = []
    for j, part in enumerate(content):
        t = part.get("type") if isinstance(part, dict) else None
        if t in ("input_text", "output_text", "text"):
            parts.append({"type": "text", "text": part.get("text", "")})
        elif t == "input_image" and isinstance(part.get("image_url"), str):
            url = {"url": part["image_url"]}
            if part.get("detail"):
                url["detail"] = part["detail"]
            parts.append({"type": "image_url", "image_url": url})
        elif t == "refusal":
            parts.append({"type": "text", "text": part.get("refusal", "")})
        else:
            raise APIError(
                f"Content parts of type {t!r} are not supported here (input_text, input_image with an "
                "image_url, output_text).",
                400,
                f"{param}.content[{j}]",
                "unsupported_value",
            )
    return parts


def _chat_tool(tool: dict, param: str) -> dict:
    if tool.get("type") != "function":
        raise APIError(
            f"Only function tools are supported, not {tool.get('type')!r}.", 400, f"{param}.type", "unsupported_value"
        )
    fn = {k: tool[k] for k in ("name", "description", "parameters", "strict") if tool.get(k) is not None}
    return {"type": "function", "function": fn}


def _chat_tool_choice(choice):
    if isinstance(choice, dict) and choice.get("type") == "function":
        return {"type": "function", "function": {"name": choice.get("name")}}
    return choice


# ----------------------------------------------------------------------------- response (documentation)


class ResponseOutputTextSchema(Schema):
    type = fields.String(required=True, validate=validate.OneOf(["output_text", "reasoning_text"]))
    text = fields.String(required=True)
    annotations = fields.List(fields.Dict(), metadata={"description": "output_text parts"})


class ResponseOutputItemSchema(Schema):
    """A `message` (role assistant, `content` of output_text parts), a `function_call`
    (`call_id`, `name`, `arguments` as JSON text) or, from a Thinking model, a `reasoning`
    item (`content`: one reasoning_text part; `summary` empty) before the message."""

    type = fields.String(required=True, validate=validate.OneOf(["message", "function_call", "reasoning"]))
    id = fields.String(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["in_progress", "completed", "incomplete"]))
    role = fields.String()
    content = fields.List(fields.Nested(ResponseOutputTextSchema))
    call_id = fields.String()
    name = fields.String()
    arguments = fields.String()
    summary = fields.List(fields.Dict())


class ResponseUsageSchema(Schema):
    input_tokens = fields.Integer(required=True)
    output_tokens = fields.Integer(required=True)
    total_tokens = fields.Integer(required=True)
    input_tokens_details = fields.Dict(required=True)
    output_tokens_details = fields.Dict(required=True)


class ResponseSchema(Schema):
    """The reply of a non-stream request, and the `response` of the stream's lifecycle events."""

    id = fields.String(required=True)
    object = fields.String(required=True, validate=validate.OneOf(["response"]))
    created_at = fields.Integer(required=True)
    status = fields.String(required=True, validate=validate.OneOf(["in_progress", "completed", "incomplete"]))
    model = fields.String(required=True)
    output = fields.List(fields.Nested(ResponseOutputItemSchema), required=True)
    usage = fields.Nested(ResponseUsageSchema, allow_none=True)
    error = fields.Dict(allow_none=True)
    incomplete_details = fields.Dict(allow_none=True, metadata={"description": '{"reason": "max_output_tokens"}'})
    store = fields.Boolean(required=True, metadata={"description": "always false: nothing is stored"})
    instructions = fields.String(allow_none=True)
    max_output_tokens = fields.Integer(allow_none=True)
    metadata = fields.Dict()
    parallel_tool_calls = fields.Boolean()
    previous_response_id = fields.String(allow_none=True)
    reasoning = fields.Dict()
    temperature = fields.Float(allow_none=True)
    top_p = fields.Float(allow_none=True)
    text = fields.Dict(metadata={"description": "the request's text.format"})
    tool_choice = fields.Raw()
    tools = fields.List(fields.Dict())
    truncation = fields.String()
    user = fields.String(allow_none=True)
